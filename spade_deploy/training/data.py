"""Training data: the dataset layouts, up-front validation, the official preprocessing and a resumable sampler.

A sample is addressed by `(epoch, index)`: the epoch seeds its random crop and flip, so every batch is a pure function
of the run's seed and position, whatever the number of DataLoader workers. That is what makes `--resume` exact.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import read_rgb
from spade_deploy.model.labels import raw_to_labels, read_label_png, read_png
from spade_deploy.model.tensors import rgb_to_tensor
from spade_deploy.training.options import DataOptions

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_LISTED = 10  # problems named in one error message


@dataclass(frozen=True)
class Layout:
    """Where a dataset keeps its files (globs under DATAROOT) and the stem suffixes that pair them up."""
    images: str  # photos (.jpg / .jpeg / .png)
    labels: str  # label PNGs in the preset's raw encoding
    instances: str | None  # instance-id PNGs; None: the dataset has none
    image_suffix: str = ""  # removed from a stem to get the key shared by image, label and instance
    label_suffix: str = ""
    instance_suffix: str = ""


LAYOUTS: dict[str, Layout] = {
    "custom": Layout("images/*", "labels/*.png", "instances/*.png"),
    "ade20k": Layout("images/training/*", "annotations/training/*.png", None),
    "coco": Layout("train_img/*", "train_label/*.png", "train_inst/*.png"),
    "cityscapes": Layout("leftImg8bit/train/*/*_leftImg8bit.png", "gtFine/train/*/*_gtFine_labelIds.png",
                         "gtFine/train/*/*_gtFine_instanceIds.png", image_suffix="_leftImg8bit",
                         label_suffix="_gtFine_labelIds", instance_suffix="_gtFine_instanceIds"),
}


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path
    instance: Path | None  # only when the generator uses instance edges


def find_samples(dataroot: str | Path, config: GeneratorConfig) -> list[Sample]:
    """The (image, label, instance) triples of a dataset in its preset's layout, sorted by key.

    Raises `ValueError` naming the files without a partner."""
    root = Path(dataroot)
    layout = layout_of(config)
    if not root.is_dir():
        raise ValueError(f"--dataroot {root} is not a directory")
    images = _index(root, layout.images, layout.image_suffix, IMAGE_EXTENSIONS)
    labels = _index(root, layout.labels, layout.label_suffix, (".png",))
    if not images:
        raise ValueError(f"no images (.jpg/.jpeg/.png) at {root / layout.images}; the {config.preset!r} layout is "
                         f"{layout.images} with labels at {layout.labels}")
    problems = [f"{images[key]}: no label map {layout.labels} with the same name" for key in images
                if key not in labels]
    problems += [f"{labels[key]}: no image {layout.images} with the same name" for key in labels
                 if key not in images]
    instances: dict[str, Path] = {}
    if config.use_instance:
        instances = _index(root, layout.instances, layout.instance_suffix, (".png",))
        problems += [f"{images[key]}: no instance map {layout.instances} with the same name" for key in images
                     if key not in instances]
    raise_problems(root, problems)
    return [Sample(images[key], labels[key], instances.get(key)) for key in sorted(images)]


def layout_of(config: GeneratorConfig) -> Layout:
    """The dataset layout of `config`'s preset; `ValueError` where the config uses instance maps that the layout has
    none of."""
    layout = LAYOUTS[config.preset]
    if config.use_instance and layout.instances is None:
        raise ValueError(f"the {config.preset!r} dataset layout has no instance maps, which a model with instance "
                         f"edges (trained with --use-instance) needs; the 'custom' layout has them "
                         f"(DATAROOT/instances/)")
    return layout


def _index(root: Path, pattern: str, suffix: str, extensions: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(root.glob(pattern)):
        if path.suffix.lower() not in extensions:
            continue
        key = path.stem.removesuffix(suffix)
        if key in files:
            raise ValueError(f"{path} and {files[key]} share the name {key!r}; keep one of them")
        files[key] = path
    return files


def check_samples(samples: list[Sample], config: GeneratorConfig, workers: int = 8) -> list[str]:
    """Problems of the samples as `file: what is wrong` (label values out of range, mismatched sizes)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PNG decoding releases the GIL
        return [problem for problems in pool.map(lambda s: _check_sample(s, config), samples) for problem in problems]


def _check_sample(sample: Sample, config: GeneratorConfig) -> list[str]:
    try:
        with Image.open(sample.image) as image:
            width, height = image.size
        labels = read_label_png(sample.label, config)  # raises on values >= the label channels
        instances = read_png(sample.instance) if sample.instance else None
    except (OSError, ValueError) as error:  # the readers' messages name the file
        return [str(error)]
    problems = []
    if labels.shape != (height, width):
        problems.append(f"{sample.label}: label map is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image "
                        f"{sample.image.name} is {width}x{height}")
    if instances is not None and instances.shape != labels.shape:
        problems.append(f"{sample.instance}: instance map is {instances.shape[1]}x{instances.shape[0]} (WxH) but its "
                        f"label map is {labels.shape[1]}x{labels.shape[0]}")
    return problems


def raise_problems(dataroot: str | Path, problems: list[str]) -> None:
    """A `ValueError` listing the first problems of a dataset (nothing if there are none)."""
    if problems:
        more = f"\n  … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ValueError(f"dataset {dataroot} has {len(problems)} problem(s):\n  "
                         + "\n  ".join(problems[:MAX_LISTED]) + more)


class SegmentationDataset(Dataset):
    """`(epoch, index)` -> `{"image": [3, H, W] in [-1, 1], "label": [H, W] int64, "instance": [H, W] int64}`."""

    def __init__(self, samples: list[Sample], config: GeneratorConfig, options: DataOptions, seed: int) -> None:
        self.samples = samples
        self.config = config
        self.options = options
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        sample = self.samples[index]
        image = Image.fromarray(read_rgb(sample.image))
        # Same crop and flip for image, label and instance map, drawn from the sample's own stream.
        rng = np.random.default_rng((self.seed, epoch, index))
        crop, flip = self._random_params(rng)
        image = self._transform(image, crop, flip, Image.Resampling.BICUBIC)
        item = {"image": rgb_to_tensor(np.array(image))[0]}  # a writable copy: torch.from_numpy warns otherwise
        raw = self._transform(_int_image(read_png(sample.label)), crop, flip, Image.Resampling.NEAREST)
        item["label"] = torch.from_numpy(raw_to_labels(np.asarray(raw), self.config))
        if sample.instance is not None:
            instance = self._transform(_int_image(read_png(sample.instance)), crop, flip, Image.Resampling.NEAREST)
            item["instance"] = torch.from_numpy(np.asarray(instance).astype(np.int64))
        return item

    def _random_params(self, rng: np.random.Generator) -> tuple[tuple[int, int], bool]:
        """Crop corner (x, y) in the resized image and the flip, as the official get_params draws them."""
        slack = self.options.load_size - self.config.crop_size if self.options.preprocess == "resize_and_crop" else 0
        x, y = (int(v) for v in rng.integers(0, slack + 1, size=2))
        flip = bool(rng.random() > 0.5) and self.options.flip
        return (x, y), flip

    def _transform(self, image: Image.Image, crop: tuple[int, int], flip: bool,
                   resample: Image.Resampling) -> Image.Image:
        height, width = self.config.image_size
        if self.options.preprocess == "resize_and_crop":
            size = self.options.load_size
            x, y = crop
            image = image.resize((size, size), resample).crop((x, y, x + width, y + height))
        else:  # "fixed": straight to the output size
            image = image.resize((width, height), resample)
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def _int_image(values: np.ndarray) -> Image.Image:
    """An integer map as a 32-bit PIL image, so nearest resizing keeps every id (uint16 and int32 included)."""
    return Image.fromarray(values.astype(np.int32))


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` that yields `(epoch, index)` keys and can begin an epoch part-way through (resume)."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        """Next iteration: epoch `epoch`'s order (same on every rank), leaving out this rank's first `skip` keys."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip
