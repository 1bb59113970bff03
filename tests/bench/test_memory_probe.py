"""The bench's per-runtime memory probe: the subject survives the trip to a child process, a child measures a
runtime, and a failing child costs the row its number, not the bench."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spade_deploy.bench.inprocess import graph_feeds
from spade_deploy.bench.machine import reset_peak_resident
from spade_deploy.bench.memory_probe import isolated_peaks, load_subject, save_feeds, save_subject
from spade_deploy.bench.runtimes import Subject
from spade_deploy.export.onnx import export_generator_onnx
from spade_deploy.model.synthetic import random_generator
from spade_deploy.model.tensors import to_semantic_input
from tests.fixtures.bench import TINY_BENCH


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Subject, Path, dict[int, Path]]:
    folder = tmp_path_factory.mktemp("probe")
    generator = random_generator(TINY_BENCH, seed=3)
    height, width = TINY_BENCH.image_size
    graphs = {"plain": export_generator_onnx(generator, folder / "plain.onnx", graph="plain")}
    subject = Subject(generator, height, width, 1, graphs, max_batch=2)
    feeds = {batch: save_feeds(graph_feeds(TINY_BENCH, batch, height, width, seed=batch), folder / f"feeds-{batch}.npz")
             for batch in (1, 2)}
    return subject, save_subject(subject, folder / "subject.pt"), feeds


def test_the_subject_loads_back_the_same(saved) -> None:
    subject, path, feeds = saved
    loaded = load_subject(path)
    assert (loaded.height, loaded.width, loaded.threads, loaded.max_batch) == (subject.height, subject.width, 1, 2)
    assert loaded.graphs == subject.graphs
    labels = dict(np.load(feeds[2]))["label"]
    semantic = to_semantic_input(labels, None, TINY_BENCH)
    with torch.inference_mode():
        assert torch.equal(loaded.generator(semantic), subject.generator.eval()(semantic))


def test_a_child_measures_each_batch(saved) -> None:
    _, path, feeds = saved
    peaks = isolated_peaks("plain-ort", path, feeds)
    if not reset_peak_resident():
        assert peaks is None  # no /proc/self/clear_refs: nothing to measure with
        return
    assert set(peaks) == {1, 2} and all(mib > 0 for mib in peaks.values())


def test_a_failing_child_says_why_and_measures_nothing(saved, tmp_path, capsys) -> None:
    _, path, feeds = saved
    assert isolated_peaks("plain-ort", tmp_path / "missing.pt", feeds) is None
    assert "peak memory of plain-ort: the probe failed" in capsys.readouterr().err
