"""HTTP bodies of the studio API -> checked arrays, and arrays -> PNG bytes.

`POST /api/synthesize` takes either
- the label PNG itself as the body (any content type but JSON), with an optional `?seed=N`, or
- JSON (`application/json`, `text/json` or `application/*+json`) `{"labels": "<base64 label PNG>", "seed": N or null,
  "style": "<base64 image>" or null}`, the form that can carry a style image.
The label PNG is in the model's encoding (its preset's raw values, as the dataset's label files), read and checked by
the very functions the client library uses on a label file, so a bad map gets the client's words. Images are refused
by the size in their header before they are decoded: a small PNG can hold a huge image.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spade_deploy.model import io_spec, memory
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import open_image, read_rgb
from spade_deploy.model.labels import labels_to_raw, read_label_png

MAX_BODY_BYTES = 16 * 2 ** 20  # a label PNG is a few KiB; a phone photo as a style image, base64 in JSON, fits
DRAIN_FACTOR = 4  # an oversized body is read (and dropped) up to this many times the limit before the answer
JSON_FIELDS = ("labels", "seed", "style")
JSON_TYPES = ("application/json", "text/json", "application/*+json")  # the content types of the JSON form
SEED_DTYPE = np.dtype(np.int64)  # the served pipeline's `seed` input type
SEED_LIMITS = np.iinfo(SEED_DTYPE)
SEED_DIGITS = len(str(SEED_LIMITS.max))  # 19: a longer seed (leading zeros aside) is out of range
SEED_TEXT = re.compile(r"-?[0-9]+")  # plain decimal: Python's int() also takes '+', '_', spaces and non-ASCII digits
# The encoder resizes every style image to 256x256, so a bigger one adds only memory (memory.style_bytes: about
# 39 bytes per pixel): 1 GiB takes some 27 megapixels, a phone photo.
STYLE_MEMORY = 2 ** 30
# The names the readers' messages give a body: it has no file name of its own, and a made-up one reads as the user's.
LABELS_NAME, STYLE_NAME = "the label map", "the style image"


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


def parse_synthesis(body: bytes, content_type: str, query_seeds: list[str], config: GeneratorConfig, height: int,
                    width: int) -> SynthesisRequest:
    """Either body form (see the module docstring) -> a checked request, or a `ValueError` naming the problem.
    `query_seeds`: every `?seed=` of the URL."""
    if len(query_seeds) > 1:
        raise ValueError(f"give ?seed= once, not {len(query_seeds)} times")
    query_seed = query_seeds[0] if query_seeds else None
    if not is_json(content_type):
        if re.match(rb"\s*[{\[]", body):
            raise ValueError(f"the body looks like JSON, but its Content-Type is {content_type or 'not given'}; "
                             f"send JSON as {' or '.join(JSON_TYPES)}, or the label PNG itself as the body")
        return SynthesisRequest(read_labels(body, config, height, width),
                                None if query_seed is None else parse_seed(query_seed), None)
    if query_seed is not None:
        raise ValueError("give the seed in the JSON body (\"seed\"), not as ?seed= as well")
    try:
        fields = json.loads(body, parse_int=_json_integer)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"the JSON body does not parse: {error}") from None
    except RecursionError:
        raise ValueError("the JSON body does not parse: it nests too deeply") from None
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


def is_json(content_type: str) -> bool:
    """Whether a Content-Type header is one of `JSON_TYPES`."""
    media = content_type.split(";")[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def read_labels(data: bytes, config: GeneratorConfig, height: int, width: int) -> np.ndarray:
    """A label PNG's bytes -> uint8 class indices `[H, W]`, checked as the client library checks a label file."""
    if not data:
        raise ValueError("the label map is empty (0 bytes); send a single-channel label PNG")
    with _as_file(data, LABELS_NAME) as path:
        size = _header_size(path)
        if size != (height, width):
            # The contract's words, from a stand-in of the header's size that costs no memory (a broadcast view).
            io_spec.check_labels(np.broadcast_to(np.uint8(0), size), config, height, width)
        labels = read_label_png(path, config)
    return io_spec.check_labels(labels, config, height, width)[0]


def read_style(data: bytes) -> np.ndarray:
    """An image file's bytes (PNG, JPEG, …) -> uint8 RGB `[h, w, 3]`, within `STYLE_MEMORY`."""
    if not data:
        raise ValueError("the style image is empty (0 bytes)")
    with _as_file(data, STYLE_NAME) as path:
        height, width = _header_size(path)
        needed = memory.style_bytes(1, height, width)
        if needed > STYLE_MEMORY:
            raise ValueError(f"the style image is {height}x{width} (HxW): encoding it would need about "
                             f"{memory.format_bytes(needed)} (estimate), above the studio's "
                             f"{memory.format_bytes(STYLE_MEMORY)} for a style image; scale it down (the encoder "
                             f"resizes it to 256x256 anyway)")
        return read_rgb(path)


def parse_seed(value: Any) -> int:
    """A seed from JSON or the query string: an integer that fits the pipeline's int64 `seed`, as text in plain
    decimal digits (its length checked before `int()`, which refuses thousands of digits in other words)."""
    if isinstance(value, str) and SEED_TEXT.fullmatch(value) and len(value.lstrip("-").lstrip("0")) <= SEED_DIGITS:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_LIMITS.min <= value <= SEED_LIMITS.max:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:30]}… ({len(str(value))} characters)"
        raise ValueError(f"seeds must be whole numbers in decimal digits from {SEED_LIMITS.min} to "
                         f"{SEED_LIMITS.max} ({SEED_DTYPE}), got {shown}")
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


def _json_integer(text: str) -> int:
    """A JSON integer; one longer than any seed is refused before `int()` (see `parse_seed`)."""
    if len(text.lstrip("-").lstrip("0")) > SEED_DIGITS:
        raise ValueError(f"the JSON body holds an integer of {len(text)} characters; its one integer, \"seed\", "
                         f"lies from {SEED_LIMITS.min} to {SEED_LIMITS.max} ({SEED_DTYPE})")
    return int(text)


def _base64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"\"{field}\" must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise ValueError(f"\"{field}\" is not valid base64 ({error})") from None


def _header_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header: PIL decodes the pixels only when they are asked for."""
    with open_image(path) as image:
        return image.height, image.width


@contextlib.contextmanager
def _as_file(data: bytes, shown: str) -> Iterator[Path]:
    """The body as a file in a private temporary folder: the readers of spade_deploy.model take files. Their error
    messages name it `shown` ("the label map")."""
    with tempfile.TemporaryDirectory(prefix="spade-studio-") as directory:
        path = Path(directory) / "body"
        path.write_bytes(data)
        try:
            yield path
        except ValueError as error:
            raise ValueError(str(error).replace(str(path), shown)) from None
