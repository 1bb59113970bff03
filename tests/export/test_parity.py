"""The parity check judges every export against the model in float64, eager float32 included."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spade_deploy.export.parity import EAGER, Comparison, ParityError, check, format_table
from spade_deploy.export.pipeline import export_onnx
from spade_deploy.model.checkpoint import save_generator
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.synthetic import random_generator, synthetic_batch
from spade_deploy.model.tensors import to_semantic_input


def test_a_candidate_passes_within_the_tolerance_or_twice_eager_float32s_distance() -> None:
    def row(candidate: str, max_abs: float, eager: float) -> Comparison:
        return Comparison("image_float", candidate, max_abs, 0.0, eager)

    assert row("ONNX Runtime", 9e-5, 1e-6).ok(1e-4)  # within the tolerance
    assert row("ONNX Runtime", 3e-4, 2e-4).ok(1e-4)  # as close as float32's own rounding allows
    assert not row("ONNX Runtime", 5e-4, 2e-4).ok(1e-4)
    assert row(EAGER, 1.0, 1.0).ok(1e-4)  # the yardstick itself is never failed
    results = [row(EAGER, 2e-4, 2e-4), row("graph in PyTorch", 3e-4, 2e-4), row("ONNX Runtime", 5e-4, 2e-4)]
    table = format_table(results, 1e-4)
    assert "eager float32" in table and "reference" in table and "NO" in table
    with pytest.raises(ParityError, match=r"ONNX Runtime image_float differs from the float64 model by max \|Δ\| = "
                                          r"5\.000e-04 > 0\.0004 \(the tolerance 0\.0001, or 2× eager float32's"):
        check(results, 1e-4)


def test_an_export_with_large_activations_is_judged_against_float64(tmp_path: Path) -> None:
    config = GeneratorConfig(label_nc=5, ngf=8, crop_size=64, spade_hidden=16)
    generator = random_generator(config, seed=1, modulation_gain=1e4)
    largest = []
    generator.conv_img.register_forward_hook(lambda module, inputs, output: largest.append(inputs[0].abs().max()))
    labels, instances = synthetic_batch(config, 2, seed=3)
    with torch.no_grad():
        generator(to_semantic_input(labels, instances, config))
    assert largest[0] > 300  # activations of a strongly modulating model, where float32 rounding grows
    checkpoint = tmp_path / "G.pt"
    save_generator(generator, checkpoint)
    exported = export_onnx(checkpoint, tmp_path / "out", parity_samples=1)
    rows = {(row.output, row.candidate): row for row in exported.parity}
    assert set(rows) == {("image_float", EAGER), ("image_float", "graph in PyTorch"), ("image_float", "ONNX Runtime")}
    assert 0 < rows["image_float", EAGER].max_abs < 1e-4  # eager float32 is itself measured, and not exact
    assert all(row.ok(1e-4) for row in exported.parity)
