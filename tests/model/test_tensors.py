"""The numpy <-> tensor conversions refuse what they cannot convert, with a message naming the argument."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.tensors import rgb_to_tensor, tensor_to_rgb, to_semantic_input

CONFIG = GeneratorConfig(label_nc=4, ngf=8, z_dim=16, crop_size=64, spade_hidden=16)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 5, 3), (5, 0, 3), (0, 4, 4, 3)], ids=["0x0", "0xW", "Hx0", "empty"])
def test_rgb_to_tensor_refuses_empty_images(shape: tuple[int, ...]) -> None:
    shown = re.escape(str(list(shape if len(shape) == 4 else (1, *shape))))  # as a batch
    with pytest.raises(ValueError, match=rf"style must have every dimension >= 1.*got shape {shown}"):
        rgb_to_tensor(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("images, message", [
    (torch.zeros(3, 4, 4), r"images must be a float tensor \[N, 3, H, W\].*shape \[3, 4, 4\]"),
    (torch.zeros(1, 4, 4, 3), r"images must be a float tensor \[N, 3, H, W\].*shape \[1, 4, 4, 3\]"),
    (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), r"images must be a float tensor .*dtype torch.uint8"),
    (np.zeros((1, 3, 4, 4), np.float32), r"images must be a torch.Tensor .*got ndarray"),
], ids=["3-D", "channels-last", "uint8", "numpy"])
def test_tensor_to_rgb_refuses_what_is_not_a_generator_output(images: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tensor_to_rgb(images)


def test_to_semantic_input_refuses_an_empty_batch() -> None:
    with pytest.raises(ValueError, match=r"labels: an empty batch \(0 label maps\); pass at least one"):
        to_semantic_input(np.zeros((0, 64, 64), np.int64), None, CONFIG)


def test_to_semantic_input_reports_uint64_labels_as_they_are() -> None:
    """Not as the negative int64 the values would wrap to."""
    labels = np.zeros((64, 64), np.uint64)
    labels[0, :3] = 2 ** 63 + 5
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\].*found 3 values outside, e\.g\. "
                                         r"\[9223372036854775813\]"):
        to_semantic_input(labels, None, CONFIG)
    labels[0, :3] = 3  # in range: the same one-hot as int64 labels
    assert torch.equal(to_semantic_input(labels, None, CONFIG),
                       to_semantic_input(labels.astype(np.int64), None, CONFIG))


def test_the_generator_input_is_built_on_the_device_asked_for() -> None:
    """The indices are checked on the CPU and the one-hot map built where the generator runs (the training loop's
    GPUs): here the meta device, which stands for one without needing it."""
    config = GeneratorConfig(label_nc=4, use_instance=True, ngf=8, crop_size=64)
    labels = torch.zeros(2, 64, 64, dtype=torch.int64)  # as a DataLoader gives them
    semantic = to_semantic_input(labels, torch.zeros(2, 64, 64, dtype=torch.int64), config, device="meta")
    assert semantic.device.type == "meta" and semantic.shape == (2, config.semantic_nc, 64, 64)
    assert to_semantic_input(labels, labels, config).device.type == "cpu"
