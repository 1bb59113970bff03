"""Synthetic label maps and random-weight models: the stand-ins for data and trained weights in demos and tests."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.tensors import instance_edges, to_semantic_input
from spade_deploy.model.synthetic import (every_class_map, random_generator, synthetic_batch, synthetic_instance_map,
                                          synthetic_label_map)


def connected_regions(labels: np.ndarray) -> int:
    """Number of 4-connected same-label regions (a breadth-first flood fill)."""
    seen = np.zeros(labels.shape, bool)
    height, width = labels.shape
    count = 0
    for start in zip(*np.nonzero(~seen)):
        if seen[start]:
            continue
        count += 1
        seen[start] = True
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and not seen[ny, nx] and labels[ny, nx] == labels[y, x]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return count


def test_label_map_is_deterministic_with_irregular_regions() -> None:
    first = synthetic_label_map(64, 96, num_regions=20, num_classes=30, seed=5)
    assert first.dtype == np.int64 and first.shape == (64, 96)
    assert np.array_equal(first, synthetic_label_map(64, 96, num_regions=20, num_classes=30, seed=5))
    assert not np.array_equal(first, synthetic_label_map(64, 96, num_regions=20, num_classes=30, seed=6))
    assert first.min() >= 0 and first.max() < 30
    # Neighbouring cells may share a class and warping may split one, but the count stays near the request.
    for seed in range(4):
        assert 8 <= connected_regions(synthetic_label_map(64, 64, num_regions=20, num_classes=150, seed=seed)) <= 40


def test_an_every_class_map_holds_every_class() -> None:
    """What the export's parity check runs first: every row of the per-class tables used, down to small maps."""
    for height, width, classes in ((32, 32, 184), (64, 64, 151), (256, 512, 36)):
        labels = every_class_map(height, width, classes, seed=height)
        assert labels.dtype == np.int64 and labels.shape == (height, width)
        assert np.array_equal(np.unique(labels), np.arange(classes))
    config = GeneratorConfig(label_nc=150, contain_dontcare_label=True, crop_size=64)
    labels, _ = synthetic_batch(config, 2, every_class=True)
    assert all(len(np.unique(item)) == config.num_label_channels for item in labels)  # don't-care included
    with pytest.raises(ValueError, match="a 8x8 map holds too few regions"):
        every_class_map(8, 8, 151)

def test_instance_map_has_an_edge_at_every_label_boundary() -> None:
    labels = synthetic_label_map(64, 64, num_regions=16, num_classes=8, seed=1)
    instances = synthetic_instance_map(labels, seed=1)
    label_edges = instance_edges(torch.from_numpy(labels)[None])
    edges = instance_edges(torch.from_numpy(instances.astype(np.int64))[None])
    assert bool((edges >= label_edges).all())
    assert float(edges.sum()) > float(label_edges.sum())  # and splits inside some regions


def test_random_generator_spreads_its_outputs() -> None:
    config = GeneratorConfig(label_nc=6, contain_dontcare_label=True, use_instance=True, ngf=8, crop_size=64,
                             spade_hidden=16, spectral=False)
    generator = random_generator(config, seed=0, calibration_batches=1)
    stats = generator.head_0.norm_0.param_free_norm
    assert not torch.allclose(stats.running_var, torch.ones_like(stats.running_var))
    labels, instances = synthetic_batch(config, 2, seed=7)
    with torch.inference_mode():
        output = generator(to_semantic_input(labels, instances, config))
    # The spread is over pixels, not only between colour channels (a per-channel bias alone would be flat).
    assert float(output.std(dim=(2, 3)).min()) > 0.1
    assert float((output.abs() > 0.99).float().mean()) < 0.05
