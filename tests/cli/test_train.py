"""`spade-deploy train`: its refusals before any work, and training with a validation split scored while it trains."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

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


def test_evaluation_files_are_checked_before_the_run_writes_anything(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--label-nc", "3", "--dataroot", str(tmp_path), "--max-steps", "1", "--run-dir",
            str(tmp_path / "run"), "--no-vgg-loss", "--device", "cpu"]
    assert cli.main([*args, "--eval-dataroot", str(tmp_path / "missing")]) == 2
    assert f"--eval-dataroot {tmp_path / 'missing'} is not a folder" in capsys.readouterr().err
    assert cli.main([*args, "--eval-dataroot", str(tmp_path), "--eval-segmenter", str(tmp_path / "seg.onnx")]) == 2
    assert f"--eval-segmenter {tmp_path / 'seg.onnx'} is not a file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- refusals before any work

def tiny_args(dataroot: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny CPU run of `dataroot` (32x32 landscapes); a flag repeated in `extra` wins."""
    return ["train", "--label-nc", str(len(CLASSES)), "--dataroot", str(dataroot), "--ngf", "8", "--ndf", "8",
            "--spade-hidden", "16", "--max-steps", "1", "--device", "cpu", "--num-workers", "0", "--run-dir",
            str(run_dir), "--crop-size", "64", "--no-vgg-loss", *extra]


@pytest.fixture(scope="module")
def landscapes32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("landscapes32")
    write_dataset(data, count=2, size=32, seed=0, progress=False)
    return data


def refusal(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert cli.main(args) == 2
    return capsys.readouterr().err


def test_a_one_value_batch_norm_is_refused_before_anything_is_written(tmp_path: Path, landscapes32: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    for dry_run in ((), ("--dry-run",)):
        error = refusal(tiny_args(landscapes32, run_dir, "--crop-size", "32", "--load-size", "32", *dry_run), capsys)
        assert ("--crop-size 32 gives the generator a 1x1 latent grid" in error
                and "Use --crop-size 64 or more, or --batch-size 2 or more" in error), error
        assert not run_dir.exists()
    assert cli.main(tiny_args(landscapes32, run_dir, "--crop-size", "32", "--batch-size", "2", "--dry-run")) == 0
    assert not run_dir.exists()


def test_a_crop_size_the_generator_cannot_make_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    error = refusal(tiny_args(tmp_path, tmp_path / "run", "--crop-size", "80", "--dry-run"), capsys)
    assert "--crop-size 80 asks for 80x80 (HxW) images" in error and "Use --crop-size 64 or 96" in error, error
    error = refusal(["train", "--preset", "cityscapes", "--dataroot", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                     "--epochs", "1", "--no-vgg-loss", "--crop-size", "320", "--dry-run"], capsys)
    assert "asks for 160x320 (HxW) images" in error and "Use --crop-size 256 or 384" in error, error
    error = refusal(["train", "--preset", "cityscapes", "--dataroot", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                     "--epochs", "1", "--no-vgg-loss", "--crop-size", "64", "--dry-run"], capsys)
    assert "--crop-size must be at least 128" in error, error


NEEDS_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: the flag is accepted")


@pytest.mark.parametrize("extra, message", [
    (("--reschedule",), "--reschedule changes the schedule of a resumed run; pass it with --resume"),
    (("--eval-limit", "3"), "pass --eval-dataroot DIR"),
    pytest.param(("--amp", "fp16"), "--amp fp16 needs CUDA", marks=NEEDS_NO_CUDA),
    pytest.param(("--device", "cuda"), "this PyTorch sees no CUDA device", marks=NEEDS_NO_CUDA),
    (("--resume",), "--resume: there is no"),
    (("--preset", "ade20k", "--use-instance"), "the 'ade20k' dataset layout has no instance maps"),
])
def test_dry_run_refuses_what_a_run_refuses(tmp_path: Path, capsys: pytest.CaptureFixture, extra: tuple[str, ...],
                                            message: str) -> None:
    assert message in refusal(tiny_args(tmp_path, tmp_path / "run", *extra, "--dry-run"), capsys)


def test_dry_run_refuses_a_run_dir_that_holds_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    assert "already holds a run" in refusal(tiny_args(tmp_path, run_dir, "--dry-run"), capsys)


def test_the_vgg_loss_needs_weights_or_no_vgg_loss_even_for_a_dry_run(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    args = tiny_args(tmp_path, tmp_path / "run", "--dry-run")
    args.remove("--no-vgg-loss")
    error = refusal(args, capsys)
    assert "pass --vgg-weights PATH" in error and "--no-vgg-loss" in error, error


def test_a_run_dir_that_is_a_file_is_refused(tmp_path: Path, landscapes32: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "file"
    file.write_text("")
    for dry_run in ((), ("--dry-run",)):
        error = refusal(tiny_args(landscapes32, file, *dry_run), capsys)
        assert f"--run-dir {file} is a file; expected a folder" in error, error
    assert "is a file, not a folder" in refusal(tiny_args(landscapes32, file / "run"), capsys)


@pytest.mark.parametrize("extra, message", [
    (("--decay-start", "1.5"), "--decay-start is a fraction of the run in [0, 1], got 1.5"),
    (("--load-size", "40"), "--load-size 40 is smaller than --crop-size 64"),
    (("--crop-size", "16"), "--crop-size must be at least 32"),
    (("--ema", "2"), "--ema must lie in (0, 1)"),
    (("--num-workers", "-1"), "--num-workers must be >= 0, got -1"),
    (("--keep", "-1"), "--keep must be >= 0, got -1"),
    (("--label-nc", "0"), "argument --label-nc: expected a positive integer, got 0"),
    (("--batch-size", "0"), "argument --batch-size: expected a positive integer, got 0"),
    (("--seed", "-1"), "argument --seed: expected a seed from 0 to 2**64 - 1, got -1"),
    (("--preset", "cityscapes", "--crop-size", "128", "--load-size", "150"),
     "--load-size is the square resize before a random crop, but --preset cityscapes at aspect ratio 2 resizes"),
    (("--ema-bn-batches", "5"), "--ema-bn-batches sets how the EMA generator's batch-norm statistics are "
                                "re-estimated; pass it with --ema"),
])
def test_errors_name_the_flags_not_the_fields(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              extra: tuple[str, ...], message: str) -> None:
    args = tiny_args(tmp_path, tmp_path / "run", *extra, "--dry-run")
    if extra[0] in ("--label-nc", "--batch-size", "--seed"):  # argparse's own usage error
        with pytest.raises(SystemExit) as exited:
            cli.main(args)
        assert exited.value.code == 2
        error = capsys.readouterr().err
    else:
        error = refusal(args, capsys)
    assert message in error, error
    assert not re.search(r"(?<![\w.-])(crop_size|load_size|decay_start|ema_decay|num_workers|label_nc|batch_size)\b",
                         error), error


def test_a_missing_label_nc_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = tiny_args(tmp_path, tmp_path / "run", "--dry-run")
    del args[1:3]
    assert "preset 'custom' needs --label-nc" in refusal(args, capsys)
