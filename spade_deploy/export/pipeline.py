"""The export pipeline: load a checkpoint -> deployment graph -> ONNX -> parity against the float64 model.

`export_onnx` is `write_export` inside `staged`: the export is written to a folder of its own and moved into its
output folder only once it passed, so a failed export leaves an earlier one as it was. `spade-deploy export onnx|trt`
(and `python -m export.onnx`) run the same two steps, adding the Triton repository (a later stage) and TensorRT
engines inside the staged block. The precision asked for decides the graph and the runtime (`export_choice`, by this
CPU's flags) and is recorded in the ONNX; the parity step runs the export that way, and its table and image quality
go to stdout and to `parity.json` beside the ONNX files.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from spade_deploy.errors import Failure
from spade_deploy.export.graphs import DeployGenerator, encoder_graph, generator_graph
from spade_deploy.export.metadata import TOLERANCE
from spade_deploy.export.onnx import write_encoder_onnx, write_generator_onnx
from spade_deploy.export.parity import (Comparison, ParityError, check, encoder_parity, format_quality,
                                        format_table, generator_parity)
from spade_deploy.export.precision import FP32, OPENVINO, Choice, choose, runtime_name
from spade_deploy.export.runtime import openvino_unavailable
from spade_deploy.files import atomic_path
from spade_deploy.model import io_spec
from spade_deploy.model.checkpoint import load_encoder, load_generator
from spade_deploy.model.labels import check_label_size
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator

GENERATOR_FILE = "generator.onnx"
ENCODER_FILE = "encoder.onnx"
PARITY_FILE = "parity.json"  # the parity rows and image quality against float64, as printed
ENGINE_SUFFIX = ".plan"  # `export trt`: a TensorRT engine, beside the graph it was built from
# Every file an export writes into its folder: one that a new export does not write again describes an earlier model
# (an encoder.onnx beside a generator that is no longer a VAE, an engine built from the old graph) and is removed.
EXPORT_FILES = (GENERATOR_FILE, ENCODER_FILE, PARITY_FILE,
                *(str(Path(name).with_suffix(ENGINE_SUFFIX)) for name in (GENERATOR_FILE, ENCODER_FILE)))
STAGE_PREFIX = ".export-"  # + pid: the hidden folder inside the output folder that an export is written to first
FAILED_EXPORT = "failed-export"  # in the output folder: the latest export that failed its parity check, to inspect


@dataclass
class Exported:
    generator: SPADEGenerator  # the eager model that was exported
    generator_graph: DeployGenerator  # the module written to generator_onnx
    generator_onnx: Path
    choice: Choice  # the precision, graph and runtime it runs at
    encoder: ConvEncoder | None = None
    encoder_graph: nn.Module | None = None
    encoder_onnx: Path | None = None
    parity: list[Comparison] = field(default_factory=list)  # the worst comparisons with float64, all passed


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a long step and report its duration (stderr, so stdout stays clean for tables)."""
    print(f"• {title} …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def export_choice(precision: str = FP32, graph: str | None = None) -> Choice:
    """How an export at `precision` runs on this CPU (`spade_deploy.export.precision.choose`: bf16 without bf16
    hardware falls back to fp32), with `graph` instead of the measured one where given. fp16 is a `ValueError`
    (`export trt`); a choice that needs OpenVINO where it is missing is a `Failure` naming the extra."""
    choice = choose(precision)
    if graph is not None and graph != choice.graph:
        choice = replace(choice, graph=graph, reason=f"{choice.reason}, with the graph asked for")
    reason = openvino_unavailable() if choice.runtime == OPENVINO else None
    if reason:
        raise Failure(f"a {choice.precision} export runs in OpenVINO, but {reason}")
    return choice


def write_export(checkpoint: str | Path, folder: str | Path, *, encoder: str | Path | None = None,
                 preset: str | None = None, num_upsampling_layers: str | None = None, graph: str | None = None,
                 precision: str = FP32, height: int | None = None, width: int | None = None,
                 parity_samples: int = 2, tolerance: float = TOLERANCE) -> Exported:
    """Load a generator checkpoint (and encoder), write `folder/generator.onnx` (and `folder/encoder.onnx`) as the
    deployment graph at height x width (default: the config's), and check parity of the very modules written
    against the float64 model (see `parity`). `precision` (fp32, bf16) picks the graph and runtime fastest at it on
    this CPU (`export_choice`; `graph` overrides the graph) and is recorded in the ONNX; a bf16 export runs in
    OpenVINO, and its quality is reported, not failed by `tolerance` (the encoder stays fp32 in ONNX Runtime).
    Raises `ValueError` on bad input and `ParityError` when it fails. The files are written as it goes, failed or
    not: give it a `staged` folder (`export_onnx` does) to keep an earlier export."""
    if (height is None) != (width is None):
        raise ValueError("give height and width together (or neither, for the config's size)")
    if parity_samples < 1:
        raise ValueError(f"parity_samples must be at least 1, got {parity_samples}")
    if not 0 <= tolerance < float("inf"):  # nan would fail every check, inf pass every one
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    choice = export_choice(precision, graph)
    if choice.precision != precision:
        print(f"{precision} is not available here; exporting {choice.why}", file=sys.stderr)
    else:
        print(f"precision: {choice.why}", file=sys.stderr)
    folder = Path(folder)
    overrides = {"num_upsampling_layers": num_upsampling_layers} if num_upsampling_layers else {}
    with step(f"loading {checkpoint}"):
        generator = load_generator(checkpoint, preset=preset, **overrides)
        if encoder is not None:
            io_spec.check_encoder_fits(generator.config)
        style_encoder = load_encoder(encoder) if encoder is not None else None
    print(f"  generator: {generator.config}", file=sys.stderr)
    default_height, default_width = generator.config.image_size
    height, width = height or default_height, width or default_width
    with step(f"folding and exporting the generator to ONNX ({choice.graph} graph)"):
        check_label_size(height, width, generator.config)
        module = generator_graph(generator, graph=choice.graph, height=height, width=width)
        path = write_generator_onnx(module, folder / GENERATOR_FILE, height=height, width=width,
                                    precision=choice.precision, runtime=choice.runtime)
        exported = Exported(generator, module, path, choice)
    with step(f"parity: eager, deployment graph and {runtime_name(choice.runtime, choice.precision)} vs float64 "
              "(generator)"):
        exported.parity += generator_parity(generator, module, exported.generator_onnx, samples=parity_samples,
                                            tolerance=tolerance)
    if style_encoder is not None:
        with step("exporting the encoder to ONNX"):
            exported.encoder, exported.encoder_graph = style_encoder, encoder_graph(style_encoder)
            exported.encoder_onnx = write_encoder_onnx(exported.encoder_graph, folder / ENCODER_FILE)
        with step("parity: eager, deployment graph and ONNX Runtime vs float64 (encoder)"):
            exported.parity += encoder_parity(style_encoder, exported.encoder_graph, exported.encoder_onnx,
                                              tolerance=tolerance)
    print(format_table(exported.parity, tolerance))
    print(format_quality(exported.parity))
    _write_parity(folder / PARITY_FILE, exported, tolerance)
    check(exported.parity, tolerance)
    return exported


def export_onnx(checkpoint: str | Path, out: str | Path, **options: Any) -> Exported:
    """`write_export` (`options` are its keywords) into `out`, through `staged`: `out` gets the new export only
    when it passed, and otherwise keeps what it held. The returned paths are those in `out`."""
    with staged(out) as folder:
        exported = write_export(checkpoint, folder, **options)
    return moved(exported, Path(out))


@contextlib.contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """A new hidden folder inside `out` (created when missing) to write an export to. When the block ends without an
    error, its files replace their namesakes in `out` one by one (`os.replace`: a reader sees the old file or the
    new one), and the files an export writes (`EXPORT_FILES`) that this one did not, and an earlier failed export,
    are removed. On an error `out` keeps what it held (and is removed again when it was made here): the folder is
    deleted, or, when the parity check failed, kept as `out/failed-export` for inspection, which the error says."""
    out = Path(out)
    made = [folder for folder in (out, *out.parents) if not folder.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_stages(out)
    folder = Path(tempfile.mkdtemp(dir=out, prefix=f"{STAGE_PREFIX}{os.getpid()}-", suffix=".tmp"))
    try:
        yield folder
    except ParityError as error:
        failed = out / FAILED_EXPORT
        shutil.rmtree(failed, ignore_errors=True)
        folder.rename(failed)
        raise ParityError(f"{error}\nThe failed export is in {failed} for inspection; {out} is otherwise "
                          f"unchanged.") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        for made_here in made:
            with contextlib.suppress(OSError):  # not empty: something else was written there meanwhile
                made_here.rmdir()
        raise
    written = {path.name for path in folder.iterdir()}
    for name in sorted(written):
        os.replace(folder / name, out / name)
    for name in set(EXPORT_FILES) - written:
        (out / name).unlink(missing_ok=True)
    folder.rmdir()
    shutil.rmtree(out / FAILED_EXPORT, ignore_errors=True)  # superseded by this export, which passed


def _remove_abandoned_stages(out: Path) -> None:
    """Remove the staged folders in `out` of exports whose process is gone (killed before it could clean up); a
    running export's folder (its pid alive) is left alone."""
    for stage in out.glob(f"{STAGE_PREFIX}*-*.tmp"):
        pid = stage.name[len(STAGE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def moved(exported: Exported, out: Path) -> Exported:
    """`exported` (written by `write_export` in a `staged` folder) with the paths its files have in `out`."""
    return replace(exported, generator_onnx=out / exported.generator_onnx.name,
                   encoder_onnx=None if exported.encoder_onnx is None else out / exported.encoder_onnx.name)


def _write_parity(path: Path, exported: Exported, tolerance: float) -> None:
    """What the parity step printed, as JSON beside the export: its precision, every row, its verdict."""
    rows = [{**asdict(row), "judged": row.judged, "ok": row.ok(tolerance)} for row in exported.parity]
    report = {"reference": "the model in float64", "tolerance": tolerance, **asdict(exported.choice), "rows": rows}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(report, indent=1) + "\n")
