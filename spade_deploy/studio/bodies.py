"""HTTP bodies of the studio API -> checked arrays, and arrays -> PNG bytes.

`POST /api/synthesize` takes either
- the label PNG itself as the body (any content type but JSON), with an optional `?seed=N`, or
- JSON `{"labels": "<base64 label PNG>", "seed": N or null, "style": "<base64 image>" or null}`, the form that can
  carry a style image.
The label PNG is in the model's encoding (its preset's raw values, as the dataset's label files), read and checked by
the very functions the client library uses on a label file, so a bad map gets the client's words.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import read_rgb
from spade_deploy.model.labels import labels_to_raw, read_label_png

MAX_BODY_BYTES = 16 * 2 ** 20  # a label PNG is a few KiB; a phone photo as a style image, base64 in JSON, fits
DRAIN_FACTOR = 4  # an oversized body is read (and dropped) up to this many times the limit before the answer
JSON_FIELDS = ("labels", "seed", "style")
SEED_DTYPE = np.dtype(np.int64)  # the served pipeline's `seed` input type


class BodyTooLarge(ValueError):
    """A request body over the limit (HTTP 413)."""


@dataclass(frozen=True)
class SynthesisRequest:
    labels: np.ndarray  # uint8 class indices [H, W], checked for the model
    seed: int | None
    style: np.ndarray | None  # uint8 RGB [h, w, 3]


async def read_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or `BodyTooLarge`. An oversized body is still read to its end (and dropped), so the client
    gets the 413 answer instead of a connection reset in the middle of its upload; a runaway one only up to
    `DRAIN_FACTOR` times the limit."""
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size <= limit:
            kept.append(chunk)
            continue
        kept.clear()
        if size > DRAIN_FACTOR * limit:
            raise BodyTooLarge(f"the request body has more than {DRAIN_FACTOR * limit} bytes; the studio takes at "
                               f"most {limit} bytes")
    if size > limit:
        raise BodyTooLarge(f"the request body has {size} bytes; the studio takes at most {limit} bytes")
    return b"".join(kept)


def parse_synthesis(body: bytes, content_type: str, query_seed: str | None, config: GeneratorConfig, height: int,
                    width: int) -> SynthesisRequest:
    """Either body form (see the module docstring) -> a checked request, or a `ValueError` naming the problem."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        return SynthesisRequest(read_labels(body, config, height, width),
                                None if query_seed is None else parse_seed(query_seed), None)
    if query_seed is not None:
        raise ValueError("give the seed in the JSON body (\"seed\"), not as ?seed= as well")
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"the JSON body does not parse: {error}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"the JSON body must be an object with {list(JSON_FIELDS)}, got {type(fields).__name__}")
    unknown = sorted(set(fields) - set(JSON_FIELDS))
    if unknown:
        raise ValueError(f"unknown JSON fields {unknown}; the fields are {list(JSON_FIELDS)}")
    if fields.get("labels") is None:
        raise ValueError("the JSON body has no \"labels\": give the label PNG, base64-encoded")
    style = fields.get("style")
    return SynthesisRequest(read_labels(_base64(fields["labels"], "labels"), config, height, width),
                            None if fields.get("seed") is None else parse_seed(fields["seed"]),
                            None if style is None else read_style(_base64(style, "style")))


def read_labels(data: bytes, config: GeneratorConfig, height: int, width: int) -> np.ndarray:
    """A label PNG's bytes -> uint8 class indices `[H, W]`, checked as the client library checks a label file."""
    if not data:
        raise ValueError("the label map is empty (0 bytes); send a single-channel label PNG")
    with _as_file(data, "labels.png") as path:
        labels = read_label_png(path, config)
    return io_spec.check_labels(labels, config, height, width)[0]


def read_style(data: bytes) -> np.ndarray:
    """An image file's bytes (PNG, JPEG, …) -> uint8 RGB `[h, w, 3]`."""
    if not data:
        raise ValueError("the style image is empty (0 bytes)")
    with _as_file(data, "style image") as path:
        return read_rgb(path)


def parse_seed(value: Any) -> int:
    """A seed from JSON or the query string: an integer that fits the pipeline's int64 `seed`."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    limits = np.iinfo(SEED_DTYPE)
    if isinstance(value, bool) or not isinstance(value, int) or not limits.min <= value <= limits.max:
        raise ValueError(f"seeds must be integers that fit {SEED_DTYPE}, got {value!r}")
    return value


def rgb_png(image: np.ndarray) -> bytes:
    """uint8 RGB `[H, W, 3]` -> PNG bytes."""
    return _png(Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB"))


def label_png(labels: np.ndarray, config: GeneratorConfig) -> bytes:
    """Class indices `[H, W]` -> a label PNG in the model's encoding (what `write_label_png` writes to a file)."""
    return _png(Image.fromarray(labels_to_raw(labels, config), mode="L"))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _base64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"\"{field}\" must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise ValueError(f"\"{field}\" is not valid base64 ({error})") from None


@contextlib.contextmanager
def _as_file(data: bytes, name: str) -> Iterator[Path]:
    """The body as a file called `name` in a private temporary folder: the readers of spade_deploy.model take files.
    The folder is cut from their error messages, which then name just `name`."""
    with tempfile.TemporaryDirectory(prefix="spade-studio-") as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        try:
            yield path
        except ValueError as error:
            raise ValueError(str(error).replace(f"{directory}{os.sep}", "")) from None
