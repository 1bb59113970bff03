from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spade_deploy.model.config import generator_preset
from spade_deploy.training.data import (ResumableSampler, SegmentationDataset, check_samples, find_samples,
                                        raise_problems)
from spade_deploy.training.options import DataOptions

LABEL_NC = 8  # as the conftest datasets
CONFIG = generator_preset("custom", label_nc=LABEL_NC, crop_size=64, ngf=8, use_instance=True)


def _problems(root: Path) -> list[str]:
    return check_samples(find_samples(root, CONFIG), CONFIG)


def test_folder_layout_pairs_images_labels_instances(dataset: Path) -> None:
    samples = find_samples(dataset, CONFIG)
    assert [s.image.name for s in samples] == [f"sample{i}.png" for i in range(6)]
    assert all(s.label.stem == s.image.stem == s.instance.stem for s in samples)
    assert _problems(dataset) == []


def test_cityscapes_layout_pairs_by_stripped_suffixes(tmp_path: Path) -> None:
    config = generator_preset("cityscapes")
    for folder, name in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds"),
                         ("gtFine", "gtFine_instanceIds")):
        (tmp_path / folder / "train" / "aachen").mkdir(parents=True, exist_ok=True)
        mode = "RGB" if folder == "leftImg8bit" else "L"
        Image.new(mode, (16, 8)).save(tmp_path / folder / "train" / "aachen" / f"aachen_000000_000019_{name}.png")
    [sample] = find_samples(tmp_path, config)
    assert sample.label.name == "aachen_000000_000019_gtFine_labelIds.png"
    assert sample.instance.name == "aachen_000000_000019_gtFine_instanceIds.png"
    assert check_samples([sample], config) == []


def test_missing_partners_are_named(tmp_path: Path, write_dataset) -> None:
    root = write_dataset(tmp_path, count=3)
    (root / "labels" / "sample1.png").unlink()
    (root / "instances" / "sample2.png").unlink()
    Image.new("L", (48, 40)).save(root / "labels" / "stray.png")
    with pytest.raises(ValueError) as error:
        find_samples(root, CONFIG)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert "sample1.png: no label map" in message
    assert "stray.png: no image" in message
    assert "sample2.png: no instance map" in message


def test_bad_label_values_and_sizes_are_named(tmp_path: Path, write_dataset) -> None:
    root = write_dataset(tmp_path, count=3)
    Image.fromarray(np.full((40, 48), LABEL_NC, np.uint8)).save(root / "labels" / "sample0.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "labels" / "sample1.png")
    Image.fromarray(np.zeros((40, 40), np.uint16)).save(root / "instances" / "sample2.png")
    problems = _problems(root)
    assert len(problems) == 4  # sample1's instance map no longer fits its label map either
    assert "labels/sample0.png" in problems[0] and f"[0, {LABEL_NC - 1}]" in problems[0]
    assert "labels/sample1.png: label map is 40x40 (WxH) but its image sample1.png is 48x40" in problems[1]
    assert "instances/sample2.png: instance map is 40x40 (WxH) but its label map is 48x40" in problems[3]
    with pytest.raises(ValueError, match="4 problem"):
        raise_problems(root, problems)


def test_empty_dataset_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images .* images/\\*"):
        find_samples(tmp_path, CONFIG)


def test_preprocessing_shares_crop_and_flip_and_is_keyed(dataset: Path) -> None:
    data = SegmentationDataset(find_samples(dataset, CONFIG), CONFIG, DataOptions(str(dataset), load_size=72), seed=3)
    items = [data[epoch, 1] for epoch in range(6)]
    for item in items:
        assert item["image"].shape == (3, 64, 64) and item["label"].shape == item["instance"].shape == (64, 64)
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        # The red channel encodes the class (30 * label): image and label were cropped and flipped together.
        red = torch.round((item["image"][0] + 1) * 127.5)
        assert (red - item["label"] * 30).abs().max() <= 45  # bicubic ringing at class borders only
        assert (red - item["label"] * 30).abs().float().median() == 0
    assert len({tuple(item["label"][0].tolist()) for item in items}) > 1  # epochs draw other crops / flips
    again = data[2, 1]
    assert torch.equal(again["image"], items[2]["image"]) and torch.equal(again["label"], items[2]["label"])


def test_sampler_splits_ranks_and_resumes_mid_epoch(dataset: Path) -> None:
    data = SegmentationDataset(find_samples(dataset, CONFIG), CONFIG, DataOptions(str(dataset)), seed=0)
    ranks = [ResumableSampler(data, num_replicas=2, rank=rank, seed=5) for rank in (0, 1)]
    for sampler in ranks:
        sampler.start(epoch=4)
    orders = [list(sampler) for sampler in ranks]
    assert sorted(index for order in orders for _, index in order) == list(range(6))
    assert all(epoch == 4 for order in orders for epoch, _ in order)
    ranks[0].start(epoch=4, skip=2)
    assert list(ranks[0]) == orders[0][2:] and len(ranks[0]) == 1
