"""`python -m export.onnx` and `python -m export.trt` on official and own checkpoints: outputs, parity, exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from spade_deploy import cli
from spade_deploy.cli.export import EXIT_NO_ENGINE, TRT_GRAPHS
from spade_deploy.export import pipeline, precision, tensorrt
from spade_deploy.export.onnx import export_encoder_onnx, export_generator_onnx
from spade_deploy.export.tensorrt import (EngineOptions, build_engine, fp32_node_names, read_engine_metadata,
                                          unavailable_reason, write_engine)
from spade_deploy.model import io_spec
from spade_deploy.model.checkpoint import save_generator
from spade_deploy.model.config import EncoderConfig, GeneratorConfig
from spade_deploy.model.tensors import rgb_to_tensor
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.export.metadata import read_export_metadata
from spade_deploy.export.precision import BF16_FLAGS, cpu_flags
from spade_deploy.export.runtime import OnnxEncoder, OnnxGenerator, openvino_unavailable
from spade_deploy.model.synthetic import random_encoder, random_generator, random_style, synthetic_batch
from spade_deploy.serve.served_model import MAX_REQUEST_MEMORY
from tests.official import (official_encoder_forward, official_generator_forward, official_options,
                            official_state_dict, save_official, write_opt_txt)

TOLERANCE = 1e-4
# An official COCO-like VAE run at a small size: don't-care + instance edges + style encoder.
ROOT = Path(__file__).parents[2]
TRITON_MODELS = ROOT / "spade_deploy" / "serve" / "triton_models"
OFFICIAL_CONFIG = GeneratorConfig(preset="coco", label_nc=9, contain_dontcare_label=True, use_instance=True, ngf=8,
                                  use_vae=True, norm="syncbatch", crop_size=64)


def parse(path: Path) -> model_config_pb2.ModelConfig:
    """A written config.pbtxt, read with Triton's own model-config schema."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def official_run(tmp_path_factory):
    """An official checkpoint directory (latest_net_G.pth, latest_net_E.pth, opt.txt), exported by the CLI."""
    directory = tmp_path_factory.mktemp("official")
    encoder_config = EncoderConfig(ngf=8)
    g_state = official_state_dict(random_generator(OFFICIAL_CONFIG, seed=11), seed=1)
    e_state = official_state_dict(random_encoder(encoder_config, seed=12), seed=2)
    options = official_options(OFFICIAL_CONFIG, encoder_config) | {"crop_size": 64}
    write_opt_txt(directory, options)
    save_official(g_state, directory, "latest_net_G.pth")
    save_official(e_state, directory, "latest_net_E.pth")
    out = directory / "export"
    status = cli.main(["export", "onnx", str(directory / "latest_net_G.pth"), "--encoder",
                       str(directory / "latest_net_E.pth"), "--out", str(out), "--repository",
                       str(directory / "repository")])
    assert status == 0
    return g_state, e_state, options, out


def test_official_export_matches_the_official_forward(official_run):
    g_state, e_state, options, out = official_run
    labels, instances = synthetic_batch(OFFICIAL_CONFIG, 2, seed=4)
    style = random_style(2, 120, 90, seed=3)
    mu, logvar = OnnxEncoder(out / "encoder.onnx")(style)
    with torch.no_grad():
        ref_mu, ref_logvar = official_encoder_forward(e_state, rgb_to_tensor(style), {"crop_size": 256})
        reference = official_generator_forward(g_state, to_semantic_input(labels, instances, OFFICIAL_CONFIG),
                                               torch.from_numpy(mu), options).numpy()
    assert np.abs(mu - ref_mu.numpy()).max() <= TOLERANCE
    assert np.abs(logvar - ref_logvar.numpy()).max() <= TOLERANCE
    _, image_float = OnnxGenerator(out / "generator.onnx")(labels, instances, mu)
    assert np.abs(image_float - reference).max() <= TOLERANCE


def test_export_writes_the_triton_repository(official_run):
    """`--repository` writes one model per contract name, each config valid in Triton's own schema, with the
    contract's tensors, the exported graphs themselves and the package's python-backend sources."""
    out = official_run[3]
    repository = out.parent / "repository"
    contracts = {io_spec.GENERATOR_MODEL: io_spec.generator_io(OFFICIAL_CONFIG, 64, 64),
                 io_spec.ENCODER_MODEL: io_spec.encoder_io(),
                 io_spec.PIPELINE_MODEL: io_spec.pipeline_io(OFFICIAL_CONFIG, 64, 64, has_encoder=True)}
    graphs = {io_spec.GENERATOR_MODEL: out / "generator.onnx", io_spec.ENCODER_MODEL: out / "encoder.onnx"}
    for name, contract in contracts.items():
        config = parse(repository / name / "config.pbtxt")
        assert config.name == name and config.backend == "python"
        assert [(tensor.name, list(tensor.dims)) for tensor in config.input] == \
            [(spec.name, list(spec.dims)) for spec in contract.inputs]
        assert [tensor.name for tensor in config.output] == contract.output_names
        if name in graphs:
            assert (repository / name / "1" / "model.onnx").read_bytes() == graphs[name].read_bytes()
        source = "pipeline.py" if name == io_spec.PIPELINE_MODEL else "onnx_model.py"
        assert (repository / name / "1" / "model.py").read_text() == \
            (TRITON_MODELS / source).read_text()


def test_parity_table_is_printed(official_run, capsys):
    # The fixture's output was captured at setup; run a small export again to see the table.
    g_state, _, _, out = official_run
    status = cli.main(["export", "onnx", str(out.parent / "latest_net_G.pth"), "--out", str(out / "again"),
                               "--parity-samples", "1"])
    table = capsys.readouterr().out
    assert status == 0
    assert "image_float  graph in PyTorch" in table and "image_float  ONNX Runtime" in table
    assert "NO" not in table


def test_sizes_and_overrides(tmp_path):
    """A segmap generator exports at another size; num_upsampling_layers is taken from the command line."""
    config = GeneratorConfig(label_nc=5, ngf=8, num_upsampling_layers="more", crop_size=64)
    generator = random_generator(config, seed=2)
    path = save_official(official_state_dict(generator, seed=3), tmp_path, "latest_net_G.pth")
    status = cli.main(["export", "onnx", str(path), "--num-upsampling-layers", "more", "--height", "128", "--width",
                       "64", "--out", str(tmp_path / "out"), "--parity-samples", "1"])
    assert status == 0
    runtime = OnnxGenerator(tmp_path / "out" / "generator.onnx")
    assert (runtime.config.num_upsampling_layers, runtime.height, runtime.width) == ("more", 128, 64)


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "G.pt"
    save_generator(random_generator(GeneratorConfig(label_nc=4, ngf=8, crop_size=64), seed=5), path)
    return path


def test_parity_failure_exits_1(own_checkpoint, tmp_path, capsys, monkeypatch):
    """A runtime that computes something else fails the parity check: exit 1 with the table and the worst row."""
    computed = OnnxGenerator.__call__

    def off_by_a_level(self, *args, **kwargs):
        image, image_float = computed(self, *args, **kwargs)
        return image, image_float + 1 / 127.5

    monkeypatch.setattr(OnnxGenerator, "__call__", off_by_a_level)
    status = cli.main(["export", "onnx", str(own_checkpoint), "--out", str(tmp_path), "--parity-samples", "1"])
    err = capsys.readouterr().err
    assert status == 1
    assert "parity check failed: ONNX Runtime image_float differs from the float64 model by max |Δ| = 7.8" in err


@pytest.mark.parametrize("argv, message", [
    (["{missing}", "--out", "{out}"], "checkpoint not found"),
    (["{ckpt}", "--out", "{out}", "--height", "48", "--width", "64"], "multiples of 32"),
    (["{ckpt}", "--out", "{out}", "--height", "64"], "--height and --width together"),
    (["{ckpt}", "--out", "{out}", "--encoder", "{ckpt}"], "not a VAE generator"),
    (["{not_a_checkpoint}", "--out", "{out}"], "not a readable PyTorch checkpoint"),
    (["{ckpt}", "--out", "{out}", "--max-request-memory", "4GiB"], "--max-request-memory sets the budget of a cpu "
                                                                   "Triton repository: give it with --repository"),
    (["{ckpt}", "--out", "{out}", "--repository", "{out}/r", "--variant", "gpu", "--max-request-memory", "4GiB"],
     "and --variant cpu"),
    (["{ckpt}", "--out", "{out}", "--repository", "{out}/r", "--max-request-memory", "1MiB", "--parity-samples", "1"],
     "a max_request_memory of 1.0 MiB fits no request: one 64x64 label map needs about"),
    (["{ckpt}", "--out", "{not_a_checkpoint}"], "--out {not_a_checkpoint} is a file; expected a folder"),
])
def test_bad_input_exits_2(own_checkpoint, tmp_path, capsys, argv, message):
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    names = dict(missing=tmp_path / "missing.pth", out=tmp_path / "out", ckpt=own_checkpoint, not_a_checkpoint=junk)
    status = cli.main(["export", "onnx", *(arg.format(**names) for arg in argv)])
    assert status == 2
    assert message.format(**names) in capsys.readouterr().err


def test_max_request_memory_reaches_the_repository(own_checkpoint, tmp_path):
    status = cli.main(["export", "onnx", str(own_checkpoint), "--out", str(tmp_path / "out"), "--parity-samples", "1",
                       "--repository", str(tmp_path / "repository"), "--max-request-memory", "2GiB"])
    assert status == 0
    for name in (io_spec.GENERATOR_MODEL, io_spec.PIPELINE_MODEL):
        config = parse(tmp_path / "repository" / name / "config.pbtxt")
        assert config.parameters[MAX_REQUEST_MEMORY].string_value == str(2 * 2 ** 30)


EXPORT_ARGS = ("--height", "64", "--width", "64", "--parity-samples", "1")


@pytest.fixture(scope="module")
def diverged_checkpoint(tmp_path_factory):
    """own_checkpoint's model as a diverged training run leaves it: a NaN in the last conv's bias, so every export
    of it computes NaN in one channel and fails the parity check for real."""
    generator = random_generator(GeneratorConfig(label_nc=4, ngf=8, crop_size=64), seed=5)
    with torch.no_grad():
        generator.conv_img.bias[0] = float("nan")
    path = tmp_path_factory.mktemp("diverged") / "G.pt"
    save_generator(generator, path)
    return path


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path: what an export left there."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_failed_parity_check_leaves_the_earlier_export(own_checkpoint, diverged_checkpoint, tmp_path, capsys):
    """--out keeps the export that passed, byte for byte; the failed one is kept aside to inspect, as the error
    says, and goes when a later export passes."""
    out = tmp_path / "out"
    assert cli.main(["export", "onnx", str(own_checkpoint), "--out", str(out), *EXPORT_ARGS]) == 0
    passed = contents(out)
    assert set(passed) == {"generator.onnx", "parity.json"}
    capsys.readouterr()
    status = cli.main(["export", "onnx", str(diverged_checkpoint), "--out", str(out), *EXPORT_ARGS])
    err = capsys.readouterr().err
    assert status == 1
    assert "parity check failed: " in err and "differs from the float64 model by max |Δ| = nan" in err
    assert f"The failed export is in {out / 'failed-export'} for inspection; {out} is otherwise unchanged." in err
    assert sorted(path.name for path in out.iterdir()) == ["failed-export", "generator.onnx", "parity.json"]
    assert {name: data for name, data in contents(out).items() if "/" not in name} == passed
    failed = json.loads((out / "failed-export" / "parity.json").read_text())
    assert [row["ok"] for row in failed["rows"]] == [True, False, False]  # eager float32 is the yardstick
    assert cli.main(["export", "onnx", str(own_checkpoint), "--out", str(out), *EXPORT_ARGS]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["generator.onnx", "parity.json"]


def test_a_memory_budget_that_fits_no_request_is_refused_before_the_export(official_run, own_checkpoint, tmp_path,
                                                                           capsys):
    """--max-request-memory is checked against the checkpoint's config before the export: --out keeps its earlier
    files, and is not made where there was none."""
    out, repository = tmp_path / "out", tmp_path / "repository"
    small = ["--repository", str(repository), "--max-request-memory", "1MiB"]
    assert cli.main(["export", "onnx", str(own_checkpoint), "--out", str(tmp_path / "new" / "out"), *EXPORT_ARGS,
                     *small]) == 2
    assert not (tmp_path / "new").exists() and not repository.exists()
    assert cli.main(["export", "onnx", str(own_checkpoint), "--out", str(out), *EXPORT_ARGS]) == 0
    passed = contents(out)
    capsys.readouterr()
    assert cli.main(["export", "onnx", str(official_run[3].parent / "latest_net_G.pth"), "--out", str(out),
                     *EXPORT_ARGS, *small]) == 2
    assert "a max_request_memory of 1.0 MiB fits no request" in capsys.readouterr().err
    assert contents(out) == passed and not repository.exists()


def test_a_stage_left_by_a_killed_export_is_removed_by_the_next(tmp_path):
    """An export killed outright leaves its hidden stage in --out; the next export removes it, but never the stage
    of an export still running (its process alive)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    out = tmp_path / "out"
    abandoned, running = out / f"{pipeline.STAGE_PREFIX}{dead}-x.tmp", out / f"{pipeline.STAGE_PREFIX}1-y.tmp"
    for stage in (abandoned, running):  # pid 1 (init) is alive
        stage.mkdir(parents=True)
        (stage / "generator.onnx").write_bytes(b"partial")
    with pipeline.staged(out) as folder:
        (folder / "generator.onnx").write_bytes(b"new")
    assert not abandoned.exists() and running.exists()
    assert (out / "generator.onnx").read_bytes() == b"new"


def test_an_error_inside_the_staged_block_leaves_out_as_it_was(tmp_path):
    """Any error after files were written to the staged folder (a repository step, an engine build) leaves --out as
    it was, and removes the folders the stage made for it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "generator.onnx").write_bytes(b"earlier")
    with pytest.raises(RuntimeError, match="engine build failed"), pipeline.staged(out) as folder:
        (folder / "generator.onnx").write_bytes(b"new")
        raise RuntimeError("engine build failed")
    assert contents(out) == {"generator.onnx": b"earlier"}
    with pytest.raises(RuntimeError), pipeline.staged(tmp_path / "new" / "out") as folder:
        (folder / "generator.onnx").write_bytes(b"new")
        raise RuntimeError("engine build failed")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("text, message", [("nan", "expected a finite number >= 0, got 'nan'"),
                                           ("inf", "expected a finite number >= 0, got 'inf'"),
                                           ("-1", "expected a finite number >= 0, got '-1'"),
                                           ("tiny", "expected a number >= 0, got 'tiny'")])
def test_tolerance_is_a_finite_number_at_least_zero(own_checkpoint, tmp_path, capsys, text, message):
    """nan would fail every export and inf pass every one: both are refused, as a negative one is."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "onnx", str(own_checkpoint), "--out", str(tmp_path / "out"), "--tolerance", text])
    assert exit_info.value.code == 2
    assert f"argument --tolerance: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["onnx", "trt"])
@pytest.mark.parametrize("repository, message", [
    ("{dataset}", "--repository: {dataset} holds ['images', 'labels'], which are not spade models; write the "
                  "repository to an empty or new directory"),
    ("{file}", "--repository {file} is a file; expected a folder (created when missing)"),
    ("{out}", "--repository {out} is the --out folder, and a repository is replaced as a whole: give it a folder "
              "of its own"),
    ("{out}/..", "--repository {out}/.. holds --out {out}, and a repository is replaced as a whole"),
])
def test_a_repository_that_cannot_be_written_is_refused_before_the_export(own_checkpoint, tmp_path, capsys, kind,
                                                                          repository, message):
    """A folder of other things (a dataset), a file, or --out itself (or a folder above it, which the repository
    would replace): exit 2 before any work, nothing written or removed."""
    dataset, file, out = tmp_path / "dataset", tmp_path / "notes.txt", tmp_path / "exports" / "out"
    for folder in ("images", "labels"):
        (dataset / folder).mkdir(parents=True)
        (dataset / folder / "0.png").write_bytes(b"png")
    file.write_text("notes")
    before = contents(tmp_path)
    names = dict(dataset=dataset, file=file, out=out)
    status = cli.main(["export", kind, str(own_checkpoint), "--out", str(out), "--repository",
                       repository.format(**names), *EXPORT_ARGS])
    assert status == 2
    assert message.format(**names) in capsys.readouterr().err
    assert contents(tmp_path) == before and not out.exists()


def test_a_re_export_removes_the_files_it_no_longer_writes(official_run, own_checkpoint, tmp_path):
    """A VAE generator with its encoder, then a generator without one, into the same --out: no encoder.onnx (nor
    engines built from the earlier graphs) stays beside it; the user's own files do."""
    directory, out = official_run[3].parent, tmp_path / "out"
    assert cli.main(["export", "onnx", str(directory / "latest_net_G.pth"), "--encoder",
                     str(directory / "latest_net_E.pth"), "--out", str(out), *EXPORT_ARGS]) == 0
    assert (out / "encoder.onnx").is_file()
    for name in ("generator.plan", "encoder.plan"):  # as `export trt` leaves them where TensorRT exists
        (out / name).write_bytes(b"engine")
    (out / "notes.txt").write_text("mine")
    (out / "encoder.onnx.backup").write_text("mine too")
    assert cli.main(["export", "onnx", str(own_checkpoint), "--out", str(out), *EXPORT_ARGS]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["encoder.onnx.backup", "generator.onnx", "notes.txt",
                                                           "parity.json"]
    assert not OnnxGenerator(out / "generator.onnx").config.use_vae


def test_trt_skips_the_engine_with_the_reason(own_checkpoint, tmp_path, capsys):
    """Where engines cannot be built: the ONNX files, and a gpu repository of the portable configs (ONNX Runtime +
    TensorRT accelerator, batches up to --max-batch), each with the reason."""
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the skip path does not apply")
    repository = tmp_path / "repository"
    status = cli.main(["export", "trt", str(own_checkpoint), "--out", str(tmp_path), "--parity-samples", "1",
                       "--repository", str(repository), "--max-batch", "4"])
    err = capsys.readouterr().err
    assert status == 0
    assert f"TensorRT engine step skipped: {reason}" in err
    assert (f"The gpu repository serves the ONNX graphs (ONNX Runtime + TensorRT accelerator, the portable configs), "
            f"not tensorrt_plan models: {reason}.") in err
    assert (tmp_path / "generator.onnx").is_file() and not (tmp_path / "generator.plan").exists()
    config = parse(repository / io_spec.GENERATOR_MODEL / "config.pbtxt")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert (config.backend, config.max_batch_size, accelerator.name) == ("onnxruntime", 4, "tensorrt")
    assert accelerator.parameters["trt_profile_max_shapes"] == "label:4x64x64"
    assert [entry.name for entry in (repository / io_spec.GENERATOR_MODEL / "1").iterdir()] == ["model.onnx"]


def test_trt_repository_serves_the_engines_it_built(official_run, tmp_path, monkeypatch):
    """With engines built (faked: building one needs TensorRT and a GPU), the gpu repository serves them as
    tensorrt_plan models, --max-batch being both the engines' profile and max_batch_size; --precision is the
    engines', the ONNX files stay fp32."""
    def fake_build(onnx_path, engine_path, options):
        assert not options.fp16  # --precision fp32
        return write_engine(engine_path, f"engine of {onnx_path.name}".encode(), onnx_path, options)

    monkeypatch.setattr(tensorrt, "unavailable_reason", lambda: None)
    monkeypatch.setattr(tensorrt, "build_engine", fake_build)
    directory, out, repository = official_run[3].parent, tmp_path / "out", tmp_path / "repository"
    status = cli.main(["export", "trt", str(directory / "latest_net_G.pth"), "--encoder",
                       str(directory / "latest_net_E.pth"), "--out", str(out), "--parity-samples", "1",
                       "--repository", str(repository), "--max-batch", "2", "--precision", "fp32"])
    assert status == 0
    for name, engine in ((io_spec.GENERATOR_MODEL, out / "generator.plan"), (io_spec.ENCODER_MODEL,
                                                                             out / "encoder.plan")):
        config = parse(repository / name / "config.pbtxt")
        assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 2)
        assert (repository / name / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert parse(repository / io_spec.PIPELINE_MODEL / "config.pbtxt").max_batch_size == 2
    assert read_engine_metadata(out / "generator.plan")["precision"] == "fp32"
    assert read_export_metadata(out / "generator.onnx").precision == "fp32"  # the ONNX files themselves stay fp32
    assert read_engine_metadata(out / "encoder.plan")["profile"] == {
        io_spec.STYLE: [[1, 32, 32, 3], [2, 256, 256, 3], [2, 1024, 1024, 3]]}


def uint8_inside(onnx_path: Path) -> list[str]:
    """The nodes that make a uint8 tensor which is not a graph output: TensorRT takes uint8 only as a network input
    or output, and its ONNX parser refuses such a node ("UINT8 types for intermediate tensors")."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path))).graph
    types = {value.name: value.type.tensor_type.elem_type for value in (*graph.value_info, *graph.output)}
    outputs = {output.name for output in graph.output}
    return [f"{node.op_type} {node.name}" for node in graph.node
            if any(types.get(name) == onnx.TensorProto.UINT8 and name not in outputs for name in node.output)]


def test_trt_graphs_keep_uint8_at_the_network_edges(tmp_path):
    """The uint8 label, style and image can be engine bindings only if each graph casts a uint8 input first and
    casts to uint8 last."""
    config = GeneratorConfig(label_nc=4, ngf=8, use_vae=True, use_instance=True, crop_size=64)
    paths = [export_generator_onnx(random_generator(config), tmp_path / f"{graph}.onnx", graph=graph)
             for graph in TRT_GRAPHS]
    paths.append(export_encoder_onnx(random_encoder(EncoderConfig(ngf=8)), tmp_path / "encoder.onnx"))
    assert {path.name: uint8_inside(path) for path in paths} == {path.name: [] for path in paths}


@pytest.mark.parametrize("exporter, argv, graph", [
    ("onnx", [], "sparse"),  # CPU exports: the sparse graph by default
    ("onnx", ["--dense"], "dense"),
    ("onnx", ["--graph", "sparse-tensorrt"], "sparse-tensorrt"),
    ("trt", [], "dense"),  # GPU exports: dense by default
    ("trt", ["--graph", "sparse-tensorrt"], "sparse-tensorrt"),
])
def test_graph_choice(own_checkpoint, tmp_path, exporter, argv, graph):
    """The exported graph is the one asked for (recorded in the metadata); only the default CPU graph uses ONNX
    Unique, which TensorRT cannot build."""
    assert cli.main(["export", exporter, str(own_checkpoint), "--out", str(tmp_path), "--parity-samples", "1",
                     *argv]) == 0
    model = onnx.load(str(tmp_path / "generator.onnx"))
    assert read_export_metadata(tmp_path / "generator.onnx").graph == graph
    assert any(node.op_type == "Unique" for node in model.graph.node) == (graph == "sparse")


AMX_FLAGS = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_bf16_export_on_amx_takes_the_sparse_graph_and_prints_its_quality(own_checkpoint, tmp_path, capsys,
                                                                          monkeypatch):
    """With AMX (faked: the choice follows the flags; OpenVINO runs bf16 on this CPU's own bf16 hardware) the export
    is the sparse graph in OpenVINO at bf16, recorded in the metadata; the table shows its quality beside eager
    float32's, not judged by the tolerance, and the encoder-less export still passes."""
    if not set(BF16_FLAGS) & cpu_flags():
        pytest.skip("this CPU has no bf16 hardware: OpenVINO would run the export in f32")
    if openvino_unavailable():
        pytest.skip(openvino_unavailable())
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX_FLAGS)
    status = cli.main(["export", "onnx", str(own_checkpoint), "--out", str(tmp_path), "--parity-samples", "1",
                       "--precision", "bf16"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "precision: bf16 on AMX: our sparse-bf16 graph in OpenVINO" in captured.err
    metadata = read_export_metadata(tmp_path / "generator.onnx")
    assert (metadata.graph, metadata.precision, metadata.runtime) == ("sparse-bf16", "bf16", "openvino")
    assert "image_float  OpenVINO bf16" in captured.out and "not judged (bf16: see its quality)" in captured.out
    quality_rows = {line.split()[0]: line.split() for line in captured.out.splitlines()
                    if line.startswith(("eager float32 ", "OpenVINO bf16 "))}
    assert set(quality_rows) == {"eager", "OpenVINO"}  # PSNR and the 1- and 2-level shares beside eager's
    psnr, within_1, within_2 = quality_rows["OpenVINO"][4:7]
    assert float(psnr) > 30 and 0 < float(within_1.rstrip("%")) <= float(within_2.rstrip("%")) <= 100
    assert json.loads((tmp_path / "parity.json").read_text())["precision"] == "bf16"


def test_bf16_without_bf16_hardware_says_so_and_exports_fp32(own_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    status = cli.main(["export", "onnx", str(own_checkpoint), "--out", str(tmp_path), "--parity-samples", "1",
                       "--precision", "bf16"])
    err = capsys.readouterr().err
    assert status == 0
    assert ("bf16 is not available here; exporting fp32 (this CPU has no bf16 hardware: neither amx_bf16 nor "
            "avx512_bf16): our sparse graph in ONNX Runtime\n") in err
    metadata = read_export_metadata(tmp_path / "generator.onnx")
    assert (metadata.graph, metadata.precision, metadata.runtime) == ("sparse", "fp32", "onnxruntime")
    assert OnnxGenerator(tmp_path / "generator.onnx").precision == "fp32"


@pytest.mark.parametrize("argv, openvino, status, message", [
    (["--precision", "fp16"], True, 2, "fp16 is for NVIDIA GPUs: use `spade-deploy export trt --precision fp16`"),
    (["--precision", "bf16", "--repository", "{out}/repository", "--variant", "gpu"], True, 2,
     "--repository: a bf16 export runs in OpenVINO on a CPU, which the gpu variant's models do not"),
    (["--precision", "bf16"], False, 1, 'a bf16 export runs in OpenVINO, but OpenVINO is not installed (pip install '
                                        '"spade-deploy[openvino]")'),
])
def test_what_a_precision_cannot_do_fails_before_the_export(own_checkpoint, tmp_path, capsys, monkeypatch, argv,
                                                            openvino, status, message):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    if not openvino:
        monkeypatch.setattr(pipeline, "openvino_unavailable",
                            lambda: 'OpenVINO is not installed (pip install "spade-deploy[openvino]")')
    out = tmp_path / "out"
    assert cli.main(["export", "onnx", str(own_checkpoint), "--out", str(out),
                     *(arg.format(out=out) for arg in argv)]) == status
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv, chosen", [([], "fp16"), (["--precision", "fp32"], "fp32"), (["--fp32"], "fp32"),
                                          (["--fp16"], "fp16")])
def test_trt_precision_is_the_engines(argv, chosen):
    args = cli.build_parser().parse_args(["export", "trt", "G.pt", "--out", "out", *argv])
    assert args.precision == chosen


def test_trt_offers_only_graphs_tensorrt_builds(own_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "trt", str(own_checkpoint), "--out", str(tmp_path), "--graph", "sparse"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sparse'" in capsys.readouterr().err


def test_trt_require_engine_fails_fast(own_checkpoint, tmp_path, capsys):
    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: engines can be built")
    status = cli.main(["export", "trt", str(own_checkpoint), "--out", str(tmp_path), "--require-engine"])
    assert status == EXIT_NO_ENGINE
    assert "--require-engine" in capsys.readouterr().err
    assert not (tmp_path / "generator.onnx").exists()


@pytest.mark.parametrize("graph", ["dense", "sparse-tensorrt"])
def test_fp32_pinned_nodes_are_the_sensitive_ones(tmp_path, graph):
    """Instance norms, the tanh and the output conv: a Conv in the dense graph, the MatMul and shifted sums of
    TapSumConv in the sparse one."""
    config = GeneratorConfig(label_nc=4, ngf=8, norm="instance", crop_size=64)
    from spade_deploy.export.onnx import export_generator_onnx
    path = export_generator_onnx(random_generator(config), tmp_path / "g.onnx", graph=graph)
    nodes = {node.name: node.op_type for node in onnx.load(str(path)).graph.node}
    pinned = fp32_node_names(path)
    output_conv = {name for name in nodes if "/conv_img/" in name}
    assert output_conv <= pinned
    if graph == "dense":
        assert {nodes[name] for name in output_conv} == {"Conv"}
    else:
        assert {"MatMul", "Pad", "Slice", "Add"} <= {nodes[name] for name in output_conv}
    assert {nodes[name] for name in pinned - output_conv} == {"InstanceNormalization", "Tanh"}
    assert sum(op == "InstanceNormalization" for op in nodes.values()) == sum(nodes[n] == "InstanceNormalization"
                                                                              for n in pinned)


def test_engine_build(official_run, tmp_path):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"TensorRT engine build needs TensorRT and a CUDA GPU: {reason}")
    onnx_path = official_run[3] / "generator.onnx"
    metadata = build_engine(onnx_path, tmp_path / "generator.plan", EngineOptions(fp16=True, max_batch=2))
    assert (tmp_path / "generator.plan").stat().st_size > 0
    assert metadata["max_batch"] == 2 and metadata["tensorrt_version"]


def test_module_entry_points_run_from_the_repository_root(own_checkpoint, tmp_path):
    """`python -m export.onnx`, `python -m export.trt` and `python -m training.train` from the repository root are
    the same commands as `spade-deploy export onnx|trt` and `spade-deploy train`: exit statuses, files, messages."""
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT, timeout=600)

    result = run("export.onnx", str(own_checkpoint), "--out", str(tmp_path / "onnx"), "--parity-samples", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "onnx" / "generator.onnx").is_file() and "max |Δ|" in result.stdout
    result = run("export.trt", str(own_checkpoint), "--out", str(tmp_path / "trt"), "--parity-samples", "1",
                 "--repository", str(tmp_path / "repository"))
    assert result.returncode == 0 and (tmp_path / "trt" / "generator.onnx").is_file(), result.stderr
    assert (tmp_path / "repository" / io_spec.GENERATOR_MODEL / "config.pbtxt").is_file()
    if unavailable_reason() is not None:  # where engines cannot be built: skipped with the reason, or exit 3
        assert f"TensorRT engine step skipped: {unavailable_reason()}" in result.stderr
        result = run("export.trt", str(own_checkpoint), "--out", str(tmp_path / "trt"), "--require-engine")
        assert result.returncode == EXIT_NO_ENGINE and "--require-engine" in result.stderr
    result = run("export.onnx", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "bad"))
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
    result = run("training.train", "--preset", "custom", "--label-nc", "4", "--dataroot", str(tmp_path),
                 "--run-dir", str(tmp_path / "run"), "--max-steps", "1", "--no-vgg-loss", "--dry-run")
    assert result.returncode == 0 and json.loads(result.stdout)["generator"]["label_nc"] == 4


def test_a_gpu_repository_gets_the_dense_graph(own_checkpoint, tmp_path, capsys):
    """ONNX Runtime's TensorRT accelerator needs fixed shapes: the gpu variant exports the dense graph, and refuses a
    sparse one before any work."""
    out, repository = tmp_path / "out", tmp_path / "repository"
    argv = ["export", "onnx", str(own_checkpoint), "--out", str(out), "--repository", str(repository), "--variant",
            "gpu", "--parity-samples", "1"]
    assert cli.main([*argv, "--graph", "sparse"]) == 2
    assert "--graph sparse cannot be served by the gpu repository" in capsys.readouterr().err
    assert not out.exists() and not repository.exists()
    assert cli.main(argv) == 0
    assert read_export_metadata(out / "generator.onnx").graph == "dense"
    assert f"wrote {repository} (serve it: in NVIDIA's Triton container, docs/deployment.md)" in capsys.readouterr().out
