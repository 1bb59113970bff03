"""`spade-deploy train` with a validation split: the evaluation stage scores the generator while it trains."""
from __future__ import annotations

from pathlib import Path

import pytest

from spade_deploy import cli
from spade_deploy.data.landscapes import CLASSES, write_dataset
from tests.evaluation.inception_weights import write_random_inception


def test_training_evaluates_every_epoch_and_logs_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tmp_path / "landscapes"
    write_dataset(data, count=4, size=64, seed=0, progress=False)
    weights = write_random_inception(tmp_path / "pt_inception.pth")
    run_dir = tmp_path / "run"
    # 4 samples in batches of 2: 2 steps per epoch, so evaluations at steps 0, 2 and 4 (the bundled segmenter)
    assert cli.main(["train", "--preset", "custom", "--label-nc", str(len(CLASSES)), "--dataroot", str(data),
                     "--crop-size", "64", "--ngf", "8", "--spade-hidden", "16", "--ndf", "8", "--batch-size", "2",
                     "--epochs", "2", "--no-vgg-loss", "--ema", "--ema-bn-batches", "2", "--device", "cpu",
                     "--num-workers", "0", "--run-dir", str(run_dir), "--eval-dataroot", str(data),
                     "--eval-limit", "2", "--eval-inception", str(weights)]) == 0
    [events] = run_dir.glob("events.out.tfevents.*")
    logged = EventAccumulator(str(events))
    logged.Reload()
    for name in ("mIoU", "pixel_accuracy", "mIoU_ratio", "fid", "kid"):
        assert [event.step for event in logged.Scalars(f"eval/{name}")] == [0, 2, 4], name
    assert all(0 <= event.value <= 1 for event in logged.Scalars("eval/mIoU"))
    assert all(event.value >= 0 for event in logged.Scalars("eval/fid"))


def test_evaluation_options_need_a_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--label-nc", "3", "--dataroot", str(tmp_path), "--max-steps", "1", "--run-dir",
            str(tmp_path / "run"), "--no-vgg-loss", "--eval-limit", "4"]
    assert cli.main(args) == 2
    assert "pass --eval-dataroot DIR" in capsys.readouterr().err
