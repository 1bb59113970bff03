"""spade_deploy.serve.repository: every written config.pbtxt parses with Triton's own model-config schema and says what
spade_deploy.model.io_spec says; the repository is replaced whole; impossible requests are refused."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from spade_deploy.model import io_spec, memory
from spade_deploy.serve.served_model import INTRA_OP_THREADS, MAX_REQUEST_MEMORY, ServedModel
from spade_deploy.serve.repository import TEMPLATES, VARIANTS, write_repository
from tests.fixtures.serving import Exported


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def specs(tensors) -> list[tuple[str, str, list[int]]]:
    return [(tensor.name, mc.DataType.Name(tensor.data_type), list(tensor.dims)) for tensor in tensors]


def expected(model_io: io_spec.ModelIO, kind: str) -> list[tuple[str, str, list[int]]]:
    return [(spec.name, f"TYPE_{spec.triton_dtype}", list(spec.dims))
            for spec in getattr(model_io, kind)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_configs_parse_with_tritons_schema_and_follow_the_io_contract(exported_vae: Exported, tmp_path: Path,
                                                                       variant: str) -> None:
    config = exported_vae.config
    paths = write_repository(tmp_path / "repository", exported_vae.generator_onnx, exported_vae.encoder_onnx,
                             variant=variant, max_batch_size=4, instances=3, intra_op_threads=2, queue_delay_us=500)
    contract = {io_spec.GENERATOR_MODEL: io_spec.generator_io(config, 64, 64),
                io_spec.ENCODER_MODEL: io_spec.encoder_io(),
                io_spec.PIPELINE_MODEL: io_spec.pipeline_io(config, 64, 64, has_encoder=True)}
    assert sorted(path.parent.name for path in paths) == sorted(contract)
    for path in paths:
        parsed = parse(path)
        model_io = contract[parsed.name]
        is_pipeline = parsed.name == io_spec.PIPELINE_MODEL
        assert parsed.name == path.parent.name
        assert specs(parsed.input) == expected(model_io, "inputs")
        assert [tensor.optional for tensor in parsed.input] == [spec.optional for spec in model_io.inputs]
        assert specs(parsed.output) == expected(model_io, "outputs")
        assert parsed.max_batch_size == 4
        assert parsed.HasField("dynamic_batching") and parsed.dynamic_batching.max_queue_delay_microseconds == 500
        on_gpu = variant == "gpu" and not is_pipeline
        kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
        assert [(group.count, group.kind) for group in parsed.instance_group] == [(3, kind)]
        served = ServedModel.from_model_config(json_format.MessageToDict(parsed, preserving_proto_field_name=True))
        assert (served.config, served.height, served.width) == (config, 64, 64)
        assert served.inputs == tuple(model_io.input_names)

        files = sorted(entry.name for entry in (path.parent / "1").iterdir())
        if on_gpu:
            assert (parsed.backend, files) == ("onnxruntime", ["model.onnx"])
        elif is_pipeline:
            assert (parsed.backend, files) == ("python", ["model.py"])
            assert (path.parent / "1" / "model.py").read_text() == (TEMPLATES / "pipeline.py").read_text()
        else:
            assert (parsed.backend, files) == ("python", ["model.onnx", "model.py"])
            assert parsed.parameters[INTRA_OP_THREADS].string_value == "2"
        if is_pipeline:
            assert not parsed.model_warmup  # its BLS calls could reach models that are still loading
        else:
            (warmup,) = parsed.model_warmup
            assert sorted(warmup.inputs) == sorted(model_io.input_names)
            for spec in model_io.inputs:
                sample = warmup.inputs[spec.name]
                assert sample.zero_data and sample.data_type == parsed.input[model_io.input_names.index(
                    spec.name)].data_type
                assert list(sample.dims) == [256 if dim < 0 else dim for dim in spec.dims]


def test_gpu_generator_uses_tensorrt_in_fp32_over_every_batch_size(exported_vae: Exported, tmp_path: Path) -> None:
    write_repository(tmp_path / "repository", exported_vae.generator_onnx, variant="gpu", max_batch_size=4)
    parsed = parse(tmp_path / "repository" / io_spec.GENERATOR_MODEL / "config.pbtxt")
    (accelerator,) = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP32"
    assert accelerator.parameters["trt_profile_min_shapes"] == "label:1x64x64,instance:1x64x64,z:1x256"
    assert accelerator.parameters["trt_profile_max_shapes"] == "label:4x64x64,instance:4x64x64,z:4x256"


def served(path: Path) -> ServedModel:
    return ServedModel.from_model_config(json_format.MessageToDict(parse(path), preserving_proto_field_name=True))


def test_memory_budget_is_written_for_every_cpu_model(exported_vae: Exported, tmp_path: Path) -> None:
    """Default: what max_batch_size label maps need; a smaller budget lowers the batch a request may carry."""
    config = exported_vae.config
    full = memory.generator_bytes(config, 4, 64, 64, runtime="onnxruntime")
    paths = write_repository(tmp_path / "default", exported_vae.generator_onnx, exported_vae.encoder_onnx,
                             max_batch_size=4)
    assert len(paths) == 3
    for path in paths:
        assert parse(path).parameters[MAX_REQUEST_MEMORY].string_value == str(full)
        assert (served(path).max_request_memory, served(path).max_batch_size) == (full, 4)
    budget = memory.generator_bytes(config, 2, 64, 64, runtime="onnxruntime") + 1000
    for path in write_repository(tmp_path / "small", exported_vae.generator_onnx, exported_vae.encoder_onnx,
                                 max_batch_size=4, max_request_memory=budget):
        assert parse(path).max_batch_size == 4  # Triton's own limit stays; the models refuse more than 2
        assert (served(path).max_request_memory, served(path).max_batch_size) == (budget, 2)
    for path in write_repository(tmp_path / "gpu", exported_vae.generator_onnx, variant="gpu"):
        assert MAX_REQUEST_MEMORY not in parse(path).parameters and served(path).max_request_memory is None


def test_rewriting_replaces_the_whole_repository(exported_vae: Exported, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_repository(repository, exported_vae.generator_onnx, exported_vae.encoder_onnx)
    write_repository(repository, exported_vae.generator_onnx)
    assert sorted(entry.name for entry in repository.iterdir()) == [io_spec.PIPELINE_MODEL, io_spec.GENERATOR_MODEL]
    pipeline = parse(repository / io_spec.PIPELINE_MODEL / "config.pbtxt")
    assert [tensor.name for tensor in pipeline.input] == [io_spec.LABEL, io_spec.INSTANCE, io_spec.SEED]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["repository"]  # no staging left behind


def test_refuses_what_cannot_be_served(exported_vae: Exported, exported_segmap: Exported, tmp_path: Path) -> None:
    generator, encoder = exported_vae.generator_onnx, exported_vae.encoder_onnx
    with pytest.raises(ValueError, match="not a VAE generator"):
        write_repository(tmp_path / "a", exported_segmap.generator_onnx, encoder)
    with pytest.raises(ValueError, match="variant must be one of"):
        write_repository(tmp_path / "b", generator, variant="tpu")
    with pytest.raises(ValueError, match="max_batch_size must be a positive integer, got 0"):
        write_repository(tmp_path / "c", generator, max_batch_size=0)
    with pytest.raises(ValueError, match="no such ONNX file"):
        write_repository(tmp_path / "d", tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="was not written by spade-deploy's generator export"):
        write_repository(tmp_path / "e", encoder)
    one = memory.generator_bytes(exported_vae.config, 1, 64, 64, runtime="onnxruntime")
    with pytest.raises(ValueError, match=rf"a max_request_memory of 1.0 MiB fits no request: one 64x64 label map "
                                         rf"needs about {memory.format_bytes(one)} \(estimate\); give at least that"):
        write_repository(tmp_path / "f", generator, max_request_memory=2 ** 20)
    with pytest.raises(ValueError, match="max_request_memory applies to the cpu variant"):
        write_repository(tmp_path / "g", generator, variant="gpu", max_request_memory=2 ** 40)
    with pytest.raises(ValueError, match="max_request_memory must be a positive number of bytes, got '8GiB'"):
        write_repository(tmp_path / "h", generator, max_request_memory="8GiB")
    foreign = tmp_path / "foreign"
    (foreign / "other_model").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds \['other_model'\], which are not spade models"):
        write_repository(foreign, generator)
    assert sorted(entry.name for entry in foreign.iterdir()) == ["other_model"]
