"""The deployment graphs: a generator or encoder behind the I/O contract of `spade_deploy.model.io_spec`.

The generator graph takes uint8 label indices (+ int32 instance ids) (+ z) and returns the uint8 RGB image and the
float image; the encoder graph takes a uint8 RGB style image of any size. Which rewrite runs inside is the `graph`:
one of `spade_deploy.export.metadata.GRAPHS`, all computing the eager model's function (checked by
`spade_deploy.export.parity`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from spade_deploy.export.fold import fold_encoder, fold_generator
from spade_deploy.export.metadata import GRAPHS
from spade_deploy.export.sparse import DENSE_BELOW_BF16, EVERY_ROW, KEYS, sparse_generator
from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator
from spade_deploy.model.tensors import one_hot_input, to_uint8_image


class PlainGenerator(nn.Module):
    """The unmodified eager generator behind the deployment I/O (one-hot built in the graph): the baseline that
    benchmarks compare against, never what we ship."""

    def __init__(self, generator: SPADEGenerator) -> None:
        super().__init__()
        self.generator = generator
        self.config = generator.config

    def forward(self, label: torch.Tensor, instance: torch.Tensor | None = None,
                z: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(one_hot_input(label, instance, self.config), z)


class DeployGenerator(nn.Module):
    """Positional inputs in `io_spec` order -> (`image`, `image_float`)."""

    def __init__(self, core: nn.Module, config: GeneratorConfig, graph: str) -> None:
        super().__init__()
        self.core = core
        self.config = config
        self.graph = graph  # the name in GRAPHS, recorded in the export's metadata
        self.input_names = io_spec.generator_io(config, 1, 1).input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        named = dict(zip(self.input_names, inputs))
        image = self.core(named[io_spec.LABEL], named.get(io_spec.INSTANCE), named.get(io_spec.Z))
        return to_uint8_image(image), image


class DeployEncoder(nn.Module):
    """uint8 `style` `[N, h, w, 3]` -> (`mu`, `logvar`), the official [-1, 1] scaling and 256x256 resize in-graph."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = style.float().permute(0, 3, 1, 2) / 127.5 - 1.0  # cast first: TensorRT transposes no uint8
        return self.core(image)


Builder = Callable[[SPADEGenerator, int, int], nn.Module]  # (generator, export height, export width) -> core

# One builder per graph of `spade_deploy.export.metadata.GRAPHS`.
BUILDERS: dict[str, Builder] = {
    "sparse": lambda generator, height, width: sparse_generator(generator, height, width),
    # bf16 runs in OpenVINO: windows told apart by int32 keys. Winograd's transforms round in bf16 too, and its
    # larger weights cost OpenVINO memory (see precision.py).
    "sparse-bf16": lambda generator, height, width: sparse_generator(generator, height, width, DENSE_BELOW_BF16,
                                                                     deduplicate=KEYS, normalize_first=True,
                                                                     winograd_up_to=0),
    # TensorRT cannot build Unique and picks its own conv algorithms (Winograd among them).
    "sparse-tensorrt": lambda generator, height, width: sparse_generator(generator, height, width,
                                                                         deduplicate=EVERY_ROW, winograd_up_to=0),
    "dense": lambda generator, height, width: fold_generator(generator),
    "plain": lambda generator, height, width: PlainGenerator(generator).eval(),
}
if BUILDERS.keys() != GRAPHS.keys():
    raise ImportError(f"graph builders {sorted(BUILDERS)} and graph names {sorted(GRAPHS)} differ")


def generator_graph(generator: SPADEGenerator, *, graph: str = "sparse", height: int | None = None,
                    width: int | None = None) -> DeployGenerator:
    """The deployment module of a generator, built for an export of height x width (default: the config's), which
    decides the resolutions where the sparse path pays."""
    if graph not in BUILDERS:
        raise ValueError(f"graph must be one of {list(GRAPHS)}, got {graph!r}")
    default_height, default_width = generator.config.image_size
    core = BUILDERS[graph](generator, height or default_height, width or default_width)
    return DeployGenerator(core, generator.config, graph).eval()


def encoder_graph(encoder: ConvEncoder) -> DeployEncoder:
    return DeployEncoder(fold_encoder(encoder)).eval()


def example_inputs(config: GeneratorConfig, height: int, width: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero-filled inputs of the contract's dtypes and shapes (for tracing)."""
    return tuple(torch.from_numpy(np.zeros((batch, *spec.dims), dtype=spec.dtype))
                 for spec in io_spec.generator_io(config, height, width).inputs)
