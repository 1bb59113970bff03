"""The one I/O contract of the deployed models: tensor names, dtypes, shapes, dynamic axes, and the input checks.

The ONNX export, the Triton `config.pbtxt` files, the runtime wrapper, the python-backend models and the clients all
read these definitions; nothing else spells a tensor name. The batch dimension is implicit and dynamic everywhere:
`dims` are the per-item dimensions (`-1` = any size), as Triton's `dims` with `max_batch_size > 0`. The checks
(`check_labels`, `check_instances`, `check_z`, `generator_feeds`) turn any input into the contract's arrays or a
`ValueError` whose words are the same wherever the model runs, locally or served. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from spade_deploy.model.config import ENCODER_LATENT, GeneratorConfig
from spade_deploy.model.labels import as_label_batch, check_label_range

# Tensor names.
LABEL = "label"  # uint8 class indices [N, H, W]
INSTANCE = "instance"  # int32 instance ids [N, H, W]; only for models with instance edges
Z = "z"  # float32 latent [N, z_dim]; only for VAE generators
IMAGE = "image"  # uint8 RGB [N, H, W, 3]
IMAGE_FLOAT = "image_float"  # float32 [N, 3, H, W] in [-1, 1]
STYLE = "style"  # uint8 RGB style reference [N, h, w, 3], any size
MU = "mu"  # float32 [N, 256]
LOGVAR = "logvar"  # float32 [N, 256]
SEED = "seed"  # int64 [N, 1]: seed of the latent sample when no style image is given

# Model names in the Triton repository.
GENERATOR_MODEL = "spade_generator"
ENCODER_MODEL = "spade_encoder"
PIPELINE_MODEL = "spade"

# Label indices travel as uint8, so a model can have at most 256 one-hot channels.
MAX_LABEL_CHANNELS = 256

_TRITON_TYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
                 np.dtype(np.float32): "FP32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...]  # per item, without the batch dimension; -1 = any size
    optional: bool = False  # the pipeline may be called without it

    @property
    def triton_dtype(self) -> str:
        """Data type as `tritonclient` names it (`UINT8`); the model config's is `TYPE_` + this."""
        return _TRITON_TYPES[self.dtype]

    def batch_shape(self, batch: int | str = "N") -> list[int | str]:
        return [batch, *(dim if dim >= 0 else f"{self.name}_{axis}" for axis, dim in enumerate(self.dims, 1))]


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name)

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes: the batch of every tensor and every `-1` dim, named as in `TensorSpec.batch_shape`."""
        return {spec.name: {axis: name for axis, name in enumerate(spec.batch_shape()) if isinstance(name, str)}
                for spec in (*self.inputs, *self.outputs)}


def generator_io(config: GeneratorConfig, height: int, width: int) -> ModelIO:
    """Inputs `label` (+ `instance`) (+ `z`), outputs `image`, `image_float`, at a fixed export size."""
    if config.num_label_channels > MAX_LABEL_CHANNELS:
        raise ValueError(f"{config.num_label_channels} label channels do not fit the uint8 `label` input "
                         f"(at most {MAX_LABEL_CHANNELS})")
    inputs = [TensorSpec(LABEL, np.dtype(np.uint8), (height, width))]
    if config.use_instance:
        inputs.append(TensorSpec(INSTANCE, np.dtype(np.int32), (height, width)))
    if config.use_vae:
        inputs.append(TensorSpec(Z, np.dtype(np.float32), (config.z_dim,)))
    outputs = (TensorSpec(IMAGE, np.dtype(np.uint8), (height, width, 3)),
               TensorSpec(IMAGE_FLOAT, np.dtype(np.float32), (3, height, width)))
    return ModelIO(tuple(inputs), outputs)


def encoder_io() -> ModelIO:
    """Input `style` (uint8 RGB of any size), outputs `mu`, `logvar`."""
    return ModelIO((TensorSpec(STYLE, np.dtype(np.uint8), (-1, -1, 3)),),
                   (TensorSpec(MU, np.dtype(np.float32), (ENCODER_LATENT,)),
                    TensorSpec(LOGVAR, np.dtype(np.float32), (ENCODER_LATENT,))))


def pipeline_io(config: GeneratorConfig, height: int, width: int, *, has_encoder: bool) -> ModelIO:
    """The user-facing model: label map (+ instances) and, for VAE models, an optional style image or seed."""
    inputs = [spec for spec in generator_io(config, height, width).inputs if spec.name != Z]
    if config.use_vae:
        if has_encoder:
            inputs.append(TensorSpec(STYLE, np.dtype(np.uint8), (-1, -1, 3), optional=True))
        inputs.append(TensorSpec(SEED, np.dtype(np.int64), (1,), optional=True))
    return ModelIO(tuple(inputs), (TensorSpec(IMAGE, np.dtype(np.uint8), (height, width, 3)),))


def check_labels(labels: ArrayLike, config: GeneratorConfig, height: int, width: int) -> np.ndarray:
    """`[H, W]` or `[N, H, W]` class indices for a model of size height x width -> the `label` input, uint8
    `[N, H, W]`."""
    batch = as_label_batch(labels)
    if batch.shape[0] == 0:
        raise ValueError("labels: an empty batch (0 label maps); pass at least one")
    if batch.shape[1:] != (height, width):
        raise ValueError(f"label maps must be {height}x{width} (HxW) for this model, got "
                         f"{batch.shape[1]}x{batch.shape[2]}")
    check_label_range(batch, config)  # also keeps them inside the uint8 wire type
    return batch.astype(np.uint8)


def check_instances(instances: ArrayLike | None, config: GeneratorConfig,
                    label_shape: tuple[int, ...]) -> np.ndarray | None:
    """Instance ids for label maps of `label_shape` `[N, H, W]` -> the `instance` input, int32 `[N, H, W]`, or None
    for a model without instance edges."""
    if not config.use_instance:
        if instances is not None:
            raise ValueError("this model takes no instance map (use_instance=False); pass instances=None")
        return None
    if instances is None:
        raise ValueError("this model uses instance edges (use_instance=True); pass an instance-id map per label map")
    batch = as_label_batch(instances, "instances")
    if batch.shape != tuple(label_shape):
        raise ValueError(f"instances have shape {list(batch.shape)} but labels have {list(label_shape)}; they must "
                         f"match")
    limits = np.iinfo(np.int32)
    if batch.size and (batch.min() < limits.min or batch.max() > limits.max):
        raise ValueError(f"instance ids must fit int32, got {batch.min()}..{batch.max()}")
    return batch.astype(np.int32)


def check_z(z: ArrayLike | None, config: GeneratorConfig, batch: int) -> np.ndarray | None:
    """The latent of `batch` items -> the `z` input, float32 `[N, z_dim]`, or None for a segmap generator."""
    if not config.use_vae:
        if z is not None:
            raise ValueError("this generator takes no z (use_vae=False); pass z=None")
        return None
    if z is None:
        raise ValueError(f"this VAE generator needs z [N, {config.z_dim}] (a seeded sample or an encoded style)")
    array = np.asarray(z)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"z must hold floats, got dtype {array.dtype}")
    if array.shape != (batch, config.z_dim):
        raise ValueError(f"z must have shape [{batch}, {config.z_dim}], got {list(array.shape)}")
    with np.errstate(over="ignore"):  # reported below
        latent = array.astype(np.float32)
    if not np.isfinite(latent).all():  # float64 beyond float32's range becomes inf here
        raise ValueError(f"z must be finite in float32, got {int((~np.isfinite(latent)).sum())} values that are "
                         f"not (nan, inf, or beyond ±3.4e38)")
    return latent


def check_encoder_fits(config: GeneratorConfig) -> None:
    """A style encoder feeds only a VAE generator whose latent has the encoder's width."""
    if not config.use_vae:
        raise ValueError("a style encoder was given, but the generator is not a VAE generator (use_vae=False): it "
                         "takes no latent, so a style image has nothing to set; drop the encoder")
    if config.z_dim != ENCODER_LATENT:
        raise ValueError(f"the style encoder gives {ENCODER_LATENT}-dim latents, but the generator takes "
                         f"z_dim={config.z_dim}; the style path needs z_dim={ENCODER_LATENT}")


def check_latent_options(config: GeneratorConfig, *, has_encoder: bool, style: bool, seed: bool) -> None:
    """Refuse a style image for a model without a style encoder, and a seed for a model that draws no latent (the
    user-facing pipeline's optional inputs; `style`/`seed`: whether one was given)."""
    if style and not (config.use_vae and has_encoder):
        raise ValueError("this model has no style encoder (it is not a VAE model, or was exported without one); "
                         "pass style=None")
    if seed and not config.use_vae:
        raise ValueError("this model draws no latent (not a VAE generator), so a seed changes nothing; pass "
                         "seed=None")


def generator_feeds(config: GeneratorConfig, height: int, width: int, labels: ArrayLike,
                    instances: ArrayLike | None = None, z: ArrayLike | None = None) -> dict[str, np.ndarray]:
    """The checked inputs of the generator graph, keyed by the contract's names, in its dtypes."""
    feeds = {LABEL: check_labels(labels, config, height, width)}
    instance = check_instances(instances, config, feeds[LABEL].shape)
    if instance is not None:
        feeds[INSTANCE] = instance
    latent = check_z(z, config, feeds[LABEL].shape[0])
    if latent is not None:
        feeds[Z] = latent
    return feeds


def _find(specs: tuple[TensorSpec, ...], name: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"no tensor {name!r}; the model has {[spec.name for spec in specs]}")
