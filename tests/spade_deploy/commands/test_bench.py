"""`spade-deploy bench`: a tiny in-process run writes a results folder; options of the other mode are refused."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from spade_deploy.cli import USER_ERROR, main


def test_a_tiny_in_process_run_writes_json_and_a_results_folder(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", "--preset", "ade20k", "--ngf", "8", "--size", "64x64", "--batch", "1", "--runtimes",
            "eager,ort", "--repeats", "1", "--warmup", "0", "--regions", "8", "--json", str(tmp_path / "r.json"),
            "--out", str(tmp_path / "results")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [row["runtime"] for row in result["rows"]] == ["eager", "ort"]
    assert result["rows"][1]["max_abs_diff"] <= 1e-4 and result["setup"]["size"] == "64x64"
    # The recorded command reproduces the run, defaults spelled out.
    command = shlex.split(result["command"])
    assert command[:2] == ["spade-deploy", "bench"] and command[command.index("--threads") + 1] == "2"
    assert command[command.index("--runtimes") + 1] == "eager,ort" and command[command.index("--ngf") + 1] == "8"
    assert command[command.index("--regions") + 1] == "8" and "8 irregular regions" in result["setup"]["label_maps"]
    assert (tmp_path / "results" / "inprocess.json").is_file() and (tmp_path / "results" / "summary.md").is_file()
    out = capsys.readouterr().out
    assert "| eager | 1 |" in out and "wrote" in out


@pytest.mark.parametrize("argv, message", [
    (["--concurrency", "1,2"], "--concurrency: only for the served benchmark (add --served)"),
    (["--served", "--batch", "1"], "--batch: only for the in-process benchmark (drop --served)"),
    (["--runtimes", "eager,warp"], "unknown runtime(s) ['warp']"),
    (["--size", "60x64", "--runtimes", "eager"], "multiples of 32"),
])
def test_bad_options_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--preset", "ade20k", "--ngf", "8", *argv]) == USER_ERROR
    assert message in capsys.readouterr().err


def test_malformed_lists_are_usage_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "ade20k", "--batch", "1,x"])
    assert "expected comma-separated values such as 1,4" in capsys.readouterr().err
