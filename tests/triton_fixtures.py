"""Session fixtures of the serving tests: tiny exported models (ngf 8, 64 px, random weights with calibrated
batch-norm statistics) and one real Triton server on free loopback ports, started once per test session. The VAE
model comes from an official-format checkpoint (tests/official.py), so served numbers are checked against the
official networks' forward too.

Registered for the whole suite in tests/conftest.py (`pytest_plugins`). Everything skips, with the reason, when the
nvidia-pytriton wheel (the tritonserver binary) is not installed.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnxruntime
import pytest
import torch

from spade_deploy import io_spec
from spade_deploy.checkpoint import load_encoder, load_generator
from spade_deploy.config import EncoderConfig, GeneratorConfig
from spade_deploy.networks import ConvEncoder, SPADEGenerator
from spade_deploy.onnx_export import export_encoder_onnx, export_generator_onnx
from spade_deploy.serve import TritonServer
from spade_deploy.runtime import make_session
from spade_deploy.synthetic import random_encoder, random_generator, synthetic_batch
from spade_deploy.triton_repo import write_repository
from tests.official import official_options, official_state_dict, save_official, write_opt_txt

# A VAE model with an encoder, don't-care label and instance edges exercises every input of the pipeline.
VAE_CONFIG = GeneratorConfig(label_nc=10, contain_dontcare_label=True, use_instance=True, ngf=8, use_vae=True,
                             crop_size=64)
# A segmap (non-VAE) model without instances: the other pipeline path, for the short-lived servers.
SEGMAP_CONFIG = GeneratorConfig(label_nc=6, ngf=8, crop_size=64)
MAX_BATCH = 8


@dataclass(frozen=True)
class Exported:
    config: GeneratorConfig
    generator: SPADEGenerator
    generator_onnx: Path
    encoder: ConvEncoder | None = None
    encoder_onnx: Path | None = None
    official: dict[str, Any] | None = None  # the official checkpoint: generator / encoder state dicts and opt

    def run_generator(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The generator graph in this process, with the session options the served CPU variant uses."""
        return _run(self.generator_onnx, feed)

    def run_encoder(self, style: np.ndarray) -> dict[str, np.ndarray]:
        return _run(self.encoder_onnx, {io_spec.STYLE: style})

    def inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Label (+ instance) maps in the generator's wire dtypes."""
        model_io = io_spec.generator_io(self.config, *self.config.image_size)
        labels, instances = synthetic_batch(self.config, batch, seed=seed)
        feed = {io_spec.LABEL: labels.astype(model_io.input(io_spec.LABEL).dtype)}
        if instances is not None:
            feed[io_spec.INSTANCE] = instances.astype(model_io.input(io_spec.INSTANCE).dtype)
        return feed


@dataclass(frozen=True)
class Served:
    url: str  # gRPC host:port
    exported: Exported
    server: TritonServer


@functools.cache
def _session(path: Path) -> onnxruntime.InferenceSession:
    return make_session(path, threads=1)  # as the served CPU variant runs it (intra_op_threads=1)


def _run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(path)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def require_triton() -> None:
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton is not installed (pip install .[serve]): no tritonserver to test against")


@pytest.fixture(scope="session")
def exported_vae(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """An official checkpoint (latest_net_G/E.pth + opt.txt, with shifted batch-norm statistics and unconverged
    spectral-norm vectors), loaded and exported as a user does."""
    directory = tmp_path_factory.mktemp("vae")
    encoder_config = EncoderConfig.for_crop_size(VAE_CONFIG.crop_size, ngf=8)
    opt = official_options(VAE_CONFIG, encoder_config)
    write_opt_txt(directory, opt)
    with torch.no_grad():
        generator_state = official_state_dict(random_generator(VAE_CONFIG, seed=1), seed=11)
        encoder_state = official_state_dict(random_encoder(encoder_config, seed=2), seed=12)
        generator = load_generator(save_official(generator_state, directory))
        encoder = load_encoder(save_official(encoder_state, directory, "latest_net_E.pth"))
        assert generator.config == VAE_CONFIG
        return Exported(VAE_CONFIG, generator, export_generator_onnx(generator, directory / "generator.onnx"),
                        encoder, export_encoder_onnx(encoder, directory / "encoder.onnx"),
                        official=dict(generator=generator_state, encoder=encoder_state, opt=opt))


@pytest.fixture(scope="session")
def exported_segmap(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    directory = tmp_path_factory.mktemp("segmap")
    with torch.no_grad():
        generator = random_generator(SEGMAP_CONFIG, seed=3)
        return Exported(SEGMAP_CONFIG, generator, export_generator_onnx(generator, directory / "generator.onnx"))


@pytest.fixture(scope="session")
def spade_server(exported_vae: Exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The VAE model (generator, encoder, pipeline) served by a real tritonserver for the whole session."""
    require_triton()
    repository = tmp_path_factory.mktemp("served") / "repository"
    write_repository(repository, exported_vae.generator_onnx, exported_vae.encoder_onnx, max_batch_size=MAX_BATCH)
    with TritonServer(repository) as server:
        yield Served(server.grpc_url, exported_vae, server)
