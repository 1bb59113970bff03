"""benchmarks/profile_sparse.py: one tiny run writes its tables, every profiled node has a kind, and they add up."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from spade_deploy.export.precision import BF16, BF16_FLAGS, FP32, cpu_flags
from spade_deploy.export.runtime import openvino_unavailable

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_sparse.py"


@pytest.fixture(scope="module")
def profile_sparse():
    spec = importlib.util.spec_from_file_location("profile_sparse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kinds_follow_the_exporters_node_names(profile_sparse) -> None:
    kind = profile_sparse.kind
    assert kind("/core/blocks.6/conv_0/conv/Conv_output_0_nchwc", "Conv") == "main conv"
    assert kind("/core/blocks.3/conv_0/MatMul_4", "MatMul") == "main conv"  # a Winograd tile position
    assert kind("/core/blocks.3/mod_s/conv/MatMul", "MatMul") == "main conv"  # the 1x1 shortcut
    assert kind("/core/blocks.3/mod_s/shift/MatMul", "MatMul") == "boundary table"
    assert kind("/core/blocks.3/conv_0/input_transform/MatMul", "MatMul") == "winograd transforms"
    assert kind("/core/blocks.3/conv_0/Gather_2", "Gather") == "winograd transforms"
    assert kind("/core/blocks.4/mod_0/scale/MatMul", "MatMul") == "boundary table"
    assert kind("/core/blocks.4/mod_s/shift/Gather_1", "Gather") == "modulation gathers"
    assert kind("/core/blocks.4/mod_0/scale/ReduceSum", "ReduceSum") == "modulation sums"
    assert kind("/core/blocks.4/mod_0/scale/Add", "Add") == "modulation sums"
    assert kind("/core/blocks.4/mod_0/Add", "Add") == "modulation x*A+B"
    assert kind("/core/Unique_3", "Unique") == "label bookkeeping"
    assert kind("ReorderInput_token_12", "ReorderInput") == "layout"
    assert kind("image_float_nchwc", "Conv") == "output conv"  # after a dense last block
    assert kind("/core/conv_img/MatMul", "MatMul") == "output conv"  # TapSumConv after a sparse one
    assert kind("/core/conv_img/Slice_3", "Slice") == "output conv"
    # The transposes around a direct conv are layout; a Winograd conv's are its transforms
    direct = frozenset({"/core/blocks.6/conv_0"})
    assert kind("/core/blocks.6/conv_0/Transpose_1", "Transpose", direct) == "layout"
    assert kind("/core/blocks.3/conv_0/Transpose_1", "Transpose", direct) == "winograd transforms"


def test_openvino_node_types_are_read_as_onnx_ops(profile_sparse) -> None:
    assert [profile_sparse._ONNX_OPS.get(op, op) for op in ("Convolution", "FullyConnected", "Gather", "Unique")] == \
        ["Conv", "MatMul", "Gather", "Unique"]


def test_a_tiny_run_writes_tables_that_add_up(profile_sparse, tmp_path: Path) -> None:
    assert profile_sparse.main(["--out", str(tmp_path), "--ngf", "4", "--size", "32", "--calls", "2",
                                "--warmup", "1"]) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    total = sum(node["ms"] for node in result["nodes"])
    assert total > 0
    assert sum(result["by_kind"].values()) == pytest.approx(total)
    assert sum(sum(kinds.values()) for kinds in result["by_block"].values()) == pytest.approx(total)
    assert result["machine"]["cpu_id"] and result["setup"]["size"] == "32x32"
    assert "| main conv |" in (tmp_path / "README.md").read_text()


def test_a_tiny_openvino_run_at_bf16(profile_sparse, tmp_path: Path) -> None:
    """The bf16 graph in OpenVINO (pinned to f32 where the CPU has no bf16 hardware: the tables are the same)."""
    if openvino_unavailable():
        pytest.skip(openvino_unavailable())
    precision = BF16 if set(BF16_FLAGS) & cpu_flags() else FP32
    assert profile_sparse.main(["--out", str(tmp_path), "--graph", "sparse-bf16", "--runtime", "openvino",
                                "--precision", precision, "--ngf", "4", "--size", "32", "--calls", "2",
                                "--warmup", "1"]) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    total = sum(node["ms"] for node in result["nodes"])
    assert total > 0 and sum(result["by_kind"].values()) == pytest.approx(total)
    assert result["by_kind"]["main conv"] > 0 and result["by_kind"]["label bookkeeping"] > 0
    assert (tmp_path / "README.md").read_text().startswith(
        f"# Where the sparse-bf16 export's time goes in OpenVINO {precision}: ade20k 32x32")


def test_bad_runtime_options_are_refused(profile_sparse, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        profile_sparse.main(["--out", str(tmp_path), "--precision", "bf16"])
    assert "--precision bf16 needs --runtime openvino" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        profile_sparse.main(["--out", str(tmp_path), "--runtime", "openvino", "--batch", "2"])
    assert "runs a generator image by image (OpenVinoSession): profile --batch 1, not 2" in capsys.readouterr().err
