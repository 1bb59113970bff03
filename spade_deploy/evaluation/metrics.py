"""Segmentation scores and per-class colour statistics, accumulated over a dataset (numpy only).

Scores come from one confusion matrix per dataset (rows: target class, columns: predicted class), summed over
images, so every pixel weighs the same, as in the SPADE paper's mIoU and pixel accuracy.

mIoU convention: the mean of the IoUs of the classes that occur in the target or in the prediction (union > 0). A
class absent from both has no IoU (NaN here, null in JSON) and is left out of the mean instead of counting as 0 or 1.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _class_map(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_range(name: str, values: np.ndarray, num_classes: int) -> None:
    if values.size and (int(values.min()) < 0 or int(values.max()) >= num_classes):
        bad = np.unique(values[(values < 0) | (values >= num_classes)])
        raise ValueError(f"{name} must be class indices in [0, {num_classes - 1}], found {bad[:5].tolist()}")


def confusion_matrix(predicted: ArrayLike, target: ArrayLike, num_classes: int, *,
                     ignore_index: int | None = None) -> np.ndarray:
    """int64 `[num_classes, num_classes]`: entry `[t, p]` counts the pixels of target class t predicted as p.

    `predicted` and `target` are class maps of one shape (`[H, W]`, `[N, H, W]`, …); target pixels equal to
    `ignore_index` (a don't-care label) are not counted."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    predicted, target = _class_map("predicted", predicted), _class_map("target", target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted and target must have one shape, got {list(predicted.shape)} and "
                         f"{list(target.shape)}")
    if ignore_index is not None:
        keep = target != ignore_index
        predicted, target = predicted[keep], target[keep]
    _check_range("predicted", predicted, num_classes)
    _check_range("target", target, num_classes)
    pairs = target.ravel() * num_classes + predicted.ravel()
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _check_confusion(confusion: np.ndarray) -> np.ndarray:
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"a confusion matrix must be square [C, C], got shape {list(confusion.shape)}")
    return confusion


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """float64 `[C]`: true positives / (target + predicted - true positives) per class; NaN where a class occurs in
    neither the target nor the prediction."""
    confusion = _check_confusion(confusion)
    hits = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the target or the prediction (see the module docstring)."""
    iou = iou_per_class(confusion)
    if np.isnan(iou).all():
        raise ValueError("mIoU of an empty confusion matrix (no pixels counted) is undefined")
    return float(np.nanmean(iou))


def pixel_accuracy(confusion: np.ndarray) -> float:
    """The share of counted pixels whose predicted class is the target class."""
    confusion = _check_confusion(confusion)
    total = confusion.sum()
    if total == 0:
        raise ValueError("pixel accuracy of an empty confusion matrix (no pixels counted) is undefined")
    return float(np.trace(confusion) / total)


class ColourMoments:
    """Per-class RGB mean and standard deviation over the pixels of each class of the label maps, accumulated image
    by image: the generated and the real image of one label map can then be compared class by class."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.counts = np.zeros(num_classes, np.int64)  # pixels per class
        self.sums = np.zeros((num_classes, 3), np.float64)  # per class and channel
        self.squares = np.zeros((num_classes, 3), np.float64)

    def add(self, images: ArrayLike, labels: ArrayLike) -> None:
        """Count `images` (`[..., H, W, 3]` RGB) against their `labels` (`[..., H, W]` class indices)."""
        images, labels = np.asarray(images), _class_map("labels", labels)
        if images.shape != (*labels.shape, 3):
            raise ValueError(f"images must be the labels' shape plus 3 RGB channels, {[*labels.shape, 3]}, got "
                             f"{list(images.shape)}")
        _check_range("labels", labels, self.num_classes)
        index = labels.ravel()
        pixels = images.reshape(-1, 3).astype(np.float64)
        self.counts += np.bincount(index, minlength=self.num_classes)
        for channel in range(3):
            self.sums[:, channel] += np.bincount(index, pixels[:, channel], minlength=self.num_classes)
            self.squares[:, channel] += np.bincount(index, pixels[:, channel] ** 2, minlength=self.num_classes)

    def mean(self) -> np.ndarray:
        """float64 `[C, 3]`; NaN rows for classes without pixels."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None]

    def std(self) -> np.ndarray:
        """float64 `[C, 3]` population standard deviation; NaN rows for classes without pixels."""
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = self.squares / self.counts[:, None] - self.mean() ** 2
        return np.sqrt(np.maximum(variance, 0))  # rounding can leave a tiny negative variance for a flat class
