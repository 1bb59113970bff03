"""The studio's web application (FastAPI): the page, and the HTTP API it uses (others can use it too).

    GET  /                       the page (static/index.html, with static/studio.js and static/studio.css)
    GET  /api/model              the model: backend, size, classes (name, colour, raw PNG value), takes_seed/style
    POST /api/synthesize         label PNG (+ seed, style) -> PNG image; see spade_deploy.studio.bodies
    POST /api/labels             label PNG -> its class indices, one byte per pixel, row by row (the page's map)
    GET  /api/examples           [{"name", "url"}] of example label maps
    GET  /api/examples/{i}.png   example i as a label PNG in the model's encoding

Every GET also answers HEAD (its headers alone). Every error is JSON `{"error": "..."}`: 400 for a bad input (the
client library's words; also a query parameter a POST does not take), 413 for a body over the limit, 404 for an
unknown path or example, 502/503/504 when the backend (a Triton server) fails, is gone or is slow. One synthesis runs
at a time: the page sends at most one request at once, and the CPU is the model's.
"""
from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from spade_deploy.client import ModelNotReady, RequestTimeout, ServerUnavailable
from spade_deploy.errors import Failure
from spade_deploy.model import io_spec
from spade_deploy.studio.backends import Backend
from spade_deploy.studio.bodies import (MAX_BODY_BYTES, BodyTooLarge, SynthesisRequest, label_png, parse_synthesis,
                                        read_body, read_labels, rgb_png)
from spade_deploy.studio.catalog import example_maps, model_classes

STATIC = Path(__file__).with_name("static")
LATENCY_HEADER = "X-Model-Latency-Ms"  # milliseconds the backend took for the image (a server: with the round trip)
SEED_HEADER = "X-Seed"  # the seed the latent was drawn with (VAE models without a style image)


def create_app(backend: Backend, *, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The studio for `backend`; `max_body` caps every request body (bytes)."""
    config, height, width = backend.config, backend.height, backend.width
    examples = example_maps(config, height, width)
    description = {"backend": backend.kind, "source": backend.source, "preset": config.preset, "height": height,
                   "width": width, "takes_seed": backend.takes_seed, "takes_style": backend.takes_style,
                   "classes": [cls.to_dict() for cls in model_classes(config)], "max_body_bytes": max_body}
    running = threading.Lock()

    # No generated API docs: the endpoints take raw bodies (documented above), and the docs page loads from a CDN.
    app = FastAPI(title="spade-deploy studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def get(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return app.api_route(path, methods=["GET", "HEAD"])  # HTTP asks every GET resource to take HEAD too

    @get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @get("/api/model")
    def model() -> dict[str, object]:
        return description

    @get("/api/examples")
    def example_list() -> list[dict[str, str]]:
        return [{"name": name, "url": f"/api/examples/{index}.png"} for index, (name, _) in enumerate(examples)]

    @get("/api/examples/{index:int}.png")
    def example(index: int) -> Response:
        if not 0 <= index < len(examples):
            raise HTTPException(404, f"no example {index}: this model has {len(examples)}"
                                     + (f" (0..{len(examples) - 1})" if examples else ""))
        return Response(label_png(examples[index][1], config), media_type="image/png")

    @app.post("/api/labels")
    async def labels(request: Request) -> Response:
        check_query(request)
        body = await read_body(request.stream(), max_body)
        indices = await run_in_threadpool(read_labels, body, config, height, width)
        return Response(indices.tobytes(), media_type="application/octet-stream")

    @app.post("/api/synthesize")
    async def synthesize(request: Request) -> Response:
        check_query(request, "seed")
        body = await read_body(request.stream(), max_body)
        parsed = await run_in_threadpool(parse_synthesis, body, request.headers.get("content-type", ""),
                                         request.query_params.getlist("seed"), config, height, width)
        return await run_in_threadpool(_synthesize, parsed)

    def _synthesize(request: SynthesisRequest) -> Response:
        seed = _latent_choice(backend, request)
        with running:
            start = time.perf_counter()
            image = backend.synthesize(request.labels, seed, request.style)
            latency = time.perf_counter() - start
        headers = {LATENCY_HEADER: f"{latency * 1000:.1f}"}
        if seed is not None:
            headers[SEED_HEADER] = str(seed)
        return Response(rgb_png(np.asarray(image)), media_type="image/png", headers=headers)

    @app.exception_handler(ValueError)
    @app.exception_handler(Failure)
    async def refused(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error_status(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    return app


def check_query(request: Request, *names: str) -> None:
    """A `ValueError` for query parameters other than `names` (a mistyped `?sed=7` would otherwise be ignored)."""
    unknown = sorted(set(request.query_params) - set(names))
    if unknown:
        takes = " and ".join(f"?{name}=" for name in names) or "no query parameters"
        raise ValueError(f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"{request.url.path} takes {takes}")


def _latent_choice(backend: Backend, request: SynthesisRequest) -> int | None:
    """The seed to synthesize with: refused for a model that draws no latent (in the client library's words),
    drawn here when a VAE model gets neither seed nor style, so the answer can say which seed it was."""
    io_spec.check_latent_options(backend.config, has_encoder=backend.takes_style, style=request.style is not None,
                                 seed=request.seed is not None)
    if backend.takes_seed and request.seed is None and request.style is None:
        return secrets.randbits(63)
    return request.seed


def error_status(error: Exception) -> int:
    """The HTTP status of an error: the input's fault (4xx) or the backend's (5xx)."""
    if isinstance(error, BodyTooLarge):
        return 413
    if isinstance(error, ValueError):  # the client's InvalidInput included: the server refused the input
        return 400
    if isinstance(error, (ServerUnavailable, ModelNotReady)):
        return 503
    if isinstance(error, RequestTimeout):
        return 504
    return 502
