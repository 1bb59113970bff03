"""The segmentation network that scores generated images: a small fully convolutional net trained on the real images
of a folder dataset, exported to ONNX as uint8 RGB `[N, H, W, 3]` -> int64 class map `[N, H, W]`.

The SPADE paper scores a generator with an off-the-shelf segmenter of each dataset (DeepLab, UperNet, DRN); the
procedural landscapes have none, so this one is trained here. It is a U-Net-like encoder-decoder: three stride-2
stages with dilated convolutions at 1/8 resolution for context (sky and its reflection in a lake look alike up close;
only the surroundings tell them apart), skip connections back to full resolution for the class boundaries.
Upsampling goes to the skip's size, so any H x W works, odd ones included.
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from spade_deploy.data.landscapes import CLASSES
from spade_deploy.export.onnx import OPSET
from spade_deploy.export.runtime import make_session
from spade_deploy.files import atomic_path
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import as_rgb_batch, read_rgb
from spade_deploy.model.labels import read_label_png
from spade_deploy.training.data import check_samples, find_samples, raise_problems

# Tensor names of the exported segmenter.
IMAGE = "image"  # uint8 RGB [N, H, W, 3], any H and W
CLASS_MAP = "class_map"  # int64 class indices [N, H, W]
CONFIG_KEY = "spade_deploy.segmenter_config"  # ONNX metadata: the SegmenterConfig as JSON

LANDSCAPE_CLASSES: tuple[str, ...] = tuple(cls.name for cls in CLASSES)


@dataclass(frozen=True)
class SegmenterConfig:
    classes: tuple[str, ...] = LANDSCAPE_CLASSES  # class names; index = class index of the label maps
    width: int = 16  # channels at full resolution; 2x, 4x and 4x this at 1/2, 1/4 and 1/8

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"a segmenter needs at least 2 classes, got {list(self.classes)}")
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SegmenterConfig:
        values = json.loads(text)
        return cls(classes=tuple(values["classes"]), width=int(values["width"]))


def _block(channels_in: int, channels_out: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU; padding keeps the size (divided by the stride, rounded up)."""
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=dilation, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))


class Segmenter(nn.Module):
    """uint8 RGB `[N, H, W, 3]` -> class logits `[N, classes, H, W]`."""

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.down_full = nn.Sequential(_block(3, w), _block(w, w))
        self.down_half = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))
        self.down_quarter = nn.Sequential(_block(2 * w, 4 * w, stride=2), _block(4 * w, 4 * w))
        self.context = nn.Sequential(_block(4 * w, 4 * w, stride=2), _block(4 * w, 4 * w, dilation=2),
                                     _block(4 * w, 4 * w, dilation=4))
        self.up_quarter = _block(8 * w, 2 * w)
        self.up_half = _block(4 * w, 2 * w)
        self.up_full = _block(3 * w, w)
        self.head = nn.Conv2d(w, config.num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, H, W] in [-1, 1]
        full = self.down_full(x)  # [N, w, H, W]
        half = self.down_half(full)  # [N, 2w, H/2, W/2]
        quarter = self.down_quarter(half)  # [N, 4w, H/4, W/4]
        x = self.context(quarter)  # [N, 4w, H/8, W/8]
        x = self.up_quarter(torch.cat([_upsample(x, quarter), quarter], 1))
        x = self.up_half(torch.cat([_upsample(x, half), half], 1))
        x = self.up_full(torch.cat([_upsample(x, full), full], 1))
        return self.head(x)


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class _ClassMap(nn.Module):
    """The exported graph: the segmenter with the argmax, so a runtime gets class indices, not logits."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.segmenter(image).argmax(1)


@dataclass
class TrainedSegmenter:
    model: Segmenter  # in eval mode
    losses: list[float] = field(default_factory=list)  # training cross entropy, one per step
    seconds: float = 0.0  # wall time of the optimisation steps (without reading the dataset)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count fixed to `threads` for the block (None: left as it is). CPU kernels split
    work by thread, and the split can change the float summation order, so one seed gives one model only at one
    thread count."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def read_folder_dataset(dataroot: str | Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of a "custom"-layout folder (DATAROOT/images/*, DATAROOT/labels/*.png,
    same stems, label value = class index), sorted by name, as uint8 images `[N, H, W, 3]` and int64 labels
    `[N, H, W]`. Pairs must share one size, as they are trained on in batches."""
    # Label PNGs of the "custom" preset hold class indices as they are; the layout and the range checks are the
    # training data's, with this many classes.
    layout = GeneratorConfig(preset="custom", label_nc=num_classes)
    samples = find_samples(dataroot, layout)
    raise_problems(dataroot, check_samples(samples, layout))
    images = [read_rgb(sample.image) for sample in samples]
    labels = [read_label_png(sample.label, layout) for sample in samples]
    for sample, label in zip(samples, labels):
        if label.shape != labels[0].shape:
            raise ValueError(f"{sample.label} is {label.shape[1]}x{label.shape[0]} (WxH) but {samples[0].label} is "
                             f"{labels[0].shape[1]}x{labels[0].shape[0]}; the segmenter trains on one size")
    return np.stack(images), np.stack(labels)


def train_segmenter(dataroot: str | Path, *, steps: int, batch_size: int, seed: int = 0,
                    config: SegmenterConfig = SegmenterConfig(), learning_rate: float = 3e-3, threads: int = 1,
                    progress: bool = True) -> TrainedSegmenter:
    """Train a segmenter with cross entropy on the real images of a folder dataset (see `read_folder_dataset`), with
    random horizontal flips; AdamW with a one-cycle learning rate. The same arguments give the same model on one
    machine: `seed` sets the initial weights, the batches and the flips, and `threads` is fixed."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    images, labels = read_folder_dataset(dataroot, config.num_classes)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = Segmenter(config)
        sampler = torch.Generator().manual_seed(seed)  # batches and flips, apart from the weights' stream
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
        result = TrainedSegmenter(model)
        start = time.perf_counter()
        model.train()
        bar = tqdm(range(steps), desc="segmenter", unit="step", disable=not progress)
        for _ in bar:
            index = torch.randint(len(images), (batch_size,), generator=sampler)
            # Horizontal flips only: a landscape upside down (sky below) is not one the segmenter will see.
            flip = torch.rand(batch_size, generator=sampler) < 0.5
            image = torch.where(flip[:, None, None, None], images[index].flip(2), images[index])
            label = torch.where(flip[:, None, None], labels[index].flip(2), labels[index])
            loss = F.cross_entropy(model(image), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            result.losses.append(loss.item())
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", refresh=False)
        result.seconds = time.perf_counter() - start
    model.eval()
    return result


def export_segmenter(model: Segmenter, path: str | Path) -> Path:
    """Write `model` as ONNX to `path` (atomically): input `IMAGE` uint8 `[N, H, W, 3]`, output `CLASS_MAP` int64
    `[N, H, W]` (argmax in the graph), N, H and W dynamic; its config in the metadata."""
    path = Path(path)
    graph = _ClassMap(model).eval()
    example = torch.zeros(2, 40, 56, 3, dtype=torch.uint8)
    axes = {IMAGE: {0: "N", 1: "H", 2: "W"}, CLASS_MAP: {0: "N", 1: "H", 2: "W"}}
    with atomic_path(path) as temporary:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(graph, (example,), str(temporary), input_names=[IMAGE], output_names=[CLASS_MAP],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        exported = onnx.load(str(temporary))
        exported.metadata_props.add(key=CONFIG_KEY, value=model.config.to_json())
        onnx.checker.check_model(exported, full_check=True)
        onnx.save(exported, str(temporary))
    return path


class OnnxSegmenter:
    """An exported segmenter in ONNX Runtime: uint8 RGB `[N, H, W, 3]` (or `[H, W, 3]`) -> int64 `[N, H, W]`."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no such segmenter ONNX file: {path}")
        try:
            self.session = make_session(path, threads=threads)
        except Exception as error:  # onnxruntime raises its own Fail / InvalidProtobuf for a file that is no model
            raise ValueError(f"{path} is not a readable ONNX model: {error}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise ValueError(f"{path} was not written by export_segmenter (no {CONFIG_KEY} metadata); train one "
                             f"with `spade-deploy train-segmenter`")
        self.config = SegmenterConfig.from_json(metadata[CONFIG_KEY])
        self.path = path

    def __call__(self, images: np.ndarray) -> np.ndarray:
        (class_map,) = self.session.run([CLASS_MAP], {IMAGE: as_rgb_batch(images, "images")})
        return class_map


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())

