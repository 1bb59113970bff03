"""What a served SPADE model is, as the Triton repository publishes it: read by the python-backend models and clients.

`spade_deploy.serve.repository` writes the generator config and output size into each model's `config.pbtxt` as a
`parameters` entry; the python-backend models (`triton_models/`) read it back to check requests, and clients read it
from the running server to convert label PNGs, check sizes and split batches. Torch-free.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig

PARAMETER = "spade_model"  # config.pbtxt parameters key holding `describe(...)`
INTRA_OP_THREADS = "intra_op_threads"  # config.pbtxt parameters key: ONNX Runtime threads per CPU-variant instance
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ServedModel:
    config: GeneratorConfig
    height: int  # output size fixed at export
    width: int
    max_batch_size: int  # from the model config: the largest batch one request may carry
    inputs: tuple[str, ...]  # input names of this Triton model, as its config.pbtxt declares them

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any]) -> "ServedModel":
        """From a model config in Triton's JSON form (the python backend's `args["model_config"]`, or
        `get_model_config(..., as_json=True)["config"]` on a client)."""
        name = model_config.get("name", "?")
        try:
            payload = json.loads(model_config["parameters"][PARAMETER]["string_value"])
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"model {name!r} has no readable {PARAMETER!r} parameter ({error!r}); only repositories "
                             f"written by spade_deploy.serve.repository.write_repository describe their "
                             f"model") from None
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"model {name!r} describes itself in format version {payload.get('format_version')}; "
                             f"this spade-deploy reads version {FORMAT_VERSION}: rewrite the repository")
        return cls(config=GeneratorConfig.from_dict(payload["generator"]), height=int(payload["height"]),
                   width=int(payload["width"]), max_batch_size=int(model_config.get("max_batch_size", 0)),
                   inputs=tuple(spec["name"] for spec in model_config.get("input", ())))


def describe(config: GeneratorConfig, height: int, width: int) -> str:
    """The JSON stored under `PARAMETER`: what the model config itself does not say."""
    return json.dumps({"format_version": FORMAT_VERSION, "generator": config.to_dict(), "height": height,
                       "width": width}, sort_keys=True)


def check_request(arrays: Mapping[str, np.ndarray], model: ServedModel) -> None:
    """What a model config cannot express. Triton itself refuses wrong dtypes, fixed dims that differ, missing
    required inputs and batches above `max_batch_size` before a request reaches a model; this adds the contract's
    checks (label range of the model's classes, matching instance maps) and non-empty variable-size images. Raises
    the contract's `ValueError`, naming the input."""
    if io_spec.LABEL in arrays:
        labels = io_spec.check_labels(arrays[io_spec.LABEL], model.config, model.height, model.width)
        if io_spec.INSTANCE in model.inputs:
            io_spec.check_instances(arrays.get(io_spec.INSTANCE), model.config, labels.shape)
    for name, array in arrays.items():
        if array.size == 0:
            raise ValueError(f"input {name!r} is empty (shape {list(array.shape)}); every dimension must be >= 1")
