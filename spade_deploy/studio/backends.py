"""What the studio needs of a model, and where it runs: PyTorch or ONNX Runtime in this process, or a Triton server.

Every backend takes one checked label map and the latent choice (seed, style image) and gives one image. A VAE
model's latent follows the served pipeline's rule (spade_deploy/serve/triton_models/pipeline.py), so a seed gives the
same picture on every backend: style and no seed -> the encoder's mean; style and seed -> a seeded sample around it;
seed only -> a seeded standard-normal sample. The studio paints classes, not objects: a model with instance edges
gets the label map as its instance map too, so its edges follow the class boundaries.

torch is imported only by `TorchBackend`, so the ONNX and server backends run without it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.sampling import style_or_seed_latent

Encode = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 RGB [h, w, 3] -> (mu, logvar) [1, 256]


class Backend(ABC):
    """A model the studio paints with. `labels` are uint8 class indices `[H, W]` already checked for this model."""

    kind: str  # "pytorch", "onnxruntime", "openvino" (a bf16 export) or "triton": shown on the page
    source: str  # the checkpoint, ONNX file or server address
    config: GeneratorConfig
    height: int
    width: int
    takes_style: bool  # a style encoder is there (VAE models only)

    @property
    def takes_seed(self) -> bool:
        """Only a VAE generator draws a latent, so only its images depend on a seed."""
        return self.config.use_vae

    @abstractmethod
    def synthesize(self, labels: np.ndarray, seed: int | None, style: np.ndarray | None) -> np.ndarray:
        """uint8 RGB `[H, W, 3]` for one label map; `seed`/`style` only for models that take them."""

    def close(self) -> None:
        """Release what the backend holds (a server connection)."""


def instances_for(labels: np.ndarray, config: GeneratorConfig) -> np.ndarray | None:
    """The instance map of a painted label map: one instance per class (see the module docstring)."""
    return labels.astype(np.int32) if config.use_instance else None


def local_latent(config: GeneratorConfig, seed: int | None, style: np.ndarray | None,
                 encode: Encode | None) -> np.ndarray | None:
    """float32 `[1, z_dim]` latent of an in-process VAE model by the pipeline's rule; None for a segmap model."""
    if not config.use_vae:
        return None
    if style is None:
        if seed is None:
            raise ValueError("a VAE model needs a seed or a style image to draw its latent z")
        return style_or_seed_latent(config.z_dim, seed)
    if encode is None:
        raise ValueError("this model has no style encoder; pass style=None")
    return style_or_seed_latent(config.z_dim, seed, encode(style))


def _check_encoder_option(config: GeneratorConfig, option: str) -> None:
    try:
        io_spec.check_encoder_fits(config)
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None


class TorchBackend(Backend):
    """A generator checkpoint (ours or an official `*_net_G.pth`) in PyTorch on the CPU; optionally its encoder."""

    kind = "pytorch"

    def __init__(self, generator: str | Path, encoder: str | Path | None = None, *, preset: str | None = None) -> None:
        from spade_deploy.model.checkpoint import load_encoder, load_generator

        self.generator = load_generator(generator, preset=preset)
        self.source = str(generator)
        self.config = self.generator.config
        self.height, self.width = self.config.image_size
        self.encoder = None
        if encoder is not None:
            _check_encoder_option(self.config, "--encoder")
            self.encoder = load_encoder(encoder, preset=preset)
        self.takes_style = self.encoder is not None

    def synthesize(self, labels: np.ndarray, seed: int | None, style: np.ndarray | None) -> np.ndarray:
        import torch

        from spade_deploy.model.tensors import rgb_to_tensor, tensor_to_rgb, to_semantic_input

        def encode(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mu, logvar = self.encoder(rgb_to_tensor(image))
            return mu.numpy(), logvar.numpy()

        with torch.inference_mode():
            z = local_latent(self.config, seed, style, encode if self.encoder is not None else None)
            semantic = to_semantic_input(labels, instances_for(labels, self.config), self.config)
            image = self.generator(semantic, None if z is None else torch.from_numpy(z))
        return tensor_to_rgb(image)[0]


class OnnxBackend(Backend):
    """A generator ONNX export (and optionally the encoder's) on the CPU, in the runtime its export records: ONNX
    Runtime, or OpenVINO for a bf16 export."""

    def __init__(self, generator: str | Path, encoder: str | Path | None = None) -> None:
        from spade_deploy.export.runtime import OnnxEncoder, OnnxGenerator

        self.generator = OnnxGenerator(generator)
        self.kind = self.generator.runtime
        self.source = str(generator)
        self.config, self.height, self.width = self.generator.config, self.generator.height, self.generator.width
        self.encoder = None
        if encoder is not None:
            _check_encoder_option(self.config, "--onnx-encoder")
            self.encoder = OnnxEncoder(encoder)
        self.takes_style = self.encoder is not None

    def synthesize(self, labels: np.ndarray, seed: int | None, style: np.ndarray | None) -> np.ndarray:
        z = local_latent(self.config, seed, style, self.encoder)
        image, _ = self.generator(labels, instances_for(labels, self.config), z)
        return image[0]


class ServerBackend(Backend):
    """The `spade` pipeline of a running `spade-deploy serve`, through `SpadeClient` (gRPC `HOST:PORT`, or a list of
    replicas tried in turn).

    Asks the server for its model at once, so an unreachable server stops `spade-deploy paint` before it serves;
    after that each request rides out a server restart or model reload (`client.SERVING_RETRIES`)."""

    kind = "triton"

    def __init__(self, url: str | list[str]) -> None:
        from spade_deploy.client import SERVING_RETRIES, SpadeClient

        self.client = SpadeClient(url)
        self.source = url if isinstance(url, str) else ", ".join(url)
        try:
            served = self.client.served
        except BaseException:
            self.client.close()
            raise
        self.config, self.height, self.width = served.config, served.height, served.width
        self.takes_style = io_spec.STYLE in served.inputs
        self.client.retries = SERVING_RETRIES

    def synthesize(self, labels: np.ndarray, seed: int | None, style: np.ndarray | None) -> np.ndarray:
        return self.client.synthesize(labels, instances_for(labels, self.config), style=style, seed=seed)[0]

    def close(self) -> None:
        self.client.close()
