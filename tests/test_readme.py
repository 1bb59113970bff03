"""README.md's examples run as written: every fenced block is run here, or listed with the reason it cannot be.

Each block is known by its first command (the first line that is not blank, a comment or an import, without its
trailing comment). `EXAMPLES` gives it a runner or a reason; a block it does not know fails, so a new or changed
example is noticed. Runners run the block's own text: bash with `bash -euo pipefail` and the venv's bin first on
PATH, python with `exec` in a subprocess (tracebacks cite README.md's lines), in a working directory holding the
files the example names (tests/fixtures/readme.py: tiny official-layout checkpoints, label maps, a style image).
What differs from a reader's run, and only that: the README's fixed ports (8001, 8080, 9000, 9001) become free
loopback ports (`with_ports`; `Studio` adds `--port 0`, which the README's own `--port` overrides); `spade-deploy
serve` and `spade-deploy paint`, which run until stopped, are started as processes (tests/serve's `Serve`,
tests/studio's `Studio`, as `python -m spade_deploy.cli`) that the following lines of the example then use; examples
run "from the repository root" get it on PYTHONPATH; the Quick start's fresh `.venv` is a link to this one. Examples
that cannot run here still have their commands parsed by the real argument parser before the test skips, saying why.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spade_deploy import cli
from spade_deploy.export.onnx import export_encoder_onnx, export_generator_onnx
from spade_deploy.model.images import read_rgb
from spade_deploy.model.synthetic import random_encoder, random_generator
from spade_deploy.serve.server import free_port
from tests.fixtures.readme import (TINY_ENCODER, label_map, official_encoder, official_generator, style_image,
                                   tiny_config)
from tests.fixtures.serving import require_triton
from tests.fixtures.serve_process import Serve
from tests.studio.process import Studio

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
TIMEOUT = 300  # seconds for one example: the export's parity checks on a busy 2-core machine
# The Quick start's set-up of a fresh venv, before its commands (the tests run in that venv already).
VENV_SET_UP = 'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[dev]" && '

# The label layouts the examples' checkpoints have (official ones without opt.txt unless said).
CUSTOM_20 = tiny_config(label_nc=20)
ADE20K_VAE = tiny_config(preset="ade20k", label_nc=150, contain_dontcare_label=True, use_vae=True)
CITYSCAPES = tiny_config(preset="cityscapes", label_nc=35, use_instance=True, num_upsampling_layers="more")
COCO = tiny_config(preset="coco", label_nc=182, contain_dontcare_label=True, use_instance=True)


# ------------------------------------------------------------------------------------------------ the README

@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int  # README line of the block's first line

    @property
    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, comment-only and blank lines dropped."""
        joined = re.sub(r"\\\n\s*", "", self.text)
        return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    @property
    def key(self) -> str:
        for line in self.text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).rstrip(" \\")
            if line and not line.startswith("#") and not (self.language == "python"
                                                          and re.match(r"(import|from) \S", line)):
                return line
        return ""


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [Block(match[1], match[2], text[:match.start(2)].count("\n") + 1)
            for match in re.finditer(r"^```(\w*)\n(.*?)^```\s*$", text, re.M | re.S)]


def block(key: str) -> Block:
    [found] = [candidate for candidate in readme_blocks() if candidate.key == key]
    return found


# ------------------------------------------------------------------------------------------ running a block

def run_bash(text: str, cwd: Path, *, from_root: bool = False) -> str:
    """`text` under `bash -euo pipefail` in `cwd`, the venv first on PATH; its output (stdout and stderr).
    `from_root`: for examples the README runs from the repository root (`python -m export.onnx`, `training.train`),
    whose entry points are importable from there; the files stay in `cwd`."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    if from_root:
        env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit status {result.returncode}:\n{output[-4000:]}"
    return output


# Runs a block with README.md's line numbers, then the test's checks in the same namespace.
_PYTHON_RUNNER = """
import sys
source, filename, checks = sys.argv[1:]
namespace = {"__name__": "__main__"}
exec(compile(source, filename, "exec"), namespace)
exec(checks, namespace)
"""


def run_python(example: Block, cwd: Path, checks: str = "", text: str | None = None) -> None:
    """The block's code (or `text`, its port-substituted version) in a fresh interpreter in `cwd`, then `checks`."""
    source = "\n" * (example.line - 1) + (text or example.text)
    result = subprocess.run([sys.executable, "-c", _PYTHON_RUNNER, source, str(README), checks], cwd=cwd,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def with_ports(text: str, ports: dict[int, int]) -> str:
    """The README's fixed ports (`127.0.0.1:8001`, `--port 9000`) replaced by free ones: this machine runs other
    servers and test sessions, which may hold the README's."""
    for readme_port, port in ports.items():
        pattern = rf"(?<=[: ]){readme_port}\b"
        assert re.search(pattern, text), f"port {readme_port} is no longer in the example; update {__file__}"
        text = re.sub(pattern, str(port), text)
    return text


def options(command: str, program: str) -> list[str]:
    """The options of `spade-deploy <program> …`, without the trailing comment."""
    argv = shlex.split(command, comments=True)
    assert Path(argv[0]).name == "spade-deploy" and argv[1] == program, command
    return argv[2:]


def forms(command: str) -> list[str]:
    """A command with optional `[--option VALUE]` parts: without them, and with all of them."""
    plain = re.sub(r"\s*\[[^]]*\]", "", command)
    return [plain, re.sub(r"\[([^]]*)\]", r"\1", command)] if plain != command else [command]


# Module entry points the README runs from the repository root, and the `spade-deploy` subcommand each one is.
ENTRY_POINTS = {"export.onnx": ["export", "onnx"], "export.trt": ["export", "trt"], "training.train": ["train"]}


def check_commands_parse(example: Block, request: pytest.FixtureRequest) -> None:
    """An example that cannot run here must still be one that would start: its options parse, its scripts exist."""
    for command in example.commands:
        argv = shlex.split(command, comments=True)
        if argv[0] == "spade-deploy":
            arguments = argv[1:]
        elif "-m" in argv and argv[argv.index("-m") + 1] in ENTRY_POINTS:
            module = argv.index("-m") + 1
            arguments = ENTRY_POINTS[argv[module]] + argv[module + 1:]
        elif (ROOT / argv[0]).is_file():
            assert os.access(ROOT / argv[0], os.X_OK), f"{argv[0]} is not executable"
            continue
        else:
            pytest.fail(f"README.md:{example.line}: no way to check {command!r}; extend check_commands_parse")
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                cli.build_parser().parse_args(arguments)
        except SystemExit:
            pytest.fail(f"README.md:{example.line}: {command!r} does not parse:\n{errors.getvalue()}")


def assert_image(path: Path, height: int, width: int) -> None:
    image = read_rgb(path)
    assert image.shape == (height, width, 3) and image.std() > 0, (path, image.shape)


# ------------------------------------------------------------------------------------ shared model, server

# The model the serving examples export, serve and paint with: a VAE with an encoder, no instance edges (the
# examples pass no instance maps), ADE20K's label layout.
SERVED = ADE20K_VAE


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with what `spade-deploy export onnx CKPT --encoder E --out onnx` writes (onnx/generator.onnx,
    onnx/encoder.onnx), label maps a.png, b.png, map.png of that model and a style image ref.jpg."""
    directory = tmp_path_factory.mktemp("serving")
    export_generator_onnx(random_generator(SERVED, seed=21, calibration_batches=1), directory / "onnx" /
                          "generator.onnx")
    export_encoder_onnx(random_encoder(TINY_ENCODER, seed=22), directory / "onnx" / "encoder.onnx")
    for seed, name in enumerate(("a.png", "b.png", "map.png")):
        label_map(directory / name, SERVED, seed=seed)
    style_image(directory / "ref.jpg")
    return directory


WRITE_REPOSITORY = 'write_repository("repository", "onnx/generator.onnx", "onnx/encoder.onnx")'
SERVE = "spade-deploy serve --repository repository"


@pytest.fixture(scope="module")
def repository(exports: Path) -> Path:
    """The write_repository example, run in the exports' folder."""
    run_python(block(WRITE_REPOSITORY), exports)
    return exports / "repository"


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[Serve]:
    """The serve example's first command, `spade-deploy serve --repository repository`, on free ports."""
    require_triton()
    arguments = options(block(SERVE).commands[0], "serve")
    assert arguments[0] == "--repository" and len(arguments) == 2, f"update the server fixture of {__file__}"
    serve = Serve(repository.parent / arguments[1], repository.parent / "triton.log")
    yield serve
    serve.stop()


@contextlib.contextmanager
def studio(command: str, cwd: Path) -> Iterator[Studio]:
    """`spade-deploy paint …` started in `cwd` (the files it names are relative to it), stopped at the end."""
    with contextlib.chdir(cwd):
        running = Studio(*options(command, "paint"))
    try:
        yield running
    finally:
        status, output = running.stop()
        assert status == 0, output


@pytest.fixture(scope="module")
def onnx_studio(exports: Path) -> Iterator[Studio]:
    """The paint example's ONNX Runtime line with its optional encoder, also what the curl example talks to."""
    [command] = [line for line in block(PAINT).commands if "--onnx " in line]
    with studio(forms(command)[-1], exports) as running:
        yield running


# --------------------------------------------------------------------------------------------------- runners

def run_demo(example: Block, request: pytest.FixtureRequest) -> None:
    """The demo after the venv set-up (the test runs in that venv): a `.venv` link to it stands for the fresh one."""
    cwd: Path = request.getfixturevalue("tmp_path")
    assert example.text.startswith(VENV_SET_UP), example.text
    (cwd / ".venv").symlink_to(VENV_BIN.parent)
    run_bash(example.text[len(VENV_SET_UP):], cwd)
    for name in ("labels", "previews", "images", "real"):
        assert len(list((cwd / "demo_output" / name).glob("*.png"))) == 6, name
    assert (cwd / "demo_output" / "overview.png").is_file()


def check_ci_runs_it(example: Block, request: pytest.FixtureRequest) -> None:
    assert example.text.strip() in (ROOT / ".ci" / "run").read_text(), ".ci/run no longer runs the README's command"


def run_python_api(example: Block, request: pytest.FixtureRequest) -> None:
    cwd: Path = request.getfixturevalue("tmp_path")
    official_generator(cwd / "checkpoints" / "coco_pretrained" / "latest_net_G.pth", COCO, seed=1, opt_txt=True)
    official_generator(cwd / "cityscapes_pretrained" / "latest_net_G.pth", CITYSCAPES, seed=2)
    official_generator(cwd / "my_run" / "latest_net_G.pth", tiny_config(label_nc=20, num_upsampling_layers="more"),
                       seed=3)
    label_map(cwd / "frankfurt_000000_000294_gtFine_labelIds.png", CITYSCAPES, seed=4, height=64, width=128,
              instances=cwd / "frankfurt_000000_000294_gtFine_instanceIds.png")
    run_python(example, cwd, checks="assert tuple(image.shape) == (1, 3, 64, 128), image.shape\n"
                                    "assert G.config.preset == 'cityscapes' and G_custom.config.label_nc == 20\n"
                                    "assert tuple(z.shape) == (1, 256)")


def run_synthesize(example: Block, request: pytest.FixtureRequest) -> None:
    cwd: Path = request.getfixturevalue("tmp_path")
    official_generator(cwd / "latest_net_G.pth", CUSTOM_20, seed=1)
    official_generator(cwd / "cityscapes_G.pth", CITYSCAPES, seed=2)
    official_generator(cwd / "G.pth", ADE20K_VAE, seed=3)
    official_encoder(cwd / "E.pth", seed=4)
    label_map(cwd / "a.png", CUSTOM_20, seed=5, instances=cwd / "a_inst.png")  # raw values < 20: fit every model
    label_map(cwd / "b.png", CUSTOM_20, seed=6)
    style_image(cwd / "ref.jpg")
    run_bash(example.text, cwd)
    for name in ("a.png", "b.png"):
        assert_image(cwd / "out" / name, 64, 64)


def run_landscapes(example: Block, request: pytest.FixtureRequest) -> None:
    cwd: Path = request.getfixturevalue("tmp_path")
    run_bash(example.text, cwd)
    assert len(list((cwd / "maps" / "labels").glob("*.png"))) == 4 and (cwd / "maps" / "classes.json").is_file()
    assert_image(cwd / "out" / "00000.png", 128, 128)


def run_export(example: Block, request: pytest.FixtureRequest) -> None:
    """COCO's layout with an encoder; opt.txt beside the checkpoint makes it 64 px (with --preset alone a VAE
    checkpoint must be the preset's 256 px, which takes minutes to check here)."""
    cwd: Path = request.getfixturevalue("tmp_path")
    official_generator(cwd / "latest_net_G.pth", COCO.replace(use_vae=True), seed=1, opt_txt=True)
    official_encoder(cwd / "latest_net_E.pth", seed=2)
    output = run_bash(example.text, cwd, from_root=True)
    assert "TensorRT engine step skipped" in output or (cwd / "engines" / "generator.plan").is_file(), output
    written = {option: [cwd / argv[argv.index(option) + 1] for argv in map(shlex.split, example.commands)
                        if option in argv] for option in ("--out", "--repository")}
    for folder in written["--out"]:
        assert {"generator.onnx", "encoder.onnx"} <= {path.name for path in folder.iterdir()}, folder
    for repository in written["--repository"]:
        models = {path.parent.name for path in repository.glob("*/config.pbtxt")}
        assert models == {"spade", "spade_generator", "spade_encoder"}, (repository, models)
    # Exports are for others to read (a server running as another user): the permissions a plain open() or mkdir()
    # gives, never the owner-only ones of temporary files.
    umask = os.umask(0)
    os.umask(umask)
    paths = [path for folder in written["--out"] + written["--repository"] for path in [folder, *folder.rglob("*")]]
    unusual = {str(path.relative_to(cwd)): oct(stat.S_IMODE(path.stat().st_mode)) for path in paths
               if stat.S_IMODE(path.stat().st_mode) != (0o777 if path.is_dir() else 0o666) & ~umask}
    assert not unusual, f"umask {umask:03o}: {unusual}"


def run_write_repository(example: Block, request: pytest.FixtureRequest) -> None:
    repository: Path = request.getfixturevalue("repository")  # the fixture runs this example
    assert {path.parent.name for path in repository.glob("*/config.pbtxt")} == {"spade", "spade_generator",
                                                                                "spade_encoder"}


def run_serve(example: Block, request: pytest.FixtureRequest) -> None:
    """The first command is the `server` fixture; the others run against it."""
    serving: Serve = request.getfixturevalue("server")
    assert example.commands[0].startswith(SERVE)
    cwd = request.getfixturevalue("exports")
    run_bash(with_ports("\n".join(example.commands[1:]), {8001: serving.ports["grpc"]}), cwd)
    for name in ("a.png", "b.png"):
        assert_image(cwd / "out" / name, 64, 64)


def run_client(example: Block, request: pytest.FixtureRequest) -> None:
    """Against the serve example's server; the fail-over's second address is a free port where nothing listens."""
    serving: Serve = request.getfixturevalue("server")
    text = with_ports(example.text, {8001: serving.ports["grpc"], 9001: free_port()})
    run_python(example, request.getfixturevalue("exports"), text=text,
               checks="assert images.shape == (1, 64, 64, 3) and images.dtype == 'uint8', images.shape")


PAINT = "spade-deploy paint --checkpoint G.pth [--encoder E.pth] [--preset ade20k]"


def run_paint(example: Block, request: pytest.FixtureRequest) -> None:
    """Each line is a studio of its own: started, asked what it serves, stopped."""
    cwd: Path = request.getfixturevalue("tmp_path")
    # A VAE's size is in its weights, and with --preset (no opt.txt) it has to be the preset's: ADE20K's 256 px.
    official_generator(cwd / "G.pth", ADE20K_VAE.replace(crop_size=256), seed=1)
    official_encoder(cwd / "E.pth", seed=2)
    checked = 0
    for command in example.commands:
        if "--onnx " in command:
            running = request.getfixturevalue("onnx_studio")
            model = running.get("/api/model").json()
            assert (model["backend"], model["takes_style"]) == ("onnxruntime", True), model
            checked += 1
            continue
        if "--server " in command:
            command = with_ports(command, {8001: request.getfixturevalue("server").ports["grpc"]})
        if "--port " in command:
            command = with_ports(command, {9000: free_port()})
        for form in forms(command):
            with studio(form, cwd) as running:
                model = running.get("/api/model").json()
                expected = ("triton" if "--server" in form else "pytorch", "--encoder" in form or "--server" in form)
                assert (model["backend"], model["takes_style"]) == expected, (form, model)
                if "--port " in form:
                    assert running.url.endswith(f":{options(form, 'paint')[-1]}"), running.url
        checked += 1
    assert checked == 4, "a paint line was added: check it here"


def run_paint_bundled(example: Block, request: pytest.FixtureRequest) -> None:
    """On a free port instead of the default 8080 (`Studio` adds `--port 0`)."""
    [command] = example.commands
    with studio(command, request.getfixturevalue("tmp_path")) as running:
        model = running.get("/api/model").json()
        assert (model["backend"], model["takes_seed"], len(model["classes"])) == ("pytorch", False, 10), model


def run_curl(example: Block, request: pytest.FixtureRequest) -> None:
    """Against the paint example's ONNX Runtime studio (a VAE, so ?seed= applies), on its port."""
    running: Studio = request.getfixturevalue("onnx_studio")
    cwd: Path = request.getfixturevalue("exports")
    port = int(running.url.rsplit(":", 1)[1])
    output = run_bash(with_ports(example.text, {8080: port}), cwd)
    model, _ = json.JSONDecoder().raw_decode(output)  # the first command's answer; no newline follows it
    assert model["height"] == model["width"] == 64 and len(model["classes"]) == SERVED.num_label_channels
    assert re.search(r"HTTP/\S+ 200 ", output) and re.search(r"^x-seed: 7\s*$", output, re.M | re.I), output
    assert_image(cwd / "image.png", 64, 64)


def run_train_dry_run_and_export(example: Block, request: pytest.FixtureRequest) -> None:
    """runs/mine/checkpoints/latest.pt, what the torchrun example (not runnable here) leaves, comes from a one-step
    tiny run of the same trainer (tests/fixtures/training.py)."""
    cwd: Path = request.getfixturevalue("tmp_path")
    tiny_args = request.getfixturevalue("tiny_args")
    assert cli.main(["train", *tiny_args(request.getfixturevalue("dataset"), cwd / "runs" / "mine",
                                         "--max-steps", "1")]) == 0
    output = run_bash(example.text, cwd, from_root=True)
    options_tree = json.loads(output[output.index("{"):output.index("\n}\n") + 2])
    assert options_tree["generator"]["preset"] == "ade20k" and not (cwd / "runs" / "ade").exists()
    assert (cwd / "onnx" / "generator.onnx").is_file()


def run_evaluate(example: Block, request: pytest.FixtureRequest) -> None:
    cwd: Path = request.getfixturevalue("tmp_path")
    run_bash(example.text, cwd)
    report = json.loads((cwd / "eval.json").read_text())
    assert 0 < report["generated"]["mIoU"] <= 1 and 0 < report["mIoU_ratio"], report.keys()


# ---------------------------------------------------------------------------------------------- the examples

@dataclass(frozen=True)
class Example:
    name: str  # the test id
    run: Callable[[Block, pytest.FixtureRequest], None]
    reason: str | None = None  # why it cannot run here: `run` only checks it, then the test skips


# Every README block by its key (`Block.key`), in README order.
EXAMPLES: dict[str, Example] = {
    VENV_SET_UP + ".venv/bin/python -m spade_deploy.demo --out demo_output": Example("demo", run_demo),
    VENV_SET_UP + ".venv/bin/python -m pytest -q": Example(
        "test-command", check_ci_runs_it,
        ".ci/run runs this command verbatim: it is CI itself (run here, the suite would run itself)"),
    'G = spade_deploy.load_generator("checkpoints/coco_pretrained/latest_net_G.pth")': Example(
        "python-api", run_python_api),
    "spade-deploy synthesize --checkpoint latest_net_G.pth --labels a.png b.png --out out": Example(
        "synthesize", run_synthesize),
    "spade-deploy landscapes --out maps --count 4 --seed 1": Example("landscapes", run_landscapes),
    "python -m export.onnx latest_net_G.pth --encoder latest_net_E.pth --preset coco --out onnx --repository "
    "repository": Example("export", run_export),
    WRITE_REPOSITORY: Example("write-repository", run_write_repository),
    SERVE: Example("serve", run_serve),
    'with SpadeClient("127.0.0.1:8001") as client:': Example("client", run_client),
    ".venv/bin/spade-deploy paint": Example("paint-bundled", run_paint_bundled),
    PAINT: Example("paint", run_paint),
    "curl -s http://127.0.0.1:8080/api/model": Example("curl", run_curl),
    "torchrun --nproc_per_node 8 -m training.train --preset custom --label-nc 20 --dataroot D --crop-size 256": Example(
        "torchrun", check_commands_parse,
        "8 training processes at 256 px for 200 epochs, with VGG19 weights that cannot be downloaded here "
        "(tests/training/ runs the same trainer tiny, on 1 and 2 processes)"),
    "python -m training.train --preset ade20k --dataroot ADEChallengeData2016 --run-dir runs/ade --epochs 200": Example(
        "train-dry-run-and-export", run_train_dry_run_and_export),
    "spade-deploy landscapes --out val --count 32 --size 128 --seed 1": Example("evaluate", run_evaluate),
    "spade-deploy bench --preset ade20k --batch 1,4 --repeats 3 --out DIR": Example(
        "bench", check_commands_parse,
        "benchmarks that run for many minutes (every runtime at ADE20K 256x256; a served run with perf_analyzer; "
        "both as published); benchmarks/gpu.sh needs an NVIDIA GPU (tests/bench/ runs the bench tiny, and gpu.sh "
        "without a GPU)"),
}
BLOCKS = readme_blocks()


@pytest.mark.parametrize("example", BLOCKS, ids=[EXAMPLES[example.key].name if example.key in EXAMPLES
                                                 else f"unknown-README-line-{example.line}" for example in BLOCKS])
def test_readme_example(example: Block, request: pytest.FixtureRequest) -> None:
    known = EXAMPLES.get(example.key)
    if known is None:
        pytest.fail(f"README.md:{example.line}: a ```{example.language} example this test does not know "
                    f"({example.key!r}): add a runner, or the reason it cannot run here, to EXAMPLES in {__file__}")
    known.run(example, request)
    if known.reason:
        pytest.skip(known.reason)


def test_every_listed_example_is_in_the_readme_once() -> None:
    keys = [example.key for example in BLOCKS]
    assert len(keys) == len(set(keys)), "two README examples start with the same command; tell them apart"
    stale = sorted(set(EXAMPLES) - set(keys))
    assert not stale, f"EXAMPLES lists examples the README no longer has (changed or removed): {stale}"
