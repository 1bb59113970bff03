"""spade_deploy.files.atomic_path: all or nothing, with the permissions a plain open() gives."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from spade_deploy.files import atomic_path


def test_written_files_appear_whole_with_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "model.onnx"
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"new")
        assert not target.exists()  # nothing visible before the block ends
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [path.name for path in target.parent.iterdir()] == ["model.onnx"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and [path.name for path in tmp_path.iterdir()] == ["checkpoint.pth"]
