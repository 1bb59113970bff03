"""The argument types and output checks the subcommands share (spade_deploy.cli.arguments)."""
from __future__ import annotations

import argparse
import os

import pytest

from spade_deploy.cli.arguments import check_output_file, check_output_folder, non_negative_number, port


@pytest.mark.parametrize("text", ["-1", "65536", "70000", "http", "1.5"])
def test_ports_outside_the_range_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a port number 0..65535"):
        port(text)


def test_ports_in_the_range_are_taken():
    assert [port(text) for text in ("0", "8001", "65535")] == [0, 8001, 65535]


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "-inf", "x"])
def test_a_tolerance_must_be_finite_and_not_negative(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a (finite )?number >= 0"):
        non_negative_number(text)
    assert non_negative_number("0") == 0 and non_negative_number("1e-4") == 1e-4


def test_output_files_are_checked_before_any_work(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--json .*folder is a folder; expected the path of a file to write"):
        check_output_file(tmp_path / "folder", "--json")
    with pytest.raises(ValueError, match=r"--json .*file/x.json: .*file is a file, not a folder"):
        check_output_file(tmp_path / "file" / "x.json", "--json")
    check_output_file(tmp_path / "new" / "deeper" / "x.json", "--json")  # missing folders are made when it writes
    check_output_file(tmp_path / "file", "--json")  # an existing file is replaced (atomically) when it writes
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_output_folders_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--out .*file is a file; expected a folder \(created when missing\)"):
        check_output_folder(tmp_path / "file", "--out")
    with pytest.raises(ValueError, match=r"--out .*file/sub: .*file is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "sub", "--out")
    check_output_folder(tmp_path / "new" / "sub", "--out")
    assert not (tmp_path / "new").exists()


def test_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root: a mode-0500 folder is still writable")
    with pytest.raises(ValueError, match="cannot write in"):
        check_output_file(locked / "x.json", "--json")
