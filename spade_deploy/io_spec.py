"""The one I/O contract of the deployed models: tensor names, dtypes and shapes.

The ONNX export, the Triton `config.pbtxt` files, the python-backend models and the clients all read these
definitions; nothing else spells a tensor name. The batch dimension is implicit and dynamic everywhere: `dims` are
the per-item dimensions (`-1` = any size), as Triton's `dims` with `max_batch_size > 0`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spade_deploy.config import ENCODER_LATENT, GeneratorConfig

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


def _find(specs: tuple[TensorSpec, ...], name: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"no tensor {name!r}; the model has {[spec.name for spec in specs]}")
