"""`spade-deploy bench`: tiny in-process and served runs write their results and a command that reproduces them;
options of the other mode are refused."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from spade_deploy.bench.inprocess import Options, boundary_share, graph_feeds
from spade_deploy.bench.served import DISTINCT_MAPS
from spade_deploy.cli import USER_ERROR, build_parser, main
from spade_deploy.cli.bench import INPROCESS, SERVED
from spade_deploy.model import io_spec
from spade_deploy.model.config import generator_preset
from tests.fixtures.serving import require_triton

TINY = ["bench", "--preset", "ade20k", "--ngf", "8", "--height", "64", "--width", "64"]
# Each mode's options as the parser has them (the groups `bench` derives its check from).
MODE_OPTIONS = build_parser().parse_args(TINY).mode_options


def reproduced(command: str) -> argparse.Namespace:
    """The arguments of a recorded command, parsed as `spade-deploy` parses them."""
    words = shlex.split(command)
    assert words[:2] == ["spade-deploy", "bench"]
    return build_parser().parse_args(words[1:])


def test_a_tiny_in_process_run_writes_json_and_a_results_folder(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    argv = [*TINY, "--batch", "1", "--runtimes", "eager,ort", "--repeats", "1", "--warmup", "0", "--regions", "8",
            "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "results")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [row["runtime"] for row in result["rows"]] == ["eager", "ort"]
    assert result["rows"][1]["max_abs_diff"] <= 1e-4 and result["setup"]["size"] == "64x64"
    assert result["setup"]["regions"] == 8 and "8 irregular regions" in result["setup"]["label_maps"]
    # The recorded command reproduces the run, defaults spelled out.
    again = reproduced(result["command"])
    assert (again.preset, again.height, again.width, again.ngf, again.regions, again.seed) == ("ade20k", 64, 64, 8,
                                                                                              8, 0)
    assert (again.batches, again.runtimes, again.repeats, again.warmup, again.threads) == ((1,), ["eager", "ort"], 1,
                                                                                           0, Options.threads)
    assert not again.served and again.one_at_a_time is None and again.out == tmp_path / "results"
    assert (tmp_path / "results" / "inprocess.json").is_file() and (tmp_path / "results" / "summary.md").is_file()
    out = capsys.readouterr().out
    assert "| eager | 1 |" in out and "wrote" in out


def test_a_tiny_served_run_uses_the_chosen_regions_and_queue_delay(tmp_path: Path) -> None:
    require_triton()
    argv = [*TINY, "--served", "--regions", "40", "--queue-delay-us", "500", "--concurrency", "1", "--requests", "2",
            "--rates", "10", "--rate-requests", "2", "--instances", "1", "--json", str(tmp_path / "served.json")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "served.json").read_text())
    setup = result["setup"]
    assert setup["regions"] == 40 and setup["queue_delay_us"] == 500

    def share(regions: int) -> float:
        feeds = graph_feeds(generator_preset("ade20k", ngf=8), DISTINCT_MAPS, 64, 64, seed=0, regions=regions)
        return boundary_share(feeds[io_spec.LABEL], feeds.get(io_spec.INSTANCE))

    assert setup["boundary_share"] == share(40) != share(Options.regions)  # the label maps the requests sent
    assert [level["requests"] for level in result["concurrency"] + result["fixed_rate"]] == [2, 2]
    again = reproduced(result["command"])
    assert again.served and (again.regions, again.queue_delay_us, again.height, again.width) == (40, 500, 64, 64)
    assert (again.concurrency, again.requests, again.rates, again.rate_requests, again.instances) == ((1,), 2, (10.0,),
                                                                                                     2, 1)


@pytest.mark.parametrize("mode, dest", [(mode, dest) for mode, options in MODE_OPTIONS.items() for dest in options])
def test_an_option_of_one_mode_is_refused_in_the_other(mode: str, dest: str, capsys: pytest.CaptureFixture) -> None:
    """Every option of each mode's argument group, given in the other mode (where it would be silently ignored)."""
    action = MODE_OPTIONS[mode][dest]
    flag = action.option_strings[0]
    argv = [*TINY, flag, *(["1"] if action.nargs != 0 else []), *([] if mode == SERVED else ["--served"])]
    assert main(argv) == USER_ERROR
    hint = "add --served" if mode == SERVED else "drop --served"
    assert f"{flag}: only for the {mode} benchmark ({hint})" in capsys.readouterr().err


def test_the_modes_share_no_option_and_the_common_ones_stay_common() -> None:
    assert set(MODE_OPTIONS) == {INPROCESS, SERVED}
    assert not set(MODE_OPTIONS[INPROCESS]) & set(MODE_OPTIONS[SERVED])
    common = {"preset", "height", "width", "ngf", "regions", "seed", "json", "out", "served"}
    assert not common & (set(MODE_OPTIONS[INPROCESS]) | set(MODE_OPTIONS[SERVED]))
    assert {"batches", "runtimes", "one_at_a_time"} <= set(MODE_OPTIONS[INPROCESS])
    assert {"concurrency", "queue_delay_us", "perf_analyzer"} <= set(MODE_OPTIONS[SERVED])


@pytest.mark.parametrize("argv, message", [
    (["--concurrency", "1,2", "--requests", "4"], "--concurrency, --requests: only for the served benchmark"),
    (["--runtimes", "eager,warp"], "unknown runtime(s) ['warp']"),
    (["--height", "60", "--width", "64", "--runtimes", "eager"], "multiples of 32"),
    (["--height", "64"], "give --height and --width together"),
    (["--served", "--queue-delay-us", "-1"], "queue_delay_us must be a non-negative number of microseconds"),
])
def test_bad_options_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--preset", "ade20k", "--ngf", "8", *argv]) == USER_ERROR
    assert message in capsys.readouterr().err


def test_output_paths_are_checked_before_the_benchmark(tmp_path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["bench", "--preset", "ade20k", "--json", str(tmp_path / "file" / "r.json")]) == USER_ERROR
    assert "--json " + str(tmp_path / "file" / "r.json") + ": " + str(tmp_path / "file") + " is a file, not a folder" \
        in capsys.readouterr().err
    assert main(["bench", "--preset", "ade20k", "--out", str(tmp_path / "file")]) == USER_ERROR
    assert "--out " + str(tmp_path / "file") + " is a file; expected a folder" in capsys.readouterr().err
    # The summary re-renders every result in --out: one that is broken is refused before the run, not after it.
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "served.json").write_text("{not json")
    assert main(["bench", "--preset", "ade20k", "--out", str(tmp_path / "results")]) == USER_ERROR
    assert f"{tmp_path / 'results' / 'served.json'} is not a readable benchmark result (Expecting property name" \
        in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--preset", "ade20k", "--batch", "1,x"], "expected comma-separated values such as 1,4"),
    (["--preset", "ade20k", "--served", "--rates", "nan"], "values must be positive and finite, got 'nan'"),
    (["--preset", "ade20k", "--served", "--rates", "5,inf"], "values must be positive and finite, got '5,inf'"),
    (["--preset", "ade20k", "--batch", "1,1"], "values must be distinct (each is measured once), got '1,1'"),
    (["--preset", "ade20k", "--runtimes", ","], "expected comma-separated runtime names such as eager,sparse-ort"),
    (["--preset", "custom"], "invalid choice: 'custom'"),
    ([], "the following arguments are required: --preset"),
])
def test_malformed_options_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["bench", *argv])
    assert message in capsys.readouterr().err
