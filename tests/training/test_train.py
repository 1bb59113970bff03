"""End-to-end training runs on CPU: a few steps, checkpoints, exact resume, two gloo processes, the CLI's errors."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import onnxruntime as ort
import torch

import spade_deploy
from spade_deploy.model import io_spec
from spade_deploy.model.checkpoint import read_checkpoint, write_checkpoint
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.training import checkpoints, distributed
from spade_deploy.training.loop import Trainer, lr_factor
from spade_deploy.training.options import OptimOptions, TrainingOptions
from spade_deploy import cli

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _train(options: TrainingOptions, resume: bool = False) -> tuple[Trainer, dict[str, torch.Tensor], dict]:
    """Run in this process (world size 1); also return the weights the run started from."""
    context = distributed.setup(options.run.device)
    trainer = Trainer(options, context, resume=resume)
    initial = {name: network.state_dict() for name, network in _networks(trainer).items()}
    initial = {name: {k: v.clone() for k, v in state.items()} for name, state in initial.items()}
    return trainer, trainer.run(), initial


def _networks(trainer: Trainer) -> dict[str, torch.nn.Module]:
    networks = {"generator": trainer.generator, "discriminator": trainer.discriminator}
    if trainer.encoder:
        networks["encoder"] = trainer.encoder
    return networks


def _assert_trained(trainer: Trainer, losses: dict[str, torch.Tensor], initial: dict, terms: set[str]) -> None:
    assert set(losses) == terms
    assert all(torch.isfinite(value) for value in losses.values()), losses
    for name, network in _networks(trainer).items():
        changed = [key for key, value in network.state_dict().items()
                   if value.is_floating_point() and not torch.equal(value, initial[name][key])]
        assert any(key.endswith(("weight", "weight_orig")) for key in changed), f"{name} did not change"
        assert all(torch.isfinite(p).all() for p in network.parameters())


def _assert_tensors_equal(first: object, second: object, where: str = "") -> None:
    """Bit-for-bit equality of two nested checkpoint structures."""
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            _assert_tensors_equal(first[key], second[key], f"{where}.{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for index, (a, b) in enumerate(zip(first, second)):
            _assert_tensors_equal(a, b, f"{where}[{index}]")
    else:
        assert first == second, where


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory, dataset: Path, tiny_options):
    """Two steps without encoder, EMA or VGG; shared by the tests that inspect its results."""
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    trainer, losses, initial = _train(tiny_options(dataset, run_dir))
    return trainer, losses, initial, run_dir


def test_plain_run_trains_and_writes_the_run_directory(plain_run) -> None:
    trainer, losses, initial, run_dir = plain_run
    _assert_trained(trainer, losses, initial, {"GAN", "GAN_Feat", "D_fake", "D_real"})
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.pt", "step-000000002.pt"]
    payload = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)  # nothing but plain data
    assert payload["format"] == "spade-deploy" and payload["step"] == 2 and payload["world_size"] == 1
    assert {"generator", "discriminator", "optimizers", "scalers", "rng", "options"} <= payload.keys()
    assert "encoder" not in payload and "generator_raw" not in payload
    options = json.loads((run_dir / "training_options.json").read_text())
    assert options == payload["options"] == trainer.options.to_dict()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = run_dir.glob("events.out.tfevents.*")
    logged = EventAccumulator(str(events), size_guidance={"images": 0})
    logged.Reload()
    assert [event.step for event in logged.Scalars("loss/GAN")] == [1, 2]
    [grid] = logged.Images("samples/label_generated_real")
    assert (grid.height, grid.width) == (3 * 64, 4 * 64)  # rows label / generated / real, 4 samples


def test_saved_generator_loads_and_matches_the_trained_one(plain_run, dataset: Path) -> None:
    trainer, _, _, run_dir = plain_run
    loaded = spade_deploy.load_generator(run_dir / "checkpoints" / "latest.pt")
    assert loaded.config == trainer.options.generator
    labels = trainer.dataset[0, 0]["label"][None]
    semantic = to_semantic_input(labels, None, loaded.config)
    trained = trainer.generator.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(semantic), trained(semantic), rtol=0, atol=0)
    trained.train()


def test_vae_ema_vgg_run(tmp_path: Path, dataset: Path, vgg_file: Path, tiny_options) -> None:
    options = tiny_options(dataset, tmp_path / "run", "--use-vae", "--use-instance", "--ema", "0.5",
                           "--vgg-weights", str(vgg_file), "--epochs", "1")
    trainer, losses, initial = _train(options)
    _assert_trained(trainer, losses, initial, {"GAN", "GAN_Feat", "VGG", "KLD", "D_fake", "D_real"})
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    payload = read_checkpoint(latest)
    assert (payload["step"], payload["epoch"]) == (3, 1)  # one epoch: 6 samples in batches of 2
    exported, raw = payload["generator"]["state_dict"], payload["generator_raw"]["state_dict"]
    for name, value in trainer.ema.model.named_parameters():
        assert torch.equal(exported[name], value)  # "generator" holds the average ...
        assert not torch.equal(raw[name], value)  # ... "generator_raw" the trained weights
    statistics = [key for key in exported if key.endswith("running_mean")]
    assert statistics and all(not torch.equal(exported[k], raw[k]) for k in statistics)
    # re-estimated over ema_bn_batches random batches, as a plain average
    batches = options.optim.ema_bn_batches
    assert all(exported[k.replace("running_mean", "num_batches_tracked")] == batches for k in statistics)
    # spectral norm power-iterated on the averaged weights: u . (W v) is their largest singular value
    for key in (k for k in exported if k.endswith("weight_orig")):
        matrix = exported[key].reshape(exported[key].shape[0], -1)
        sigma = exported[key.replace("_orig", "_u")] @ matrix @ exported[key.replace("_orig", "_v")]
        torch.testing.assert_close(sigma, torch.linalg.matrix_norm(matrix, ord=2), rtol=1e-4, atol=0)
    encoder = spade_deploy.load_encoder(latest)
    torch.testing.assert_close(encoder.state_dict(), trainer.encoder.state_dict(), rtol=0, atol=0)
    assert spade_deploy.load_generator(latest).config.use_vae


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, dataset: Path, tiny_options,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # 6 samples, batch 2: 3 steps per epoch, so step 2 is mid-epoch and step 4 is in the next epoch; the LR decays
    # from step 2. One DataLoader worker: batches come from another process.
    extra = ("--use-vae", "--use-instance", "--ema", "0.5", "--max-steps", "4", "--num-workers", "1")
    _train(tiny_options(dataset, tmp_path / "straight", *extra, "--save-every", "100"))

    interrupted = tiny_options(dataset, tmp_path / "interrupted", *extra, "--save-every", "2")
    original_step = Trainer._train_step

    def crash_on_step_three(self: Trainer, batch, factor):
        if self.step == 2:
            raise KeyboardInterrupt("killed")
        return original_step(self, batch, factor)

    monkeypatch.setattr(Trainer, "_train_step", crash_on_step_three)
    with pytest.raises(KeyboardInterrupt):
        _train(interrupted)
    assert read_checkpoint(tmp_path / "interrupted" / "checkpoints" / "latest.pt")["step"] == 2
    monkeypatch.setattr(Trainer, "_train_step", original_step)
    _train(interrupted, resume=True)

    straight = read_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    resumed = read_checkpoint(tmp_path / "interrupted" / "checkpoints" / "latest.pt")
    assert straight["step"] == resumed["step"] == 4
    for key in ("generator", "generator_raw", "encoder", "discriminator", "optimizers", "scalers", "rng"):
        _assert_tensors_equal(straight[key], resumed[key], key)


def refused(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    """`spade-deploy train ARGS` exits 2 (bad input); its one-line message."""
    assert cli.main(["train", *args]) == 2
    return capsys.readouterr().err


def test_resume_refuses_other_options_and_new_runs_refuse_old_dirs(plain_run, dataset: Path, tiny_args,
                                                                    capsys: pytest.CaptureFixture) -> None:
    run_dir = plain_run[3]
    assert re.search("already holds a run .* --resume", refused(capsys, tiny_args(dataset, run_dir)))
    assert "generator.ngf: 8 -> 16" in refused(capsys, tiny_args(dataset, run_dir, "--ngf", "16", "--resume"))
    assert re.search("no .*latest.pt to continue from",
                     refused(capsys, tiny_args(dataset, run_dir.with_name("absent"), "--resume")))


def test_dry_run_prints_the_options(tmp_path: Path, dataset: Path, tiny_args,
                                    capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", *tiny_args(dataset, tmp_path / "run", "--use-vae", "--dry-run")]) == 0
    options = json.loads(capsys.readouterr().out)
    assert options["generator"]["label_nc"] == 8 and options["generator"]["use_vae"]
    assert options["encoder"] == {"ngf": 8, "num_layers": 5, "spectral": True}
    assert options["discriminator"]["input_nc"] == 8 + 3
    assert options["data"]["load_size"] == 72 and options["run"]["max_steps"] == 2
    assert not (tmp_path / "run").exists()


def test_cli_errors_name_the_fix(tmp_path: Path, dataset: Path, tiny_args, write_dataset,
                                 capsys: pytest.CaptureFixture) -> None:
    args = tiny_args(dataset, tmp_path / "run")
    args.remove("--no-vgg-loss")
    assert re.search("--vgg-weights PATH.*--no-vgg-loss", refused(capsys, args))
    assert re.search("multiple of the number of processes|fewer than one global batch",
                     refused(capsys, tiny_args(dataset, tmp_path / "run", "--batch-size", "8")))
    broken = write_dataset(tmp_path / "broken", count=2)
    (broken / "labels" / "sample1.png").unlink()
    assert "sample1.png: no label map" in refused(capsys, tiny_args(broken, tmp_path / "run"))


def test_lr_schedule_is_constant_then_linear_per_epoch_or_per_step() -> None:
    # 4 epochs of 2 steps. Official (per epoch): niter = 2 constant epochs, then after each later epoch one step of
    # 1/niter_decay down, so the third epoch still runs at 1 and the last at 1/2.
    per_epoch = OptimOptions(decay_start=0.5, lr_decay="epoch")
    assert [lr_factor(step, 8, per_epoch, 2) for step in range(8)] == [1, 1, 1, 1, 1, 1, 0.5, 0.5]
    per_step = OptimOptions(decay_start=0.5, lr_decay="step")
    assert [lr_factor(step, 8, per_step, 2) for step in range(8)] == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    constant = OptimOptions(decay_start=1.0, lr_decay="epoch")
    assert [lr_factor(step, 4, constant, 2) for step in range(4)] == [1, 1, 1, 1]


def test_run_length_picks_the_lr_decay(tmp_path: Path, dataset: Path, tiny_options, tiny_args,
                                       capsys: pytest.CaptureFixture) -> None:
    assert tiny_options(dataset, tmp_path, "--epochs", "2").optim.lr_decay == "epoch"
    assert tiny_options(dataset, tmp_path).optim.lr_decay == "step"  # --max-steps: no epoch count to decay by
    assert "per-epoch LR decay needs the run length in epochs" in refused(
        capsys, tiny_args(dataset, tmp_path / "run", "--lr-decay", "epoch"))


def test_resume_keeps_the_planned_schedule_unless_told(tmp_path: Path, dataset: Path, tiny_args,
                                                        capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    assert cli.main(["train", *tiny_args(dataset, run_dir, "--max-steps", "3")]) == 0
    capsys.readouterr()
    longer = tiny_args(dataset, run_dir, "--max-steps", "6", "--resume")
    message = refused(capsys, longer)
    assert re.search(r"planned for 3 steps and is now 6: at step 3 the LR factor moves from 0\.000 to 1\.000\. "
                     r"Resume with --max-steps 3, or pass --reschedule", message)
    assert read_checkpoint(run_dir / "checkpoints" / "latest.pt")["step"] == 3  # nothing was touched
    assert "pass it with --resume" in refused(capsys, tiny_args(dataset, tmp_path / "other", "--reschedule"))
    assert cli.main(["train", *longer, "--reschedule"]) == 0
    assert "WARNING: --reschedule: the run was planned for 3 steps" in capsys.readouterr().err
    assert read_checkpoint(run_dir / "checkpoints" / "latest.pt")["step"] == 6


def test_a_run_saved_on_cuda_resumes_on_the_cpu(tmp_path: Path, dataset: Path, tiny_args,
                                                capsys: pytest.CaptureFixture) -> None:
    """--device may change on --resume: the CUDA latent-noise stream cannot be restored on the CPU (the two states
    differ in size), so it restarts from the seed, saying so. The checkpoint is made to look as a CUDA run writes it
    (no GPU here): its device, a 16-byte Philox noise state and a CUDA stream."""
    run_dir = tmp_path / "run"
    assert cli.main(["train", *tiny_args(dataset, run_dir, "--max-steps", "1")]) == 0
    latest = run_dir / "checkpoints" / "latest.pt"
    saved = read_checkpoint(latest)
    saved["options"]["run"]["device"] = "cuda"
    saved["rng"][0]["noise"] = saved["rng"][0]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    write_checkpoint({key: value for key, value in saved.items() if not key.startswith("format")}, latest)
    capsys.readouterr()
    assert cli.main(["train", *tiny_args(dataset, run_dir, "--max-steps", "2", "--resume", "--reschedule")]) == 0
    assert ("WARNING: --resume: the checkpoint's latent-noise stream was saved on cuda and this run is on cpu: it "
            "restarts from the run's seed") in capsys.readouterr().err
    assert read_checkpoint(latest)["step"] == 2


_KILLED_SAVE = """
import os, sys, time, torch
from spade_deploy.training import checkpoints
run = sys.argv[1]
checkpoints.save({"value": torch.tensor([1.0])}, run, step=1, keep=2)
def stalled_save(payload, file, *args, **kwargs):
    file.write(b"the first bytes of a checkpoint")
    file.flush()
    open(os.path.join(run, "writing"), "w").close()
    time.sleep(600)
torch.save = stalled_save
checkpoints.save({"value": torch.tensor([2.0])}, run, step=2, keep=2)
"""


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 120
    while not (tmp_path / "writing").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (tmp_path / "writing").exists(), "the subprocess never reached the second save"
    directory = checkpoints.checkpoint_dir(tmp_path)
    assert read_checkpoint(directory / "latest.pt")["value"].item() == 1.0
    assert sorted(p.name for p in directory.glob("step-*.pt")) == ["step-000000001.pt"]
    assert list(directory.glob(".latest.pt.*.tmp"))  # the killed write's temporary file, never renamed
    checkpoints.save({"value": torch.tensor([3.0])}, tmp_path, step=3, keep=1)
    assert read_checkpoint(directory / "latest.pt")["value"].item() == 3.0
    assert sorted(p.name for p in directory.glob("step-*.pt")) == ["step-000000003.pt"]


def test_a_failing_save_keeps_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints.save({"value": torch.tensor([1.0])}, tmp_path, step=1, keep=0)

    def failing_save(payload, file, *args, **kwargs):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save({"value": torch.tensor([2.0])}, tmp_path, step=2, keep=0)
    directory = checkpoints.checkpoint_dir(tmp_path)
    assert read_checkpoint(directory / "latest.pt")["value"].item() == 1.0
    assert sorted(p.name for p in directory.iterdir()) == ["latest.pt"]


_RANK_DUMP = """
import sys, torch
from spade_deploy.training import loop
from spade_deploy.cli import main
out = sys.argv[1]
original = loop.Trainer.run
def run_and_dump(self):
    losses = original(self)
    state = {f"{name}.{key}": value for name, net in (("G", self.generator), ("E", self.encoder),
             ("D", self.discriminator)) for key, value in net.named_parameters()}
    torch.save(state, f"{out}/rank{self.context.rank}.pt")
    return losses
loop.Trainer.run = run_and_dump
sys.exit(main(["train", *sys.argv[2:]]))
"""


def test_two_gloo_processes_keep_identical_parameters(tmp_path: Path, dataset: Path, tiny_args) -> None:
    args = tiny_args(dataset, tmp_path / "run", "--use-vae")
    script = tmp_path / "dump_ranks.py"
    script.write_text(_RANK_DUMP)
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path),
                             *args], capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any(key.startswith("E.") for key in ranks[0])
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    payload = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2
    assert not torch.equal(payload["rng"][0]["noise"], payload["rng"][1]["noise"])  # per-rank streams
    generator = {f"G.{key}": value for key, value in payload["generator"]["state_dict"].items()}
    assert all(torch.equal(generator[key], ranks[0][key]) for key in ranks[0] if key.startswith("G."))


def test_trained_checkpoint_exports_to_onnx_and_matches(plain_run, tmp_path: Path) -> None:
    trainer, _, _, run_dir = plain_run
    assert cli.main(["export", "onnx", str(run_dir / "checkpoints" / "latest.pt"), "--out", str(tmp_path),
                     "--parity-samples", "1"]) == 0
    labels = torch.stack([trainer.dataset[0, index]["label"] for index in (0, 1)])  # [2, 64, 64]
    session = ort.InferenceSession(str(tmp_path / "generator.onnx"), providers=["CPUExecutionProvider"])
    [exported] = session.run([io_spec.IMAGE_FLOAT], {io_spec.LABEL: labels.numpy().astype("uint8")})
    trained = trainer.generator.eval()
    with torch.no_grad():
        expected = trained(to_semantic_input(labels, None, trainer.options.generator))
    trained.train()
    torch.testing.assert_close(torch.from_numpy(exported), expected, rtol=0, atol=1e-4)
