"""What a normal (non-editable) install puts into site-packages: `spade_deploy` alone, with the python-backend model
sources as package data, so the repository writer works outside the source tree."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_only_spade_deploy_with_its_backend_sources(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    [wheel] = tmp_path.glob("spade_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {entry for entry in top if not entry.endswith(".dist-info")} == {"spade_deploy"}, top
    for source in ("onnx_model.py", "pipeline.py"):
        assert f"spade_deploy/serve/triton_models/{source}" in names
    assert not any(name.startswith(("spade_deploy/tests", "tests/")) for name in names)
