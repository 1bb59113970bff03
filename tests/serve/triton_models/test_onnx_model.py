"""triton_models/onnx_model.py, served by a real tritonserver: the generator and encoder graphs give exactly what
ONNX Runtime gives in this process, and what the PyTorch modules and the official networks (from the official
checkpoint they were loaded from) give within 1e-4."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from spade_deploy.model import io_spec
from spade_deploy.model.tensors import rgb_to_tensor
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.model.tensors import sample_z
from spade_deploy.model.synthetic import random_style
from tests.official import official_encoder_forward, official_generator_forward
from tests.fixtures.serving import Served

TORCH_TOLERANCE = 1e-4  # float32 ONNX graph (folded weights) against eager float32 PyTorch


def infer(url: str, model: str, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """One plain tritonclient request, no spade-deploy client in between."""
    inputs = []
    for name, array in feed.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(name) for name in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def test_generator_equals_onnx_runtime_and_pytorch(spade_server: Served) -> None:
    exported = spade_server.exported
    feed = exported.inputs(3, seed=5)
    feed[io_spec.Z] = sample_z(3, exported.config.z_dim, seed=9).numpy()
    served = infer(spade_server.url, io_spec.GENERATOR_MODEL, feed, [io_spec.IMAGE, io_spec.IMAGE_FLOAT])
    local = exported.run_generator(feed)
    np.testing.assert_array_equal(served[io_spec.IMAGE], local[io_spec.IMAGE])
    np.testing.assert_array_equal(served[io_spec.IMAGE_FLOAT], local[io_spec.IMAGE_FLOAT])
    semantic = to_semantic_input(feed[io_spec.LABEL], feed[io_spec.INSTANCE], exported.config)
    z = torch.from_numpy(feed[io_spec.Z])
    with torch.no_grad():
        eager = exported.generator(semantic, z)
        official = official_generator_forward(exported.official["generator"], semantic, z, exported.official["opt"])
    assert np.abs(served[io_spec.IMAGE_FLOAT] - eager.numpy()).max() <= TORCH_TOLERANCE
    assert np.abs(served[io_spec.IMAGE_FLOAT] - official.numpy()).max() <= TORCH_TOLERANCE
    assert served[io_spec.IMAGE_FLOAT].std() > 0.1  # a real image, not a constant


def test_encoder_equals_onnx_runtime_and_pytorch(spade_server: Served) -> None:
    exported = spade_server.exported
    style = random_style(2, 80, 120, seed=4)  # any size: the graph resizes to 256x256
    served = infer(spade_server.url, io_spec.ENCODER_MODEL, {io_spec.STYLE: style}, [io_spec.MU, io_spec.LOGVAR])
    local = exported.run_encoder(style)
    for name in (io_spec.MU, io_spec.LOGVAR):
        np.testing.assert_array_equal(served[name], local[name])
    image = rgb_to_tensor(style)
    with torch.no_grad():
        eager = exported.encoder(image)
        official = official_encoder_forward(exported.official["encoder"], image, exported.official["opt"])
    for reference in (eager, official):
        assert np.abs(served[io_spec.MU] - reference[0].numpy()).max() <= TORCH_TOLERANCE
        assert np.abs(served[io_spec.LOGVAR] - reference[1].numpy()).max() <= TORCH_TOLERANCE


def test_generator_refuses_labels_outside_the_classes_and_keeps_serving(spade_server: Served) -> None:
    exported = spade_server.exported
    feed = exported.inputs(1)
    feed[io_spec.Z] = np.zeros((1, exported.config.z_dim), np.float32)
    bad = dict(feed, **{io_spec.LABEL: np.full_like(feed[io_spec.LABEL], exported.config.num_label_channels)})
    with pytest.raises(InferenceServerException) as refused:
        infer(spade_server.url, io_spec.GENERATOR_MODEL, bad, [io_spec.IMAGE])
    assert "INVALID_ARGUMENT" in str(refused.value.status())
    assert "labels must lie in [0, 10]" in refused.value.message()
    served = infer(spade_server.url, io_spec.GENERATOR_MODEL, feed, [io_spec.IMAGE])
    np.testing.assert_array_equal(served[io_spec.IMAGE], exported.run_generator(feed)[io_spec.IMAGE])
