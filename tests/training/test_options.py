"""The options tree's size rules: a crop the generator makes exactly, and norm layers that have more than one value
per channel to normalise. Each rule is checked against the real networks in training mode."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spade_deploy.model.config import PRESETS, GeneratorConfig, generator_preset
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.training.discriminator import DiscriminatorConfig, MultiscaleDiscriminator
from spade_deploy.training.distributed import Context
from spade_deploy.training.loop import check_start
from spade_deploy.training.options import DataOptions, LossOptions, OptimOptions, RunOptions, TrainingOptions


def training_options(config: GeneratorConfig, batch_size: int = 1, num_d: int = 2,
                     run_dir: str = "run") -> TrainingOptions:
    return TrainingOptions(
        generator=config, encoder=None,
        discriminator=DiscriminatorConfig(input_nc=config.semantic_nc + 3, ndf=8, num_d=num_d),
        data=DataOptions(dataroot="data", preprocess="resize_and_crop" if config.aspect_ratio == 1.0 else "fixed",
                         load_size=config.crop_size),
        loss=LossOptions(lambda_vgg=0.0), optim=OptimOptions(lr_decay="step"),
        run=RunOptions(run_dir=run_dir, batch_size=batch_size, max_steps=1))


def tiny(**fields) -> GeneratorConfig:
    return GeneratorConfig(**{"label_nc": 3, "ngf": 8, "spade_hidden": 8, **fields})


def trains(config: GeneratorConfig, batch_size: int, num_d: int = 2) -> bool:
    """Whether a training-mode forward of the generator and the discriminator runs at this size and batch."""
    generator = SPADEGenerator(config).train()
    discriminator = MultiscaleDiscriminator(DiscriminatorConfig(input_nc=config.semantic_nc + 3, ndf=8, num_d=num_d))
    semantic = torch.zeros(batch_size, config.semantic_nc, *config.image_size)
    z = torch.zeros(batch_size, config.z_dim) if config.use_vae else None
    try:
        with torch.no_grad():
            discriminator(torch.cat([semantic, generator(semantic, z)], 1))
    except ValueError as error:  # torch: "Expected more than 1 value per channel / spatial element when training"
        assert "Expected more than 1" in str(error)
        return False
    return True


# (generator fields, batch size, discriminator scales): around every edge of the norm rule.
NORM_CASES = {
    "normal-32-batch-1": (dict(crop_size=32), 1, 2),
    "normal-32-batch-2": (dict(crop_size=32), 2, 2),
    "normal-64-batch-1": (dict(crop_size=64), 1, 2),
    "more-64-batch-1": (dict(crop_size=64, num_upsampling_layers="more"), 1, 2),
    "more-128-batch-1": (dict(crop_size=128, num_upsampling_layers="more"), 1, 2),
    "most-128-batch-1": (dict(crop_size=128, num_upsampling_layers="most"), 1, 2),
    "most-128-batch-2": (dict(crop_size=128, num_upsampling_layers="most"), 2, 2),
    "more-2to1-128-batch-1": (dict(crop_size=128, num_upsampling_layers="more", aspect_ratio=2.0), 1, 2),
    "instance-32-batch-4": (dict(crop_size=32, norm="instance"), 4, 2),
    "instance-64-batch-1": (dict(crop_size=64, norm="instance"), 1, 2),
    "vae-32-batch-1": (dict(crop_size=32, use_vae=True, z_dim=8), 1, 2),
    "discriminator-5-scales-32": (dict(crop_size=32), 2, 5),
    "discriminator-6-scales-32": (dict(crop_size=32), 2, 6),
    "discriminator-6-scales-64": (dict(crop_size=64), 1, 6),
}


@pytest.mark.parametrize("fields, batch_size, num_d", NORM_CASES.values(), ids=NORM_CASES.keys())
def test_options_accept_exactly_the_sizes_the_networks_train_at(fields: dict, batch_size: int, num_d: int) -> None:
    config = tiny(**fields)
    try:
        training_options(config, batch_size, num_d)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == trains(config, batch_size, num_d)


@pytest.mark.parametrize("fields, batch_size, num_d, message", [
    (dict(crop_size=32), 1, 2, r"crop_size 32 gives the generator a 1x1 latent grid \(crop_size / 32: 2\*\*5 "
                               r"upsamplings.*batch_size 1 .*head_0.* Use crop_size 64 or more, or batch_size 2 "
                               r"or more"),
    (dict(crop_size=64, num_upsampling_layers="more"), 1, 2,
     r"1x1 latent grid \(crop_size / 64.* crop_size 128 or more"),
    (dict(crop_size=32, norm="instance"), 4, 2, r"1x1 latent grid.*instance norm.* Use crop_size 64 or more"),
    (dict(crop_size=32), 2, 6, r"num_d=6 scales pool the 32x32 images down to 1x1.*use num_d 5 or less"),
])
def test_norm_refusals_say_why_and_what_fits(fields: dict, batch_size: int, num_d: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        training_options(tiny(**fields), batch_size, num_d)


@pytest.mark.parametrize("fields, message", [
    (dict(crop_size=80), r"crop_size 80 asks for 80x80 \(HxW\) images, but the generator's sides are multiples of 32 "
                         r"\(2\*\*5 upsamplings.*it would train at 64x64. Use crop_size 64 or 96$"),
    (dict(crop_size=100, num_upsampling_layers="more"), r"multiples of 64 .* train at 64x64. Use crop_size 64 or 128$"),
    (dict(crop_size=320, num_upsampling_layers="more", aspect_ratio=2.0),
     r"crop_size 320 at aspect_ratio 2 asks for 160x320 .* train at 128x320. Use crop_size 256 or 384$"),
])
def test_a_crop_the_generator_cannot_make_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        training_options(tiny(**fields), batch_size=2)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_official_presets_keep_their_sizes(preset: str) -> None:
    config = generator_preset(preset, label_nc=PRESETS[preset].get("label_nc", 5), ngf=8)
    options = training_options(config)
    assert options.generator.image_size == (round(config.crop_size / config.aspect_ratio), config.crop_size)


def test_batch_norms_per_process_need_more_than_one_sample_there(tmp_path: Path) -> None:
    """Global batch 2 over two processes: unsynchronized (CPU) batch norms see one sample each; CUDA syncs them."""
    def start(crop_size: int, device: torch.device) -> None:
        options = training_options(tiny(crop_size=crop_size), batch_size=2, run_dir=str(tmp_path / "run"))
        assert check_start(options, Context(rank=0, local_rank=0, world_size=2, device=device), resume=False) is None

    with pytest.raises(ValueError, match=r"--batch-size 2 over 2 processes leaves 1 sample per process.*"
                                         r"--crop-size 32 .* use --batch-size 4 or more, or a larger --crop-size"):
        start(32, torch.device("cpu"))
    start(32, torch.device("cuda", 0))
    start(64, torch.device("cpu"))
