"""The segmenter: training lowers the loss, is deterministic for a seed, and its ONNX export (uint8 RGB of any size
in, int64 class map out) gives PyTorch's argmax in ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from spade_deploy.data.landscapes import write_dataset
from spade_deploy.evaluation.segmenter import (
    CLASS_MAP,
    IMAGE,
    LANDSCAPE_CLASSES,
    OnnxSegmenter,
    Segmenter,
    SegmenterConfig,
    TrainedSegmenter,
    export_segmenter,
    parameter_count,
    read_folder_dataset,
    train_segmenter,
)
from spade_deploy.model.images import write_rgb

TINY = SegmenterConfig(width=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("segmenter") / "landscapes"
    write_dataset(root, count=6, size=32, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(dataset: Path) -> TrainedSegmenter:
    return train_segmenter(dataset, steps=40, batch_size=4, seed=0, config=TINY, learning_rate=1e-2,
                           progress=False)


def test_training_lowers_the_loss(trained: TrainedSegmenter) -> None:
    assert len(trained.losses) == 40
    first, last = np.mean(trained.losses[:5]), np.mean(trained.losses[-5:])
    assert first > 1.5  # about ln(10) at the start: 10 classes, no knowledge
    assert last < 0.75 * first
    assert not trained.model.training


def test_same_seed_same_model_other_seed_another(dataset: Path, trained: TrainedSegmenter) -> None:
    again = train_segmenter(dataset, steps=40, batch_size=4, seed=0, config=TINY, learning_rate=1e-2,
                            progress=False)
    assert again.losses == trained.losses
    for (name, tensor), other in zip(trained.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(tensor, other), name
    other_seed = train_segmenter(dataset, steps=2, batch_size=4, seed=1, config=TINY, progress=False)
    assert other_seed.losses != trained.losses[:2]


def test_default_size_is_in_the_planned_range() -> None:
    assert 50_000 <= parameter_count(Segmenter(SegmenterConfig())) <= 300_000
    assert SegmenterConfig().classes == LANDSCAPE_CLASSES and len(LANDSCAPE_CLASSES) == 10


def test_onnx_export_equals_pytorch_argmax(tmp_path: Path, dataset: Path, trained: TrainedSegmenter) -> None:
    path = export_segmenter(trained.model, tmp_path / "segmenter.onnx")
    graph = onnx.load(str(path)).graph
    def signature(values: list) -> list[tuple[str, int, list[str]]]:
        return [(value.name, value.type.tensor_type.elem_type,
                 [dim.dim_param or str(dim.dim_value) for dim in value.type.tensor_type.shape.dim]) for value in values]

    assert signature(graph.input) == [(IMAGE, onnx.TensorProto.UINT8, ["N", "H", "W", "3"])]
    assert signature(graph.output) == [(CLASS_MAP, onnx.TensorProto.INT64, ["N", "H", "W"])]
    segmenter = OnnxSegmenter(path)
    assert segmenter.config == TINY
    real, _ = read_folder_dataset(dataset, TINY.num_classes)
    noise = np.random.default_rng(0).integers(0, 256, (3, 37, 51, 3)).astype(np.uint8)  # odd sizes: dynamic H, W
    for images in (real, noise, real[0]):
        with torch.no_grad():
            logits = trained.model(torch.from_numpy(np.ascontiguousarray(images.reshape(-1, *images.shape[-3:]))))
        expected = logits.argmax(1).numpy()
        predicted = segmenter(images)
        assert predicted.dtype == np.int64 and predicted.shape == expected.shape
        # A pixel whose two best logits (nearly) tie may go either way between two runtimes' float rounding.
        top2 = logits.topk(2, dim=1).values.numpy()
        clear = top2[:, 0] - top2[:, 1] > 1e-4
        np.testing.assert_array_equal(predicted[clear], expected[clear])
        assert clear.mean() > 0.99


def test_bad_inputs(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        train_segmenter(tmp_path / "missing", steps=1, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        train_segmenter(dataset, steps=0, batch_size=1, progress=False)
    mixed = tmp_path / "mixed"
    write_dataset(mixed, count=2, size=32, seed=0, progress=False)
    write_dataset(tmp_path / "bigger", count=1, size=40, seed=0, progress=False)
    for folder in ("images", "labels"):
        (tmp_path / "bigger" / folder / "00000.png").rename(mixed / folder / "00002.png")
    with pytest.raises(ValueError, match=r"00002.png is 40x40 \(WxH\) but .*00000.png is 32x32"):
        read_folder_dataset(mixed, 10)
    write_rgb(mixed / "images" / "00001.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="label map is 32x32 .* but its image 00001.png is 8x8"):
        read_folder_dataset(mixed, 10)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        read_folder_dataset(dataset, 3)
    with pytest.raises(ValueError, match="no such segmenter ONNX file"):
        OnnxSegmenter(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx is not a readable ONNX model"):
        OnnxSegmenter(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="at least 2 classes"):
        SegmenterConfig(classes=("sky",))
