"""spade_deploy.serve.repository: every written config.pbtxt parses with Triton's own model-config schema and says what
spade_deploy.model.io_spec says; TensorRT engines (fake plan files here) become tensorrt_plan models whose batch range
is the engines' own; the repository is replaced whole; impossible requests are refused."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from spade_deploy.export import tensorrt
from spade_deploy.export.tensorrt import EngineOptions, write_engine
from spade_deploy.model import io_spec, memory
from spade_deploy.serve.served_model import INTRA_OP_THREADS, MAX_REQUEST_MEMORY, PRECISION, ServedModel
from spade_deploy.serve.repository import TEMPLATES, VARIANTS, write_repository
from tests.fixtures.serving import Exported, as_bf16_export


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


def test_a_bf16_export_runs_at_bf16_in_the_cpu_variant(exported_vae: Exported, tmp_path: Path) -> None:
    bf16 = as_bf16_export(exported_vae.generator_onnx, tmp_path / "bf16.onnx")
    write_repository(tmp_path / "repository", bf16, exported_vae.encoder_onnx)
    precision = {name: parse(tmp_path / "repository" / name / "config.pbtxt").parameters[PRECISION].string_value
                 for name in (io_spec.GENERATOR_MODEL, io_spec.ENCODER_MODEL)}
    assert precision == {io_spec.GENERATOR_MODEL: "bf16", io_spec.ENCODER_MODEL: "fp32"}  # encoders export fp32
    write_repository(tmp_path / "repository", exported_vae.generator_onnx, exported_vae.encoder_onnx)
    assert parse(tmp_path / "repository" / io_spec.GENERATOR_MODEL / "config.pbtxt").parameters[PRECISION] \
        .string_value == "fp32"


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
    with pytest.raises(ValueError, match=r"bf16\.onnx: a bf16 export runs in OpenVINO on a CPU, which the gpu "
                                         r"variant's models do not .* serve it with --variant cpu"):
        write_repository(tmp_path / "i", as_bf16_export(exported_segmap.generator_onnx, tmp_path / "bf16.onnx"),
                         variant="gpu")
    foreign = tmp_path / "foreign"
    (foreign / "other_model").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds \['other_model'\], which are not spade models"):
        write_repository(foreign, generator)
    assert sorted(entry.name for entry in foreign.iterdir()) == ["other_model"]


def fake_engine(path: Path, onnx_path: Path, max_batch: int) -> Path:
    """An engine file as `export trt` leaves it (bytes + its metadata), without TensorRT: the repository copies it."""
    write_engine(path, b"not a real engine: " + path.name.encode(), onnx_path, EngineOptions(max_batch=max_batch))
    return path


def test_gpu_repository_serves_engines_as_tensorrt_plan_models(exported_vae: Exported, tmp_path: Path) -> None:
    """Engines become tensorrt_plan models with the contract's tensors, their profile's batch range as
    max_batch_size, and the plan itself as model.plan; the pipeline stays as it is."""
    config = exported_vae.config
    engines = {io_spec.GENERATOR_MODEL: fake_engine(tmp_path / "generator.plan", exported_vae.generator_onnx, 4),
               io_spec.ENCODER_MODEL: fake_engine(tmp_path / "encoder.plan", exported_vae.encoder_onnx, 4)}
    paths = write_repository(tmp_path / "repository", exported_vae.generator_onnx, exported_vae.encoder_onnx,
                             variant="gpu", instances=3, engines=engines)
    contract = {io_spec.GENERATOR_MODEL: io_spec.generator_io(config, 64, 64),
                io_spec.ENCODER_MODEL: io_spec.encoder_io()}
    for path in paths:
        parsed = parse(path)
        assert parsed.max_batch_size == 4  # from the engines' profile: batches 1..4
        if parsed.name == io_spec.PIPELINE_MODEL:
            assert parsed.backend == "python"
            continue
        model_io = contract[parsed.name]
        assert (parsed.platform, parsed.backend, parsed.default_model_filename) == ("tensorrt_plan", "", "model.plan")
        assert specs(parsed.input) == expected(model_io, "inputs")
        assert specs(parsed.output) == expected(model_io, "outputs")
        assert [(group.count, group.kind) for group in parsed.instance_group] == [(3, mc.ModelInstanceGroup.KIND_GPU)]
        assert parsed.HasField("dynamic_batching") and not parsed.optimization.execution_accelerators.ListFields()
        (warmup,) = parsed.model_warmup
        assert {name: list(sample.dims) for name, sample in warmup.inputs.items()} == \
            {spec.name: [256 if dim < 0 else dim for dim in spec.dims] for spec in model_io.inputs}
        assert [entry.name for entry in (path.parent / "1").iterdir()] == ["model.plan"]
        assert (path.parent / "1" / "model.plan").read_bytes() == engines[parsed.name].read_bytes()

    # A model without an engine keeps the portable onnxruntime config.
    write_repository(tmp_path / "mixed", exported_vae.generator_onnx, exported_vae.encoder_onnx, variant="gpu",
                     engines={io_spec.GENERATOR_MODEL: engines[io_spec.GENERATOR_MODEL]})
    assert parse(tmp_path / "mixed" / io_spec.GENERATOR_MODEL / "config.pbtxt").platform == "tensorrt_plan"
    encoder = parse(tmp_path / "mixed" / io_spec.ENCODER_MODEL / "config.pbtxt")
    assert (encoder.backend, encoder.max_batch_size) == ("onnxruntime", 4)


def test_engines_that_contradict_the_repository_are_refused(exported_vae: Exported, exported_segmap: Exported,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator, encoder = exported_vae.generator_onnx, exported_vae.encoder_onnx
    engine = fake_engine(tmp_path / "generator.plan", generator, 4)
    with pytest.raises(ValueError, match=r"max_batch_size=8 contradicts the TensorRT engines, whose optimisation "
                                         r"profile covers batches 1\.\.4: leave max_batch_size out \(or give 4\), or "
                                         r"rebuild the engines with --max-batch 8"):
        write_repository(tmp_path / "a", generator, variant="gpu", max_batch_size=8,
                         engines={io_spec.GENERATOR_MODEL: engine})
    with pytest.raises(ValueError, match="TensorRT engines are served by the gpu variant"):
        write_repository(tmp_path / "b", generator, engines={io_spec.GENERATOR_MODEL: engine})
    with pytest.raises(ValueError, match=r"end at different batches \({'spade_generator': 4, 'spade_encoder': 2}\)"):
        write_repository(tmp_path / "c", generator, encoder, variant="gpu", engines={
            io_spec.GENERATOR_MODEL: engine, io_spec.ENCODER_MODEL: fake_engine(tmp_path / "e.plan", encoder, 2)})
    with pytest.raises(ValueError, match=r"engines for \['spade_encoder'\], .* needs the encoder's ONNX too"):
        write_repository(tmp_path / "d", generator, variant="gpu", engines={io_spec.ENCODER_MODEL: engine})
    segmap = fake_engine(tmp_path / "segmap.plan", exported_segmap.generator_onnx, 4)
    with pytest.raises(ValueError, match=r"takes \['label'\], but spade_generator takes \['instance', 'label', 'z'\]: "
                                         r"it was built from another graph"):
        write_repository(tmp_path / "e", generator, variant="gpu", engines={io_spec.GENERATOR_MODEL: segmap})
    # The zero 256x256 style of the encoder's warmup must lie in the engine's profile (STYLE_SIDE_RANGE).
    monkeypatch.setattr(tensorrt, "STYLE_SIDE_RANGE", (32, 128, 128))
    small = fake_engine(tmp_path / "small.plan", encoder, 4)
    with pytest.raises(ValueError, match=r"takes style from \[1, 32, 32, 3\] to \[4, 128, 128, 3\], not the "
                                         r"\[1, 256, 256, 3\] that spade_encoder is warmed up with"):
        write_repository(tmp_path / "f", generator, encoder, variant="gpu", engines={io_spec.ENCODER_MODEL: small})
    with pytest.raises(ValueError, match="no such TensorRT engine"):
        write_repository(tmp_path / "g", generator, variant="gpu", engines={io_spec.GENERATOR_MODEL: tmp_path / "x"})
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"an engine without its metadata")
    with pytest.raises(ValueError, match="no readable metadata for the engine .*bare.plan"):
        write_repository(tmp_path / "h", generator, variant="gpu", engines={io_spec.GENERATOR_MODEL: bare})
    assert not any((tmp_path / name).exists() for name in "abcdefgh")
