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

from spade_deploy.model import io_spec, memory
from spade_deploy.model.config import GeneratorConfig

PARAMETER = "spade_model"  # config.pbtxt parameters key holding `describe(...)`
INTRA_OP_THREADS = "intra_op_threads"  # config.pbtxt parameters key: ONNX Runtime threads per CPU-variant instance
# config.pbtxt parameters key: the precision a CPU-variant model runs its graph at (spade_deploy.export.precision):
# fp32 in ONNX Runtime, or bf16 in OpenVINO (a bf16 export); absent in older repositories: fp32.
PRECISION = "precision"
# config.pbtxt parameters key: the memory (bytes) one model execution may use, by `spade_deploy.model.memory`'s
# estimate for the ONNX Runtime graphs; requests above it are refused before any work. The estimate bounds OpenVINO
# at bf16 too (ADE20K 256x256 sparse graph, first call on AMD Zen 5: 498 MiB at batch 1 and 986 MiB at batch 4,
# against estimates of 2.2 and 8.6 GiB).
MAX_REQUEST_MEMORY = "max_request_memory"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ServedModel:
    config: GeneratorConfig
    height: int  # output size fixed at export
    width: int
    max_batch_size: int  # the largest batch one request may carry: the model config's, lowered to fit the budget
    inputs: tuple[str, ...]  # input names of this Triton model, as its config.pbtxt declares them
    max_request_memory: int | None = None  # bytes one execution may use (MAX_REQUEST_MEMORY); None: no budget

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
        config = GeneratorConfig.from_dict(payload["generator"])
        height, width = int(payload["height"]), int(payload["width"])
        max_batch_size = int(model_config.get("max_batch_size", 0))
        budget = model_config["parameters"].get(MAX_REQUEST_MEMORY, {}).get("string_value")
        if budget is not None:
            budget = int(budget)
            max_batch_size = min(max_batch_size, memory.largest_batch(config, height, width, budget,
                                                                      runtime="onnxruntime"))
        return cls(config=config, height=height, width=width, max_batch_size=max_batch_size,
                   inputs=tuple(spec["name"] for spec in model_config.get("input", ())), max_request_memory=budget)


def describe(config: GeneratorConfig, height: int, width: int) -> str:
    """The JSON stored under `PARAMETER`: what the model config itself does not say."""
    return json.dumps({"format_version": FORMAT_VERSION, "generator": config.to_dict(), "height": height,
                       "width": width}, sort_keys=True)


def check_request(arrays: Mapping[str, np.ndarray], model: ServedModel) -> None:
    """What a model config cannot express. Triton itself refuses wrong dtypes, fixed dims that differ, missing
    required inputs and batches above `max_batch_size` before a request reaches a model; this adds the contract's
    checks (label range of the model's classes, matching instance maps), non-empty variable-size images and the
    memory budget. Raises the contract's `ValueError`, naming the input."""
    if io_spec.LABEL in arrays:
        labels = io_spec.check_labels(arrays[io_spec.LABEL], model.config, model.height, model.width)
        if io_spec.INSTANCE in model.inputs:
            io_spec.check_instances(arrays.get(io_spec.INSTANCE), model.config, labels.shape)
    for name, array in arrays.items():
        if array.size == 0:
            raise ValueError(f"input {name!r} is empty (shape {list(array.shape)}); every dimension must be >= 1")
    check_request_memory(arrays, model)


def check_request_memory(arrays: Mapping[str, np.ndarray], model: ServedModel) -> None:
    """Refuse a request whose estimated memory (`spade_deploy.model.memory`, for the ONNX Runtime graphs) exceeds the
    model's budget, before any work: the batch of label maps, whose size the export fixes, and the style images,
    which may have any size. Raises a `ValueError` that says what fits."""
    for needed, what, advice in _estimates(model, {name: array.shape for name, array in arrays.items()}):
        if needed > model.max_request_memory:
            raise ValueError(f"{what} about {memory.format_bytes(needed)} (estimate), above this server's per-request "
                             f"memory budget of {memory.format_bytes(model.max_request_memory)} ({MAX_REQUEST_MEMORY} "
                             f"in the model's config.pbtxt, set by `spade-deploy export --max-request-memory`); "
                             f"{advice}")


def runs_within_budget(members: list[tuple[int, Mapping[str, np.ndarray]]],
                       model: ServedModel) -> list[list[tuple[int, Mapping[str, np.ndarray]]]]:
    """Consecutive (request index, arrays) members of one dynamic batch, each within the memory budget and with
    equal item shapes, split into runs whose concatenated batch stays within it too: what one model execution may
    run at once."""
    runs: list[list[tuple[int, Mapping[str, np.ndarray]]]] = []
    for member in members:
        if runs:
            shapes = {name: (sum(len(arrays[name]) for _, arrays in runs[-1]) + len(array), *array.shape[1:])
                      for name, array in member[1].items()}
            if all(needed <= model.max_request_memory for needed, _, _ in _estimates(model, shapes)):
                runs[-1].append(member)
                continue
        runs.append([member])
    return runs


def _estimates(model: ServedModel, shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[int, str, str]]:
    """(bytes, what needs them, how to need less) of the inputs that cost memory; none without a budget."""
    if model.max_request_memory is None:
        return []
    estimates = []
    if io_spec.LABEL in shapes:
        count = shapes[io_spec.LABEL][0]
        estimates.append((memory.generator_bytes(model.config, count, model.height, model.width,
                                                 runtime="onnxruntime"),
                          f"a batch of {count} label maps of {model.height}x{model.width} needs",
                          f"send at most {model.max_batch_size} per request"))
    if io_spec.STYLE in shapes:
        count, height, width = shapes[io_spec.STYLE][:3]
        plural = count > 1
        estimates.append((memory.style_bytes(count, height, width),
                          f"{count} style image{'s' if plural else ''} of {height}x{width} need{'' if plural else 's'}",
                          "send smaller style images (the encoder resizes them to 256x256) or fewer per request"))
    return estimates
