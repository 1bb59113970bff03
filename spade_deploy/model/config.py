"""Typed, frozen configurations of the SPADE generator and style encoder, with the official dataset presets.

A config is all a network needs to be built: no global options object. It is saved next to the weights in our own
checkpoints and inferred from the tensors (plus `opt.txt`, a preset or overrides) for official ones.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Self

UpsamplingMode = Literal["normal", "more", "most"]
NormType = Literal["batch", "syncbatch", "instance"]

NUM_UPSAMPLINGS: dict[str, int] = {"normal": 5, "more": 6, "most": 7}
NORM_TYPES: tuple[str, ...] = ("batch", "syncbatch", "instance")
ENCODER_LATENT = 256  # fc_mu / fc_var width: hard-coded to 256 in the official ConvEncoder, independent of z_dim


class _Stored:
    """What the frozen config dataclasses share: copies with changes, and the plain dicts checkpoints, exports and
    served models store them as."""

    def replace(self, **changes: Any) -> Self:
        self._check_known(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        cls._check_known(values)
        return cls(**values)

    @classmethod
    def _check_known(cls, values: dict[str, Any]) -> None:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")


@dataclass(frozen=True)
class GeneratorConfig(_Stored):
    preset: str = "custom"  # dataset the model was trained on; decides how raw label PNG values map to indices
    label_nc: int = 182  # number of semantic classes, without the don't-care index
    contain_dontcare_label: bool = False  # one more one-hot channel (index label_nc) for "unknown"
    use_instance: bool = False  # append the instance-boundary channel to the one-hot map
    ngf: int = 64  # base channel width; block widths are 16, 8, 4, 2, 1 (and 1/2) times this
    z_dim: int = 256  # latent size of the VAE generator
    use_vae: bool = False  # True: fc is Linear(z) (style / random latent); False: fc is a conv on the label map
    num_upsampling_layers: UpsamplingMode = "normal"  # 5 / 6 / 7 nearest x2 upsamplings
    norm: NormType = "syncbatch"  # parameter-free norm inside SPADE
    spectral: bool = True  # spectral norm on the residual-block convs
    spade_hidden: int = 128  # width of the SPADE mlp_shared conv
    spade_kernel: int = 3  # kernel size of the SPADE convs
    crop_size: int = 256  # output width
    aspect_ratio: float = 1.0  # width / height

    def __post_init__(self) -> None:
        _check_positive(self, "label_nc", "ngf", "z_dim", "spade_hidden", "crop_size")
        for name in ("contain_dontcare_label", "use_instance", "use_vae", "spectral"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {sorted(PRESETS)}")
        if self.num_upsampling_layers not in NUM_UPSAMPLINGS:
            raise ValueError(f"num_upsampling_layers must be one of {sorted(NUM_UPSAMPLINGS)}, "
                             f"got {self.num_upsampling_layers!r}")
        if self.norm not in NORM_TYPES:
            raise ValueError(f"norm must be one of {list(NORM_TYPES)}, got {self.norm!r}")
        if self.spade_kernel < 1 or self.spade_kernel % 2 == 0:
            raise ValueError(f"spade_kernel must be a positive odd number, got {self.spade_kernel}")
        if not 0 < self.aspect_ratio < float("inf"):  # also refuses nan
            raise ValueError(f"aspect_ratio must be a finite positive number, got {self.aspect_ratio}")
        if self.num_upsampling_layers == "most" and self.ngf % 2:
            raise ValueError(f"num_upsampling_layers='most' needs an even ngf (last block has ngf/2 channels), "
                             f"got ngf={self.ngf}")
        if self.latent_width < 1 or self.latent_height < 1:
            # latent_height rounds latent_width / aspect_ratio: 1 or more from a latent_width of floor(ratio / 2) + 1
            smallest = ""
            if math.isfinite(self.aspect_ratio):
                multiple = math.floor(self.aspect_ratio / 2) + 1
                smallest = f"; crop_size must be at least {2 ** self.num_upsamplings * multiple}"
            raise ValueError(f"crop_size={self.crop_size} with {self.num_upsamplings} upsamplings and aspect_ratio="
                             f"{self.aspect_ratio} leaves an empty latent grid ({self.latent_height}x"
                             f"{self.latent_width}){smallest}")

    @property
    def num_upsamplings(self) -> int:
        return NUM_UPSAMPLINGS[self.num_upsampling_layers]

    @property
    def num_label_channels(self) -> int:
        """One-hot channels: the classes plus the don't-care index."""
        return self.label_nc + int(self.contain_dontcare_label)

    @property
    def semantic_nc(self) -> int:
        """Channels of the generator's input map: one-hot classes (+ don't-care) (+ instance edges)."""
        return self.num_label_channels + int(self.use_instance)

    @property
    def latent_width(self) -> int:
        return self.crop_size // 2 ** self.num_upsamplings

    @property
    def latent_height(self) -> int:
        return round(self.latent_width / self.aspect_ratio)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the output at the configured size."""
        scale = 2 ** self.num_upsamplings
        return self.latent_height * scale, self.latent_width * scale


@dataclass(frozen=True)
class EncoderConfig(_Stored):
    ngf: int = 64  # base width; layers are ngf, 2, 4, 8, 8 (, 8) times this
    num_layers: int = 6  # 6 when the official crop_size >= 256, else 5
    spectral: bool = True  # spectral norm on every conv layer

    def __post_init__(self) -> None:
        _check_positive(self, "ngf")
        if self.num_layers not in (5, 6):
            raise ValueError(f"encoder num_layers must be 5 or 6, got {self.num_layers}")

    @property
    def final_size(self) -> int:
        """Spatial size after the stride-2 layers on the 256x256 input (4 for the official 6-layer encoder)."""
        return 256 // 2 ** self.num_layers

    @classmethod
    def for_crop_size(cls, crop_size: int, **fields: Any) -> "EncoderConfig":
        """The official rule: a sixth layer exists when crop_size >= 256."""
        return cls(num_layers=6 if crop_size >= 256 else 5, **fields)


# Official dataset defaults (label_nc, don't-care, instance edges, size, upsampling).
PRESETS: dict[str, dict[str, Any]] = {
    "ade20k": dict(label_nc=150, contain_dontcare_label=True, use_instance=False, crop_size=256, aspect_ratio=1.0,
                   num_upsampling_layers="normal"),
    "coco": dict(label_nc=182, contain_dontcare_label=True, use_instance=True, crop_size=256, aspect_ratio=1.0,
                 num_upsampling_layers="normal"),
    "cityscapes": dict(label_nc=35, contain_dontcare_label=False, use_instance=True, crop_size=512, aspect_ratio=2.0,
                       num_upsampling_layers="more"),
    "custom": dict(contain_dontcare_label=False, use_instance=False, crop_size=256, aspect_ratio=1.0,
                   num_upsampling_layers="normal"),
}


def preset_fields(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return dict(PRESETS[preset])


def generator_preset(preset: str, **overrides: Any) -> GeneratorConfig:
    """`GeneratorConfig` for a dataset preset; `custom` needs at least `label_nc`."""
    fields = preset_fields(preset)
    fields.update(overrides)
    fields["preset"] = preset
    if "label_nc" not in fields:
        raise ValueError("preset 'custom' needs label_nc (the number of classes of your dataset)")
    return GeneratorConfig(**fields)


def _check_positive(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
