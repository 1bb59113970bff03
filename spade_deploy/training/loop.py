"""The training loop: one process per device, owning the networks, the optimisers, the data and the checkpoints.

Per step: a generator step (G and E through DDP, D frozen), then a discriminator step on a fake regenerated without
gradients, as the official trainer does. A run is a pure function of its options, seed and world size: the data
order and augmentation come from `(seed, epoch, index)`, every other random stream is saved per rank, so resuming
from `latest.pt` gives bit-identical weights to a run that was never stopped.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
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
from spade_deploy.training.data import (ResumableSampler, SegmentationDataset, check_samples, find_samples,
                                        raise_problems)
from spade_deploy.training.discriminator import MultiscaleDiscriminator
from spade_deploy.training.distributed import Context, all_gather
from spade_deploy.training.ema import GeneratorEMA
from spade_deploy.training.losses import SPADELoss, VGGLoss, load_vgg19, sample_posterior
from spade_deploy.training.monitor import Monitor
from spade_deploy.training.options import TrainingOptions, check_resumable

PREVIEW_SAMPLES = 4  # columns of the TensorBoard image grid
FixedBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]  # labels, semantic, real, z


def train(options: TrainingOptions, *, resume: bool = False) -> None:
    """Train as this process's rank of a torchrun job (or alone); with `resume`, continue from `latest.pt`."""
    context = distributed.setup(options.run.device)
    try:
        Trainer(options, context, resume=resume).run()
    finally:
        distributed.teardown()


def lr_factor(step: int, total_steps: int, decay_start: float) -> float:
    """1 until `decay_start` of the run, then linearly down towards 0 at `total_steps`."""
    start = decay_start * total_steps
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / (total_steps - start))


def rank_seed(seed: int, rank: int) -> int:
    """Independent, reproducible seed of one rank's random streams."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class Trainer:
    def __init__(self, options: TrainingOptions, context: Context, *, resume: bool) -> None:
        self.options = options
        self.context = context
        run, config, device = options.run, options.generator, context.device
        if run.amp == "fp16" and device.type != "cuda":
            raise ValueError("--amp fp16 needs CUDA; on CPU use --amp bf16 or none")
        if run.batch_size % context.world_size:
            raise ValueError(f"--batch-size {run.batch_size} (global) must be a multiple of the number of processes "
                             f"({context.world_size})")
        self.run_dir = Path(run.run_dir)
        checkpoint = self._read_checkpoint(resume)
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
        if device.type == "cuda" and context.world_size > 1:
            self.generator = nn.SyncBatchNorm.convert_sync_batchnorm(self.generator)
        vgg = VGGLoss(load_vgg19(options.loss.vgg_weights)).to(device) if options.loss.lambda_vgg > 0 else None
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

    def _read_checkpoint(self, resume: bool) -> dict[str, Any] | None:
        latest = checkpoints.latest_path(self.run_dir)
        if not resume:
            if latest.exists():
                raise ValueError(f"{self.run_dir} already holds a run ({latest}); pass --resume to continue it, or "
                                 f"choose another --run-dir")
            return None
        if not latest.is_file():
            raise ValueError(f"--resume: there is no {latest} to continue from; start the run without --resume")
        checkpoint = read_checkpoint(latest)
        check_resumable(self.options, checkpoint["options"])
        if checkpoint["world_size"] != self.context.world_size:
            raise ValueError(f"{latest} was written by {checkpoint['world_size']} processes; resume it with the same "
                             f"number (torchrun --nproc_per_node x nodes), not {self.context.world_size}")
        return checkpoint

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
        checkpoints.set_rng_state(checkpoint["rng"][self.context.rank], self.noise)
        self.step = checkpoint["step"]

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
        try:
            while self.step < self.total_steps:
                epoch, position = divmod(self.step, self.steps_per_epoch)
                self.sampler.start(epoch, skip=position * self.batch_per_rank)
                for batch in self.loader:
                    factor = lr_factor(self.step, self.total_steps, self.options.optim.decay_start)
                    losses = self._train_step(batch, factor)
                    self.step += 1
                    if self.ema:
                        self.ema.update(self.generator)
                    log = self.step % run.log_every == 0 or self.step in (first + 1, self.total_steps)
                    monitor.step(self.step, losses, factor, log)
                    if self.step % run.save_every == 0 or self.step == self.total_steps:
                        self._save(monitor)
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
        instances = batch["instance"].to(device) if "instance" in batch else None
        semantic = to_semantic_input(batch["label"].to(device), instances, self.options.generator)
        return semantic, batch["image"].to(device)

    # ------------------------------------------------------------------------------------------------- saving

    def _save(self, monitor: Monitor) -> None:
        """Rank 0 writes the checkpoint (every rank contributes its RNG state) and logs an image grid."""
        rng = all_gather(checkpoints.rng_state(self.noise), self.context)
        if not self.context.is_main:
            return
        if self.ema:
            batches = self._fixed_batches(self.options.optim.ema_bn_batches * self.batch_per_rank,
                                          self.batch_per_rank)
            exported = self.ema.export((semantic, z) for _, semantic, _, z in batches)
        else:
            exported = self.generator
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

        [(labels, semantic, real, _)] = self._fixed_batches(PREVIEW_SAMPLES, PREVIEW_SAMPLES)
        with torch.no_grad(), _evaluating(exported), _evaluating(self.encoder):
            z = self.encoder(real)[0] if self.encoder else None  # the style of the real image (mu)
            fake = exported(semantic, z)
        monitor.images(self.step, labels, fake, real, self.options.generator)

    def _fixed_batches(self, count: int, size: int) -> list[FixedBatch]:
        """The first `count` samples (epoch-0 crops) in batches of `size`: (labels, semantic, real, z), z drawn from
        the run seed. The same at every save, and no training state is touched."""
        count = min(count, len(self.dataset))
        noise = torch.Generator(self.context.device).manual_seed(self.options.run.seed)
        fixed = []
        with torch.no_grad(), _evaluating(self.encoder):
            for start in range(0, count, size):
                batch = default_collate([self.dataset[0, index] for index in range(start, min(start + size, count))])
                semantic, real = self._inputs(batch)
                z = sample_posterior(*self.encoder(real), noise) if self.encoder else None
                fixed.append((batch["label"], semantic, real, z))
        return fixed


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
