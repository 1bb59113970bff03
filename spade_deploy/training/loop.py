"""The training loop: one process per device, owning the networks, the optimisers, the data and the checkpoints.

Per step: a generator step (G and E through DDP, D frozen), then a discriminator step on a fake regenerated without
gradients, as the official trainer does. A run is a pure function of its options, seed and world size: the data
order and augmentation come from `(seed, epoch, index)`, every other random stream is saved per rank, so resuming
from `latest.pt` gives bit-identical weights to a run that was never stopped.
"""
from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from spade_deploy.files import atomic_path
from spade_deploy.model.checkpoint import checkpoint_entry, load_state, read_checkpoint
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator, init_weights
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.training import checkpoints, distributed
from spade_deploy.training.data import (ResumableSampler, SegmentationDataset, check_samples, find_samples, layout_of,
                                        raise_problems)
from spade_deploy.training.discriminator import MultiscaleDiscriminator
from spade_deploy.training.distributed import Context, all_gather
from spade_deploy.training.ema import GeneratorEMA
from spade_deploy.training.losses import SPADELoss, VGGLoss, load_vgg19, sample_posterior
from spade_deploy.training.monitor import Monitor
from spade_deploy.training.options import OptimOptions, TrainingOptions, check_resumable

PREVIEW_SAMPLES = 4  # columns of the TensorBoard image grid
FixedBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]  # labels, semantic, real, z


Evaluator = Callable[[nn.Module], dict[str, float]]  # eval-mode generator -> named scores


def train(options: TrainingOptions, *, resume: bool = False, reschedule: bool = False,
          evaluator: Evaluator | None = None) -> None:
    """Train as this process's rank of a torchrun job (or alone); with `resume`, continue from `latest.pt` on the
    schedule it started with, or with `reschedule` on the one of `options`' run length. `evaluator` scores the
    generator every `options.eval.every` epochs on the main rank (it comes from the evaluation stage, above this
    one)."""
    context = distributed.setup(options.run.device)
    try:
        Trainer(options, context, resume=resume, reschedule=reschedule, evaluator=evaluator).run()
    finally:
        distributed.teardown()


def check_start(options: TrainingOptions, context: Context, *, resume: bool) -> dict[str, Any] | None:
    """What a run checks before it reads the dataset or builds a network (`--dry-run` checks it too): the device, the
    process count, the batch each batch norm sees, and the run folder, which a new run needs free of a run and a
    resumed one needs holding a checkpoint of the same options. Returns that checkpoint (None for a new run)."""
    run, config = options.run, options.generator
    layout_of(config)
    if run.amp == "fp16" and context.device.type != "cuda":
        raise ValueError("--amp fp16 needs CUDA; on CPU use --amp bf16 or none")
    if run.batch_size % context.world_size:
        raise ValueError(f"--batch-size {run.batch_size} (global) must be a multiple of the number of processes "
                         f"({context.world_size})")
    per_rank = run.batch_size // context.world_size
    # The options checked the global batch; unsynchronized batch norms see one process's share of it.
    if (config.norm != "instance" and not _synchronizes_batch_norm(context)
            and per_rank * config.latent_height * config.latent_width == 1):
        raise ValueError(f"--batch-size {run.batch_size} over {context.world_size} processes leaves 1 sample per "
                         f"process, and at --crop-size {config.crop_size} (a 1x1 latent grid) the generator's first "
                         f"batch norm, synchronized only on CUDA, sees 1 value per channel: use --batch-size "
                         f"{2 * context.world_size} or more, or a larger --crop-size")
    return _read_checkpoint(options, context, resume)


def _synchronizes_batch_norm(context: Context) -> bool:
    """Whether the generator's batch norms become `SyncBatchNorm` (statistics over the global batch)."""
    return context.device.type == "cuda" and context.world_size > 1


def _read_checkpoint(options: TrainingOptions, context: Context, resume: bool) -> dict[str, Any] | None:
    latest = checkpoints.latest_path(Path(options.run.run_dir))
    if not resume:
        if latest.exists():
            raise ValueError(f"{options.run.run_dir} already holds a run ({latest}); pass --resume to continue it, "
                             f"or choose another --run-dir")
        return None
    if not latest.is_file():
        raise ValueError(f"--resume: there is no {latest} to continue from; start the run without --resume")
    checkpoint = read_checkpoint(latest)
    check_resumable(options, checkpoint["options"])
    if checkpoint["world_size"] != context.world_size:
        raise ValueError(f"{latest} was written by {checkpoint['world_size']} processes; resume it with the same "
                         f"number (torchrun --nproc_per_node x nodes), not {context.world_size}")
    return checkpoint


def lr_factor(step: int, total_steps: int, optim: OptimOptions, steps_per_epoch: int) -> float:
    """The LR multiplier of `step` (0-based): 1 until `decay_start` of the run, then linearly down towards 0.

    Per epoch (official): `niter` constant epochs, then after each further epoch one step of 1/`niter_decay` down, so
    the last epoch runs at 1/`niter_decay`. Per step: the same line, moved along every step, reaching 0 at the end."""
    if optim.lr_decay == "epoch":
        epochs = total_steps // steps_per_epoch
        niter = round(optim.decay_start * epochs)
        if epochs == niter:
            return 1.0
        return 1.0 - max(0, step // steps_per_epoch - niter) / (epochs - niter)
    start = optim.decay_start * total_steps
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / (total_steps - start))


def rank_seed(seed: int, rank: int) -> int:
    """Independent, reproducible seed of one rank's random streams."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class Trainer:
    def __init__(self, options: TrainingOptions, context: Context, *, resume: bool, reschedule: bool = False,
                 evaluator: Evaluator | None = None) -> None:
        self.options = options
        self.context = context
        self.evaluator = evaluator
        self._exported: tuple[int, nn.Module] | None = None  # (step, generator) of the last export
        run, config, device = options.run, options.generator, context.device
        checkpoint = check_start(options, context, resume=resume)
        self.run_dir = Path(run.run_dir)
        self.batch_per_rank = run.batch_size // context.world_size

        # Data: each rank checks its share of the files, and all ranks fail together on any problem.
        samples = find_samples(options.data.dataroot, config)
        problems = all_gather(check_samples(samples[context.rank::context.world_size], config), context)
        raise_problems(options.data.dataroot, [problem for part in problems for problem in part])
        self.dataset = SegmentationDataset(samples, config, options.data, run.seed)
        self.sampler = ResumableSampler(self.dataset, num_replicas=context.world_size, rank=context.rank,
                                        seed=run.seed)
        self.steps_per_epoch = self.sampler.num_samples // self.batch_per_rank
        if self.steps_per_epoch == 0:
            raise ValueError(f"the dataset has {len(samples)} samples, fewer than one global batch "
                             f"({run.batch_size}); lower --batch-size")
        self.total_steps = run.max_steps or run.epochs * self.steps_per_epoch
        # The loader's own generator only seeds its workers (augmentation is keyed by sample), and keeps the global
        # torch stream, which is saved for resuming, out of the DataLoader's hands.
        self.loader = DataLoader(self.dataset, batch_size=self.batch_per_rank, sampler=self.sampler,
                                 num_workers=options.data.num_workers, drop_last=True,
                                 pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(run.seed))

        # Networks: the same initial weights on every rank, from the run seed.
        torch.manual_seed(run.seed)
        self.generator = SPADEGenerator(config)
        self.encoder = ConvEncoder(options.encoder) if options.encoder else None
        self.discriminator = MultiscaleDiscriminator(options.discriminator)
        for network in self._networks():
            init_weights(network)
            network.to(device)
        self.ema = GeneratorEMA(self.generator, options.optim.ema_decay) if options.optim.ema_decay else None
        if _synchronizes_batch_norm(context):
            self.generator = nn.SyncBatchNorm.convert_sync_batchnorm(self.generator)
        vgg = None
        if options.loss.lambda_vgg > 0:
            vgg = VGGLoss(load_vgg19(options.loss.vgg_weights, imagenet_norm=options.loss.vgg_imagenet_norm)).to(device)
        self.loss = SPADELoss(options.loss, vgg)

        # The loop owns the optimisers; the encoder trains with the generator (official).
        optim = options.optim
        betas = (optim.beta1, optim.beta2)
        generator_parameters = [p for network in (self.generator, self.encoder) if network is not None
                                for p in network.parameters()]
        self.opt_g = torch.optim.Adam(generator_parameters, lr=optim.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=optim.lr_d, betas=betas)
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=run.amp == "fp16")
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=run.amp == "fp16")
        self.noise = torch.Generator(device)  # this rank's latent draws (VAE reparameterisation)
        checkpoints.seed_everything(rank_seed(run.seed, context.rank), self.noise)
        self.step = 0
        if checkpoint is not None:
            self._restore(checkpoint)
            self._check_schedule(checkpoint, reschedule)

        # DDP averages the gradients of the passes that go through these wrappers.
        self.ddp_generator = self._ddp(self.generator)
        self.ddp_encoder = self._ddp(self.encoder) if self.encoder else None
        self.ddp_discriminator = self._ddp(self.discriminator)

    def _networks(self) -> list[nn.Module]:
        return [network for network in (self.generator, self.encoder, self.discriminator) if network is not None]

    def _ddp(self, module: nn.Module) -> nn.Module:
        if self.context.world_size == 1:
            return module
        device = self.context.device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    # ------------------------------------------------------------------------------------------------ resuming

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        path = checkpoints.latest_path(self.run_dir)
        if checkpoint["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"{path} has {checkpoint['steps_per_epoch']} steps per epoch, this dataset gives "
                             f"{self.steps_per_epoch}: the dataset changed, so the run cannot continue exactly")
        trained = checkpoint["generator_raw" if self.ema else "generator"]
        load_state(self.generator, trained["state_dict"], path)
        if self.ema:
            load_state(self.ema.model, checkpoint["generator"]["state_dict"], path)
            self.ema.copy_buffers(self.generator)  # the live average tracks the trained buffers
        if self.encoder:
            load_state(self.encoder, checkpoint["encoder"]["state_dict"], path)
        load_state(self.discriminator, checkpoint["discriminator"]["state_dict"], path)
        self.opt_g.load_state_dict(checkpoint["optimizers"]["generator"])
        self.opt_d.load_state_dict(checkpoint["optimizers"]["discriminator"])
        self.scaler_g.load_state_dict(checkpoint["scalers"]["generator"])
        self.scaler_d.load_state_dict(checkpoint["scalers"]["discriminator"])
        moved = checkpoints.set_rng_state(checkpoint["rng"][self.context.rank], self.noise)
        if moved and self.context.is_main:
            print(f"WARNING: --resume: {moved}", file=sys.stderr, flush=True)
        self.step = checkpoint["step"]

    def _check_schedule(self, checkpoint: dict[str, Any], reschedule: bool) -> None:
        """A resumed run keeps the run length its LR schedule was planned for: the schedule is a fraction of it, so
        a new length moves the LR at once. `reschedule` accepts that, and says so."""
        saved = checkpoint["options"]["run"]
        planned = saved["max_steps"] or saved["epochs"] * self.steps_per_epoch
        if planned == self.total_steps:
            return
        optim = self.options.optim
        before = lr_factor(self.step, planned, optim, self.steps_per_epoch)
        after = lr_factor(self.step, self.total_steps, optim, self.steps_per_epoch)
        change = (f"the run was planned for {planned} steps and is now {self.total_steps}: at step {self.step} the LR "
                  f"factor moves from {before:.3f} to {after:.3f}")
        if not reschedule:
            length = f"--max-steps {saved['max_steps']}" if saved["max_steps"] else f"--epochs {saved['epochs']}"
            raise ValueError(f"--resume keeps the schedule the run started with, but {change}. Resume with {length}, "
                             f"or pass --reschedule to change the schedule")
        if self.context.is_main:
            print(f"WARNING: --reschedule: {change}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------------------------------------------- loop

    def run(self) -> dict[str, torch.Tensor]:
        """Train up to the last step; returns the loss terms of the last step run (empty if none was left)."""
        run = self.options.run
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.run_dir / "training_options.json") as temporary:
                temporary.write_text(json.dumps(self.options.to_dict(), indent=2) + "\n")
        monitor = Monitor(self.run_dir, enabled=self.context.is_main, start=self.step, total=self.total_steps,
                          images_per_step=run.batch_size)
        first = self.step
        losses: dict[str, torch.Tensor] = {}
        evaluate_every = self.options.eval.every * self.steps_per_epoch
        try:
            if self.step == 0:
                self._evaluate(monitor)  # the baseline, and a wrong segmenter or split shows at once
            while self.step < self.total_steps:
                epoch, position = divmod(self.step, self.steps_per_epoch)
                self.sampler.start(epoch, skip=position * self.batch_per_rank)
                for batch in self.loader:
                    factor = lr_factor(self.step, self.total_steps, self.options.optim, self.steps_per_epoch)
                    losses = self._train_step(batch, factor)
                    self.step += 1
                    if self.ema:
                        self.ema.update(self.generator)
                    log = self.step % run.log_every == 0 or self.step in (first + 1, self.total_steps)
                    monitor.step(self.step, losses, factor, log)
                    if self.step % run.save_every == 0 or self.step == self.total_steps:
                        self._save(monitor)
                    if self.step % evaluate_every == 0 or self.step == self.total_steps:
                        self._evaluate(monitor)
                    if self.step == self.total_steps:
                        break
        finally:
            monitor.close()
        return losses

    def _train_step(self, batch: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
        semantic, real = self._inputs(batch)
        optim, amp = self.options.optim, self.options.run.amp
        self.opt_g.param_groups[0]["lr"] = optim.lr_g * factor
        self.opt_d.param_groups[0]["lr"] = optim.lr_d * factor
        autocast = torch.autocast(self.context.device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16,
                                  enabled=amp != "none")

        # Generator (and encoder) step. D is frozen and called outside DDP: no gradients of its own here.
        self.discriminator.requires_grad_(False)
        with autocast:
            g_losses = self.loss.generator_losses(self.ddp_generator, self.ddp_encoder, self.discriminator,
                                                     semantic, real, self.noise)
        _optimise(self.opt_g, self.scaler_g, g_losses)
        self.discriminator.requires_grad_(True)

        # Discriminator step; the fake is regenerated by the updated G without gradients.
        with autocast:
            d_losses = self.loss.discriminator_losses(self.generator, self.encoder, self.ddp_discriminator,
                                                      semantic, real, self.noise)
        _optimise(self.opt_d, self.scaler_d, d_losses)
        return {name: value.detach() for name, value in {**g_losses, **d_losses}.items()}

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic map `[N, semantic_nc, H, W]` and real image `[N, 3, H, W]` in [-1, 1] on this rank's device."""
        device = self.context.device
        # Checked where the loader left them (the CPU), one-hot on the device.
        semantic = to_semantic_input(batch["label"], batch.get("instance"), self.options.generator, device=device)
        return semantic, batch["image"].to(device)

    # ------------------------------------------------------------------------------------------------- saving

    def _save(self, monitor: Monitor) -> None:
        """Rank 0 writes the checkpoint (every rank contributes its RNG state) and logs an image grid."""
        rng = all_gather(checkpoints.rng_state(self.noise), self.context)
        if not self.context.is_main:
            return
        exported = self._export()
        entries: dict[str, Any] = {
            "generator": checkpoint_entry(exported),  # what load_generator and the exporters read
            "discriminator": checkpoint_entry(self.discriminator),
            "optimizers": {"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
            "scalers": {"generator": self.scaler_g.state_dict(), "discriminator": self.scaler_d.state_dict()},
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.context.world_size,
            "rng": rng,  # per rank
            "options": self.options.to_dict(),
        }
        if self.encoder:
            entries["encoder"] = checkpoint_entry(self.encoder)
        if self.ema:
            entries["generator_raw"] = checkpoint_entry(self.generator)  # the trained weights, for resuming
        checkpoints.save(entries, self.run_dir, self.step, self.options.run.keep)

        [(labels, semantic, real, _)] = self._batches(0, [range(min(PREVIEW_SAMPLES, len(self.dataset)))])
        with torch.no_grad(), _evaluating(exported), _evaluating(self.encoder):
            z = self.encoder(real)[0] if self.encoder else None  # the style of the real image (mu)
            fake = exported(semantic, z)
        monitor.images(self.step, labels, fake, real, self.options.generator)

    def _export(self) -> nn.Module:
        """The generator a checkpoint holds: the EMA made ready (once per step), or the trained one."""
        if not self.ema:
            return self.generator
        if self._exported is None or self._exported[0] != self.step:
            batches = ((semantic, z) for _, semantic, _, z in self._statistics_batches())
            self._exported = (self.step, self.ema.export(batches))
        return self._exported[1]

    def _evaluate(self, monitor: Monitor) -> None:
        """Main rank: score the exported generator and log the scores (the other ranks wait at the next step)."""
        if self.evaluator is None or not self.context.is_main:
            return
        generator = self._export()
        with torch.no_grad(), _evaluating(generator):
            scores = self.evaluator(generator)
        monitor.scalars(self.step, "eval", scores)

    def _statistics_batches(self) -> Iterator[FixedBatch]:
        """`ema_bn_batches` batches for the EMA's batch-norm statistics: random samples of the current epoch's crops,
        as many per batch as a training step normalises over (the global batch: synchronized batch norm). Drawn
        from the run seed and the step, so a resumed run exports the same, and no training state is touched."""
        rng = np.random.default_rng([self.options.run.seed, self.step])
        size = min(self.options.run.batch_size, len(self.dataset))
        picks = [rng.choice(len(self.dataset), size, replace=False) for _ in range(self.options.optim.ema_bn_batches)]
        return self._batches(self.step // self.steps_per_epoch, picks)

    def _batches(self, epoch: int, picks: list[Iterable[int]]) -> Iterator[FixedBatch]:
        """(labels, semantic, real, z) for each list of sample indices, with `epoch`'s crops and z drawn from the
        run seed; one batch at a time, since a batch of large one-hot maps can take gigabytes."""
        noise = torch.Generator(self.context.device).manual_seed(self.options.run.seed)
        for indices in picks:
            batch = default_collate([self.dataset[epoch, int(index)] for index in indices])
            with torch.no_grad(), _evaluating(self.encoder):
                semantic, real = self._inputs(batch)
                z = sample_posterior(*self.encoder(real), noise) if self.encoder else None
            yield batch["label"], semantic, real, z


def _optimise(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, losses: dict[str, torch.Tensor]) -> None:
    """One optimiser step on the sum of `losses` (scaled and unscaled for fp16, a no-op scaler otherwise)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(losses.values())).backward()
    scaler.step(optimizer)
    scaler.update()


@contextlib.contextmanager
def _evaluating(module: nn.Module | None) -> Iterator[None]:
    """Eval mode inside the block (no batch-norm or spectral-norm state changes), the previous mode after."""
    if module is None:
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
