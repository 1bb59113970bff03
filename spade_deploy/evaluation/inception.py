"""The Inception-v3 of FID and KID: TensorFlow's 2015-12-05 ImageNet graph as ported to PyTorch by pytorch-fid, whose
weight file `pt_inception-2015-12-05-6726825d.pth` every published FID is computed with; uint8 RGB images in, the
2048-d pool3 features (after the global average pool) out.

Built here because pytorch-fid, torch-fidelity, clean-fid and torchmetrics all import torchvision, which does not
install beside this project's torch.

The parameter names are the weight file's (torchvision's `inception_v3` naming, no auxiliary classifier). The graph
differs from torchvision's Inception-v3 where the TF graph does, and so must this port, or the weights compute
other features: the average pools of the A, C and E blocks divide by the window's pixels inside the image only
(`count_include_pad=False`), and the pool branch of the last block (Mixed_7c) is a max pool. Images are resized to
299x299 (bilinear) and scaled from [0, 1] to [-1, 1], as pytorch-fid feeds them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

from spade_deploy.evaluation.fid import WEIGHTS_FILE
from spade_deploy.model.checkpoint import CheckpointError, read_checkpoint
from spade_deploy.model.images import as_rgb_batch

INPUT_SIZE = 299  # the side the TF graph was trained at; every image is resized to it
FEATURES = 2048  # pool3 width
CLASSES = 1008  # the TF graph's ImageNet classifier (1000 classes and 8 unused): in the file, unused by FID
BATCH_SIZE = 16  # images per forward in `features`: about 1 GB of activations at 299x299


class _Conv(nn.Module):
    """Convolution without bias, batch norm with TF's epsilon, ReLU: every convolution of the network."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int | tuple[int, int], *, stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(channels_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _wide(channels_in: int, channels_out: int, length: int) -> _Conv:
    """A 1 x `length` convolution that keeps the size."""
    return _Conv(channels_in, channels_out, (1, length), padding=(0, length // 2))


def _tall(channels_in: int, channels_out: int, length: int) -> _Conv:
    """A `length` x 1 convolution that keeps the size."""
    return _Conv(channels_in, channels_out, (length, 1), padding=(length // 2, 0))


def _average_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average that keeps the size; at the border TF averages the pixels inside the image only."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    """35x35 block (Mixed_5b..5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1 -> 224 + `pool_channels` channels."""

    def __init__(self, channels_in: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(channels_in, 64, 1)
        self.branch5x5_1 = _Conv(channels_in, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(channels_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(channels_in, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_average_pool(x))], 1)


class _ReductionB(nn.Module):
    """35x35 -> 17x17 (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2 -> 480 + `channels_in` channels."""

    def __init__(self, channels_in: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(channels_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(channels_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):
    """17x17 block (Mixed_6b..6e) with 7x7 convolutions factored into 1x7 and 7x1 ones, `width` channels inside:
    1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool-1x1 -> 768 channels."""

    def __init__(self, channels_in: int, width: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(channels_in, 192, 1)
        self.branch7x7_1 = _Conv(channels_in, width, 1)
        self.branch7x7_2 = _wide(width, width, 7)
        self.branch7x7_3 = _tall(width, 192, 7)
        self.branch7x7dbl_1 = _Conv(channels_in, width, 1)
        self.branch7x7dbl_2 = _tall(width, width, 7)
        self.branch7x7dbl_3 = _wide(width, width, 7)
        self.branch7x7dbl_4 = _tall(width, width, 7)
        self.branch7x7dbl_5 = _wide(width, 192, 7)
        self.branch_pool = _Conv(channels_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_average_pool(x))], 1)


class _ReductionD(nn.Module):
    """17x17 -> 8x8 (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2 -> 512 + `channels_in` channels."""

    def __init__(self, channels_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(channels_in, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(channels_in, 192, 1)
        self.branch7x7x3_2 = _wide(192, 192, 7)
        self.branch7x7x3_3 = _tall(192, 192, 7)
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tower = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            tower = layer(tower)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), tower, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    """8x8 block (Mixed_7b, 7c) whose 3x3 convolutions end in parallel 1x3 and 3x1 ones, concatenated:
    1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 -> 2048 channels. The pool is an average in Mixed_7b and
    a max in Mixed_7c, as in the TF graph."""

    def __init__(self, channels_in: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(channels_in, 320, 1)
        self.branch3x3_1 = _Conv(channels_in, 384, 1)
        self.branch3x3_2a = _wide(384, 384, 3)
        self.branch3x3_2b = _tall(384, 384, 3)
        self.branch3x3dbl_1 = _Conv(channels_in, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _wide(384, 384, 3)
        self.branch3x3dbl_3b = _tall(384, 384, 3)
        self.branch_pool = _Conv(channels_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _average_pool(x)
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
                          self.branch_pool(pooled)], 1)


class FidInception(nn.Module):
    """uint8 RGB `[N, H, W, 3]` (any H, W) -> float32 pool3 features `[N, 2048]`; see the module docstring.

    Attribute names are the weight file's keys; build it with `load_inception`."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _MixedA(192, pool_channels=32)
        self.Mixed_5c = _MixedA(256, pool_channels=64)
        self.Mixed_5d = _MixedA(288, pool_channels=64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _MixedC(768, width=128)
        self.Mixed_6c = _MixedC(768, width=160)
        self.Mixed_6d = _MixedC(768, width=160)
        self.Mixed_6e = _MixedC(768, width=192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(FEATURES, max_pool=True)
        self.fc = nn.Linear(FEATURES, CLASSES)  # in the weight file; the features are taken before it
        self.eval()  # never trained here: batch norm always runs on the file's statistics

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W] in [0, 1]
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # the TF graph's input range
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = F.max_pool2d(x, 3, stride=2)  # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [N, 192, 71, 71]
        x = F.max_pool2d(x, 3, stride=2)  # [N, 192, 35, 35]
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,  # -> [N, 768, 17, 17]
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a,  # -> [N, 1280, 8, 8]
                      self.Mixed_7b, self.Mixed_7c):  # -> [N, 2048, 8, 8]
            x = block(x)
        return x.mean(dim=(2, 3))  # [N, 2048]

    def features(self, images: ArrayLike, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """float64 `[N, 2048]` pool3 features of uint8 RGB `[N, H, W, 3]` (or `[H, W, 3]`), computed in float32
        on this module's device, `batch_size` images per forward."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        batch = as_rgb_batch(images, "images")
        device = self.fc.weight.device
        parts = []
        # float32 even inside a caller's autocast: FID compares feature statistics to more digits than fp16 has.
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            for start in range(0, len(batch), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(batch[start:start + batch_size])).to(device)
                parts.append(self(chunk).double().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, FEATURES))


def _expected_state() -> dict[str, torch.Tensor]:
    """The weight file's tensors, by key: every parameter and batch-norm statistic. `num_batches_tracked` is left
    out: PyTorch only counts training steps with it, and a converted file need not have it."""
    return {key: value for key, value in FidInception().state_dict().items()
            if not key.endswith("num_batches_tracked")}


def load_inception(path: str | Path, *, device: str | torch.device = "cpu") -> FidInception:
    """The FID Inception with the weights of `path` (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, or any
    state dict with its keys and shapes; other keys are ignored), in eval mode on `device`."""
    path = Path(path)
    hint = (f"FID needs pytorch-fid's {WEIGHTS_FILE} (the asset of its GitHub release 'fid_weights'); download it on "
            f"a machine with internet access and pass its path")
    try:
        state = read_checkpoint(path)
    except CheckpointError as error:
        raise ValueError(f"Inception weights: {error}; {hint}") from None
    expected = _expected_state()
    missing = [key for key in expected if key not in state]
    mismatched = [f"{key} {list(getattr(state[key], 'shape', []))} (expected {list(value.shape)})"
                  for key, value in expected.items()
                  if key in state and (not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape)]
    if missing or mismatched:
        raise ValueError(f"{path} is not the FID Inception's state dict ({len(missing)} keys missing, e.g. "
                         f"{missing[:4]}; {len(mismatched)} of wrong shape, e.g. {mismatched[:4]}); {hint}")
    model = FidInception()
    model.load_state_dict({key: state[key] for key in expected})
    return model.to(device)
