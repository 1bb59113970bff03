"""The FID Inception: the weight file's keys and shapes, its input preprocessing, batched float32 features, and a
clear error for every file that is not its weights (random weights in the file's layout stand in for the real
ones, which cannot be downloaded here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spade_deploy.evaluation.inception import FEATURES, INPUT_SIZE, FidInception, _average_pool, load_inception
from tests.evaluation.inception_weights import random_inception_state


def test_the_weight_files_layout() -> None:
    """torchvision's inception_v3 names without the auxiliary classifier, a 1008-way fc, TF's batch-norm epsilon."""
    model = FidInception()
    state = random_inception_state()
    assert len(state) == 472 and set(state) < set(model.state_dict())
    blocks = {key.split(".")[0] for key in state}
    assert blocks == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                      "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                      "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"}
    shapes = {key: list(value.shape) for key, value in state.items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == [32, 3, 3, 3]
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == [128, 128, 1, 7]
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == [384, 384, 3, 1]
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == [192, 2048, 1, 1]
    assert shapes["fc.weight"] == [1008, FEATURES] and shapes["fc.bias"] == [1008]
    assert {"running_mean", "running_var", "weight", "bias"} == {key.split(".")[-1] for key in state
                                                                 if key.startswith("Mixed_5b.branch1x1.bn.")}
    assert sum(parameter.numel() for parameter in model.parameters()) == 23_850_960
    assert all(module.eps == 0.001 for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d))
    assert not model.training


def test_the_tf_graphs_pools() -> None:
    """Border averages over the pixels inside the image only; the last block pools with a max, the one before
    with an average."""
    pooled = _average_pool(torch.ones(1, 1, 4, 4))
    assert torch.equal(pooled, torch.ones(1, 1, 4, 4))  # zero padding counted would give 4/9 in the corners
    model = FidInception()
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool


def test_input_is_resized_to_299_and_scaled_to_plus_minus_one(inception: FidInception) -> None:
    seen = []
    hook = inception.Conv2d_1a_3x3.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        rng = np.random.default_rng(0)
        native = rng.integers(0, 256, (1, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.uint8)
        inception.features(native)
        inception.features(rng.integers(0, 256, (2, 40, 56, 3)).astype(np.uint8))
    finally:
        hook.remove()
    expected = torch.from_numpy(native).permute(0, 3, 1, 2).double() / 127.5 - 1
    torch.testing.assert_close(seen[0].double(), expected, atol=1e-6, rtol=0)  # 299 px: no resampling
    assert seen[0].dtype == torch.float32
    assert list(seen[1].shape) == [2, 3, INPUT_SIZE, INPUT_SIZE]
    assert -1 <= float(seen[1].min()) and float(seen[1].max()) <= 1


def test_features_are_batched_deterministic_and_tell_images_apart(inception: FidInception) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 48, 64, 3)).astype(np.uint8)
    images[2] = 90  # a flat image
    features = inception.features(images, batch_size=2)
    assert features.shape == (3, FEATURES) and features.dtype == np.float64 and np.isfinite(features).all()
    np.testing.assert_allclose(inception.features(images[1]), features[1:2], rtol=1e-5, atol=1e-6)
    spread = np.abs(features[0] - features[2]).mean()
    assert spread > 1e-2 and spread > 10 * np.abs(features[0] - inception.features(images[0])).max()
    assert inception.features(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, FEATURES)
    with pytest.raises(ValueError, match="images must be a uint8 RGB image, got dtype float32"):
        inception.features(np.zeros((1, 8, 8, 3), np.float32))


def test_extra_keys_are_ignored(tmp_path: Path) -> None:
    """A file saved from a module carries num_batches_tracked; one from another port, other heads."""
    state = {**FidInception().state_dict(), "AuxLogits.fc.weight": torch.zeros(1000, 768)}
    torch.save(state, tmp_path / "full.pth")
    assert isinstance(load_inception(tmp_path / "full.pth"), FidInception)


def _missing_keys(path: Path) -> None:
    state = random_inception_state()
    for key in ("Mixed_7c.branch_pool.conv.weight", "fc.bias"):
        del state[key]
    torch.save(state, path)


def _wrong_shape(path: Path) -> None:
    torch.save({**random_inception_state(), "fc.weight": torch.zeros(1000, FEATURES)}, path)


@pytest.mark.parametrize("write, reason", [
    (lambda path: None, ("Inception weights: checkpoint not found: .*weights.pth; FID needs pytorch-fid's "
                         "pt_inception-2015-12-05-6726825d.pth")),
    (lambda path: path.write_bytes(b"not a pickle"), "Inception weights: .*weights.pth is not a readable PyTorch"),
    (lambda path: torch.save(torch.zeros(3), path), "holds a Tensor, not a checkpoint dict"),
    (_missing_keys, (r"is not the FID Inception's state dict \(2 keys missing, e.g. "
                     r"\['Mixed_7c.branch_pool.conv.weight', 'fc.bias'\]; 0 of wrong shape")),
    (_wrong_shape, r"1 of wrong shape, e.g. \['fc.weight \[1000, 2048\] \(expected \[1008, 2048\]\)'\]"),
], ids=["missing", "not-a-pickle", "not-a-dict", "missing-keys", "wrong-shape"])
def test_bad_weight_files(tmp_path: Path, write, reason: str) -> None:
    path = tmp_path / "weights.pth"
    write(path)
    with pytest.raises(ValueError, match=reason):
        load_inception(path)
