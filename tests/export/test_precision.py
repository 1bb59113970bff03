"""Precision as an export choice: the graph and runtime per CPU (a pure function of its flags), the metadata that
records them, and a bf16 export on this CPU, run the way it records and measured against the float64 model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from spade_deploy.errors import Failure
from spade_deploy.export import pipeline, precision
from spade_deploy.export.metadata import ExportMetadata, read_export_metadata
from spade_deploy.export.onnx import export_generator_onnx
from spade_deploy.export.parity import EAGER, float64_copy, quality
from spade_deploy.export.pipeline import PARITY_FILE, export_choice, export_onnx
from spade_deploy.export.precision import (BF16, BF16_FLAGS, FP16, FP32, ONNXRUNTIME, OPENVINO, Choice, choose,
                                           cpu_flags, fastest_choice, runtime_for, runtime_name)
from spade_deploy.export.runtime import OnnxGenerator, OpenVinoSession, openvino_unavailable
from spade_deploy.model import io_spec
from spade_deploy.model.checkpoint import save_generator
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.synthetic import random_generator, synthetic_batch
from spade_deploy.model.tensors import to_semantic_input

CONFIG = GeneratorConfig(label_nc=5, ngf=8, crop_size=64, spade_hidden=16)
AMX = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}  # Sapphire Rapids
AVX512_BF16 = {"avx512f", "avx512_bf16"}  # Zen 4 / Zen 5
NO_BF16 = {"avx2", "fma"}  # Zen 3


@pytest.mark.parametrize("flags, graph, chosen, runtime, why", [
    (AMX, "sparse-bf16", BF16, OPENVINO, "bf16 on AMX"),
    (AVX512_BF16, "sparse-bf16", BF16, OPENVINO, "bf16 on AVX512-BF16 (no AMX): our sparse-bf16 graph in OpenVINO"),
    (NO_BF16, "sparse", FP32, ONNXRUNTIME, "fp32 (this CPU has no bf16 hardware: neither amx_bf16 nor avx512_bf16)"),
    (set(), "sparse", FP32, ONNXRUNTIME, "fp32 (this CPU has no bf16 hardware"),
])
def test_bf16_takes_the_graph_measured_fastest_on_the_cpu(flags: set[str], graph: str, chosen: str, runtime: str,
                                                          why: str) -> None:
    choice = choose(BF16, flags)
    assert (choice.graph, choice.precision, choice.runtime) == (graph, chosen, runtime)
    assert choice.why.startswith(why)


@pytest.mark.parametrize("flags", [AMX, AVX512_BF16, NO_BF16])
def test_fp32_is_the_exact_sparse_graph_on_every_cpu(flags: set[str]) -> None:
    assert choose(FP32, flags) == Choice("sparse", FP32, ONNXRUNTIME, "(exact)")
    assert choose(FP32, flags).why == "fp32 (exact): our sparse graph in ONNX Runtime"


def test_fp16_points_to_tensorrt_and_unknown_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match=r"fp16 is for NVIDIA GPUs: use `spade-deploy export trt --precision fp16`"):
        choose(FP16, AMX)
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\]"):
        choose("int8", AMX)


@pytest.mark.parametrize("flags, openvino, graph, chosen, why", [
    (AMX, True, "sparse-bf16", BF16, "bf16 on AMX"),
    (AVX512_BF16, True, "sparse-bf16", BF16, "bf16 on AVX512-BF16"),
    (NO_BF16, True, "sparse", FP32, "fp32 (this CPU has no bf16 hardware"),
    (AMX, False, "sparse", FP32, "fp32 (this CPU has bf16 hardware, but OpenVINO, which would run bf16, is not"),
])
def test_the_fastest_choice_is_bf16s_where_openvino_can_run_it(flags: set[str], openvino: bool, graph: str,
                                                                chosen: str, why: str) -> None:
    choice = fastest_choice(flags, openvino)
    assert (choice.graph, choice.precision) == (graph, chosen) and choice.why.startswith(why)


def test_the_cpu_flags_are_read_from_proc_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    monkeypatch.setattr(precision, "_CPUINFO", cpuinfo)
    assert cpu_flags() == {"fpu", "avx2", "avx512_bf16"}
    monkeypatch.setattr(precision, "_CPUINFO", tmp_path / "missing")
    assert cpu_flags() == set()


def test_an_export_choice_asks_for_openvino_only_where_it_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    assert export_choice(BF16, "dense").why == "bf16 on AMX, with the graph asked for: our dense graph in OpenVINO"
    assert export_choice(BF16, "sparse-bf16") == choose(BF16, AMX)
    monkeypatch.setattr(pipeline, "openvino_unavailable", lambda: "OpenVINO is missing (pip install it)")
    with pytest.raises(Failure, match=r"a bf16 export runs in OpenVINO, but OpenVINO is missing \(pip install it\)"):
        export_choice(BF16)
    assert export_choice(FP32).runtime == ONNXRUNTIME  # fp32 needs no OpenVINO
    monkeypatch.setattr(precision, "cpu_flags", lambda: NO_BF16)
    assert export_choice(BF16).precision == FP32  # nor does bf16's fallback


def write_metadata_only(path: Path, props: dict[str, str]) -> Path:
    """An ONNX file holding nothing but export metadata: what `read_export_metadata` reads."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_the_metadata_records_precision_and_runtime(tmp_path: Path) -> None:
    bf16 = ExportMetadata(CONFIG, 64, 64, "dense", BF16, OPENVINO)
    assert read_export_metadata(write_metadata_only(tmp_path / "bf16.onnx", bf16.to_props())) == bf16
    older = {key: value for key, value in bf16.to_props().items() if key.endswith(("config", "size", "graph"))}
    read = read_export_metadata(write_metadata_only(tmp_path / "older.onnx", older))
    assert (read.precision, read.runtime) == (FP32, ONNXRUNTIME)  # written before precision was recorded
    with pytest.raises(ValueError, match="a bf16 export runs in openvino, not 'onnxruntime'"):
        ExportMetadata(CONFIG, 64, 64, "dense", BF16, ONNXRUNTIME)
    with pytest.raises(ValueError, match=r"an export runs at one of \['fp32', 'bf16'\]"):
        ExportMetadata(CONFIG, 64, 64, "dense", FP16, OPENVINO)
    bad = write_metadata_only(tmp_path / "bad.onnx", {**bf16.to_props(), "spade_deploy.precision": "int4"})
    with pytest.raises(ValueError, match=r"bad\.onnx: an export runs at one of"):
        read_export_metadata(bad)


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory: pytest.TempPathFactory):
    """A calibrated tiny generator exported at bf16 on this CPU (which must have bf16 hardware and OpenVINO)."""
    if not set(BF16_FLAGS) & cpu_flags():
        pytest.skip("this CPU has no bf16 hardware (neither amx_bf16 nor avx512_bf16): bf16 exports fall back to fp32")
    if openvino_unavailable():
        pytest.skip(openvino_unavailable())
    directory = tmp_path_factory.mktemp("bf16")
    generator = random_generator(CONFIG, seed=3, calibration_batches=1)
    save_generator(generator, directory / "G.pt")
    return generator, export_onnx(directory / "G.pt", directory / "out", precision=BF16, parity_samples=1)


def test_a_bf16_export_records_its_choice_and_keeps_its_quality(bf16_export) -> None:
    """The graph the CPU's flags pick, recorded; the parity rows, the runtime's at bf16 measured against float64
    beside eager float32 and not judged by the fp32 tolerance, written to parity.json; the graph itself is exact."""
    _, exported = bf16_export
    choice = choose(BF16)
    metadata = read_export_metadata(exported.generator_onnx)
    assert exported.choice == choice and (metadata.graph, metadata.precision, metadata.runtime) == \
        (choice.graph, BF16, OPENVINO)
    rows = {row.candidate: row for row in exported.parity}
    assert set(rows) == {EAGER, "graph in PyTorch", "OpenVINO bf16"}
    assert rows["graph in PyTorch"].judged and rows["graph in PyTorch"].max_abs <= 1e-4
    runtime = rows["OpenVINO bf16"]
    assert not runtime.judged and runtime.ok(1e-4) and runtime.max_abs > 1e-3  # bf16 ran, and is not exact
    assert 30 < runtime.quality.psnr_db < rows[EAGER].quality.psnr_db
    assert 0 < runtime.quality.within_1_level <= runtime.quality.within_2_levels <= 1
    report = json.loads((exported.generator_onnx.parent / PARITY_FILE).read_text())
    assert (report["precision"], report["runtime"], report["graph"]) == (BF16, OPENVINO, choice.graph)
    saved = {row["candidate"]: row for row in report["rows"]}
    assert saved["OpenVINO bf16"]["quality"]["psnr_db"] == pytest.approx(runtime.quality.psnr_db)
    assert (saved["OpenVINO bf16"]["judged"], saved["graph in PyTorch"]["judged"]) == (False, True)


def test_batch_norm_as_a_step_keeps_bf16_closer_to_the_model(bf16_export, tmp_path: Path) -> None:
    """The bf16 graph (`sparse-bf16`) against the sparse graph with batch norm folded into each modulation, both in
    OpenVINO at bf16: the fold's `x·A + B` cancels where a norm's mean is large (measured +3.3 to +4.5 dB on small
    configs, +4.5 dB on ADE20K 256x256)."""
    generator, exported = bf16_export
    labels, instances = synthetic_batch(CONFIG, 2, seed=7)
    with torch.no_grad():
        reference = float64_copy(generator)(to_semantic_input(labels, instances, CONFIG).double()).numpy()
    feeds = {io_spec.LABEL: labels.astype(io_spec.generator_io(CONFIG, 64, 64).input(io_spec.LABEL).dtype)}
    folded = export_generator_onnx(generator, tmp_path / "folded.onnx", graph="sparse")
    psnr = {path.name: quality(OpenVinoSession(path, precision=BF16, threads=1).run([io_spec.IMAGE_FLOAT], feeds)[0],
                               reference).psnr_db for path in (folded, exported.generator_onnx)}
    assert psnr[exported.generator_onnx.name] > psnr[folded.name] + 2, psnr


def test_onnx_generator_runs_a_bf16_export_in_openvino_at_bf16(bf16_export) -> None:
    generator, exported = bf16_export
    runtime = OnnxGenerator(exported.generator_onnx, threads=1)
    assert (runtime.runtime, runtime.precision) == (OPENVINO, BF16)  # as OpenVINO reports it
    labels, instances = synthetic_batch(CONFIG, 2, seed=7)
    image, image_float = runtime(labels, instances)
    with torch.no_grad():
        reference = float64_copy(generator)(to_semantic_input(labels, instances, CONFIG).double()).numpy()
    measured = quality(image_float, reference)
    assert 30 < measured.psnr_db and measured.max_abs_diff > 1e-3
    assert image.dtype == np.uint8 and image.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="runs in OpenVINO: ONNX Runtime providers do not apply"):
        OnnxGenerator(exported.generator_onnx, providers=["CPUExecutionProvider"])


def test_runtime_names():
    """One rule for which runtime runs an export, one spelling of each runtime in messages."""
    assert (runtime_for(FP32), runtime_for(BF16)) == (ONNXRUNTIME, OPENVINO)
    assert runtime_name(ONNXRUNTIME) == runtime_name(ONNXRUNTIME, FP32) == "ONNX Runtime"
    assert (runtime_name(OPENVINO), runtime_name(OPENVINO, BF16), runtime_name(OPENVINO, FP32)) == (
        "OpenVINO", "OpenVINO bf16", "OpenVINO fp32")
