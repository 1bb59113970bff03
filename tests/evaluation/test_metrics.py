"""Confusion matrix, IoU, mIoU, pixel accuracy and colour statistics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from spade_deploy.evaluation.metrics import ColourMoments, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

TARGET = np.array([[0, 0, 1], [1, 2, 2]])
PREDICTED = np.array([[0, 1, 1], [1, 2, 0]])


def test_confusion_rows_are_targets_and_columns_predictions() -> None:
    confusion = confusion_matrix(PREDICTED, TARGET, 4)
    np.testing.assert_array_equal(confusion, [[1, 1, 0, 0],
                                              [0, 2, 0, 0],
                                              [1, 0, 1, 0],
                                              [0, 0, 0, 0]])
    assert confusion.dtype == np.int64


def test_iou_miou_and_accuracy_by_hand() -> None:
    confusion = confusion_matrix(PREDICTED, TARGET, 4)
    iou = iou_per_class(confusion)
    # class 0: 1 hit / (2 target + 2 predicted - 1); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])  # in neither map: no IoU, and not part of the mean
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(confusion) == pytest.approx(4 / 6)


def test_a_class_only_predicted_counts_as_zero() -> None:
    confusion = confusion_matrix([0, 0, 0, 1], [0, 0, 0, 0], 3)
    np.testing.assert_allclose(iou_per_class(confusion)[:2], [3 / 4, 0.0])
    assert mean_iou(confusion) == pytest.approx((3 / 4 + 0) / 2)
    assert pixel_accuracy(confusion) == pytest.approx(3 / 4)


def test_perfect_prediction_and_summing_over_images() -> None:
    total = confusion_matrix(TARGET, TARGET, 3) + confusion_matrix(PREDICTED, TARGET, 3)
    np.testing.assert_array_equal(total, confusion_matrix(np.stack([TARGET, PREDICTED]), np.stack([TARGET, TARGET]),
                                                          3))
    assert mean_iou(confusion_matrix(TARGET, TARGET, 3)) == 1.0
    assert pixel_accuracy(total) == pytest.approx(10 / 12)


def test_ignore_index_drops_target_pixels() -> None:
    target = np.array([0, 1, 255, 255])
    confusion = confusion_matrix([0, 0, 1, 7], target, 2, ignore_index=255)  # predictions there are not checked
    np.testing.assert_array_equal(confusion, [[1, 0], [1, 0]])


@pytest.mark.parametrize("predicted, target, message", [
    ([0, 1], [0, 1, 1], "one shape"),
    ([0, 3], [0, 1], r"predicted must be class indices in \[0, 2\], found \[3\]"),
    ([0, 1], [-1, 1], r"target must be class indices in \[0, 2\], found \[-1\]"),
    ([0.0, 1.0], [0, 1], "predicted must hold integer class indices, got dtype float64"),
])
def test_bad_class_maps(predicted: list, target: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(predicted, target, 3)


def test_empty_confusion_has_no_scores() -> None:
    empty = np.zeros((3, 3), np.int64)
    with pytest.raises(ValueError, match="no pixels"):
        mean_iou(empty)
    with pytest.raises(ValueError, match="no pixels"):
        pixel_accuracy(empty)
    with pytest.raises(ValueError, match="square"):
        iou_per_class(np.zeros((2, 3)))


def test_colour_moments_by_hand() -> None:
    labels = np.array([[0, 0], [1, 1]])
    image = np.array([[[10, 20, 30], [30, 20, 10]],
                      [[0, 0, 0], [0, 0, 0]]], np.uint8)
    moments = ColourMoments(3)
    moments.add(image, labels)
    np.testing.assert_array_equal(moments.counts, [2, 2, 0])
    np.testing.assert_allclose(moments.mean()[:2], [[20, 20, 20], [0, 0, 0]])
    np.testing.assert_allclose(moments.std()[:2], [[10, 0, 10], [0, 0, 0]])
    assert np.isnan(moments.mean()[2]).all() and np.isnan(moments.std()[2]).all()  # no pixels of class 2


def test_colour_moments_accumulate_like_one_batch() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 6, 3)).astype(np.uint8)
    labels = rng.integers(0, 4, (3, 8, 6))
    batch, one_by_one = ColourMoments(4), ColourMoments(4)
    batch.add(images, labels)
    for image, label in zip(images, labels):
        one_by_one.add(image, label)
    np.testing.assert_allclose(one_by_one.mean(), batch.mean())
    np.testing.assert_allclose(one_by_one.std(), batch.std())
    pixels = images[labels == 2].astype(np.float64)  # [P, 3]
    np.testing.assert_allclose(batch.mean()[2], pixels.mean(axis=0))
    np.testing.assert_allclose(batch.std()[2], pixels.std(axis=0))


def test_colour_moments_bad_input() -> None:
    moments = ColourMoments(2)
    with pytest.raises(ValueError, match=r"labels' shape plus 3 RGB channels, \[2, 2, 3\], got \[2, 3, 3\]"):
        moments.add(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 1\], found \[2\]"):
        moments.add(np.zeros((1, 1, 3), np.uint8), np.full((1, 1), 2))
