"""The studio's HTTP API against real `spade-deploy paint` processes: the bundled model (PyTorch), a tiny VAE export
with its encoder (ONNX Runtime), and the same export behind a real Triton server. Images are checked against local
synthesis of the same map; refusals against the client library's own words for the same input."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from spade_deploy.client import SERVING_RETRIES
from spade_deploy.data.landscapes import (CLASSES, MOUNTAIN, SKY, VALIDATION_SEED, WATER, bundled_model, render,
                                          sample_seed)
from spade_deploy.model import io_spec, memory
from spade_deploy.model.checkpoint import load_generator
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.labels import read_label_png, write_label_png
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.sampling import sample_latent
from spade_deploy.model.tensors import tensor_to_rgb, to_semantic_input
from spade_deploy.serve.repository import write_repository
from spade_deploy.serve.server import TritonServer
from spade_deploy.studio.bodies import MAX_BODY_BYTES, STYLE_MEMORY
from tests.fixtures.serving import Exported, require_triton
from tests.studio.process import Studio, assert_close

SIZE = 128  # the bundled model's
SEED_WORDS = "seeds must be whole numbers in decimal digits from -9223372036854775808 to 9223372036854775807 (int64)"


@pytest.fixture(scope="module")
def landscape_generator() -> SPADEGenerator:
    return load_generator(bundled_model())


def png_file(path: Path, array: np.ndarray) -> bytes:
    Image.fromarray(array).save(path, format="PNG")
    return path.read_bytes()


def label_bytes(tmp_path: Path, labels: np.ndarray, config: GeneratorConfig) -> bytes:
    write_label_png(tmp_path / "map.png", labels, config)
    return (tmp_path / "map.png").read_bytes()


def local_landscape(generator: SPADEGenerator, labels: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return tensor_to_rgb(generator(to_semantic_input(labels, None, generator.config)))[0]


def sky_mountains_water() -> np.ndarray:
    labels = np.full((SIZE, SIZE), SKY, np.uint8)
    ridge = 50 + (12 * np.abs(np.sin(np.arange(SIZE) / 17))).astype(int)
    labels[np.arange(SIZE)[:, None] >= ridge[None, :]] = MOUNTAIN
    labels[90:] = WATER
    return labels


def reader_words(tmp_path: Path, data: bytes, config: GeneratorConfig) -> str:
    """What the client library says of this file as a label map (it reads label files with read_label_png), naming
    the body "the label map", as the studio does: a body has no file name."""
    folder = tmp_path / "client"
    folder.mkdir(exist_ok=True)
    (folder / "labels.png").write_bytes(data)
    words = refusal(lambda path: read_label_png(path, config), folder / "labels.png")
    return words.replace(str(folder / "labels.png"), "the label map")


def refusal(function: Callable[[Any], object], argument: Any) -> str:
    """The message of the `ValueError` that `function(argument)` raises."""
    with pytest.raises(ValueError) as refused:
        function(argument)
    return str(refused.value)


def test_model_describes_the_bundled_landscape_model(bundled_studio: Studio) -> None:
    model = bundled_studio.get("/api/model").json()
    assert (model["backend"], model["height"], model["width"]) == ("pytorch", SIZE, SIZE)
    assert model["source"] == str(bundled_model())
    assert (model["takes_seed"], model["takes_style"]) == (False, False)
    assert model["classes"] == [{"index": index, "name": cls.name, "colour": list(cls.colour), "raw": index}
                                for index, cls in enumerate(CLASSES)]


def test_synthesize_gives_the_local_image_of_the_map(bundled_studio: Studio, landscape_generator: SPADEGenerator,
                                                     tmp_path: Path) -> None:
    labels = sky_mountains_water()
    body = label_bytes(tmp_path, labels, landscape_generator.config)
    reply = bundled_studio.post("/api/synthesize", body)
    expected = local_landscape(landscape_generator, labels)
    assert_close(reply.image(), expected)
    assert float(reply.headers["X-Model-Latency-Ms"]) > 0
    assert "X-Seed" not in reply.headers  # a segmap model draws no latent
    # The JSON form, with the PNG in base64, is the same request.
    as_json = json.dumps({"labels": base64.b64encode(body).decode()}).encode()
    assert_close(bundled_studio.post("/api/synthesize", as_json, "application/json").image(), expected)


def test_examples_are_the_demos_held_out_maps(bundled_studio: Studio, landscape_generator: SPADEGenerator,
                                              tmp_path: Path) -> None:
    config = landscape_generator.config
    examples = bundled_studio.get("/api/examples").json()
    assert len(examples) == 6
    for index, example in enumerate(examples):
        reply = bundled_studio.get(example["url"])
        assert reply.status == 200 and reply.headers["Content-Type"] == "image/png"
        (tmp_path / "example.png").write_bytes(reply.body)
        expected = render(sample_seed(VALIDATION_SEED, index), SIZE)[0]
        np.testing.assert_array_equal(read_label_png(tmp_path / "example.png", config), expected)
        # /api/labels reads a label PNG into the page's map: one byte per pixel, row by row.
        decoded = bundled_studio.post("/api/labels", reply.body)
        assert decoded.status == 200
        np.testing.assert_array_equal(np.frombuffer(decoded.body, np.uint8).reshape(SIZE, SIZE), expected)


def test_bad_requests_get_the_client_librarys_words_and_the_server_keeps_serving(
        bundled_studio: Studio, landscape_generator: SPADEGenerator, tmp_path: Path) -> None:
    config = landscape_generator.config
    good = sky_mountains_water()
    out_of_range = good.copy()
    out_of_range[:3, :4] = 12
    bad_range = png_file(tmp_path / "bad-range.png", out_of_range)  # raw value = class index; write_label_png refuses
    rgb = png_file(tmp_path / "rgb.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    small = label_bytes(tmp_path, good[:64, :64], config)
    wrong_size = refusal(lambda labels: io_spec.check_labels(labels, config, SIZE, SIZE), good[:64, :64])
    # The contract's words for a seed and a style image given to a model without them (the client's too).
    seeded = refusal(lambda seed: io_spec.check_latent_options(config, has_encoder=False, style=False, seed=True), 3)
    styled = refusal(lambda style: io_spec.check_latent_options(config, has_encoder=False, style=True, seed=False),
                     None)
    cases = {  # name: (path, body, content type, status, the error's words)
        "wrong size": ("/api/synthesize", small, "image/png", 400, wrong_size),
        "out-of-range class": ("/api/synthesize", bad_range, "image/png", 400,
                               reader_words(tmp_path, bad_range, config)),
        "not a PNG": ("/api/synthesize", b"GIF89a, or anything else", "image/png", 400,
                      reader_words(tmp_path, b"GIF89a, or anything else", config)),
        "RGB PNG": ("/api/synthesize", rgb, "image/png", 400, reader_words(tmp_path, rgb, config)),
        "RGB PNG to /api/labels": ("/api/labels", rgb, "image/png", 400, reader_words(tmp_path, rgb, config)),
        "a query to /api/labels": ("/api/labels?seed=1", label_bytes(tmp_path, good, config), "image/png", 400,
                                   "unknown query parameter seed; /api/labels takes no query parameters"),
        "empty body": ("/api/synthesize", b"", "image/png", 400,
                       "the label map is empty (0 bytes); send a single-channel label PNG"),
        "oversized body": ("/api/synthesize", bytes(MAX_BODY_BYTES + 1), "image/png", 413,
                           f"the request body has {MAX_BODY_BYTES + 1} bytes; the studio takes at most "
                           f"{MAX_BODY_BYTES} bytes"),
        "seed for a segmap model": ("/api/synthesize?seed=3", label_bytes(tmp_path, good, config), "image/png", 400,
                                    seeded),
        "style without an encoder": ("/api/synthesize", json.dumps(
            {"labels": base64.b64encode(label_bytes(tmp_path, good, config)).decode(),
             "style": base64.b64encode(rgb).decode()}).encode(), "application/json", 400, styled),
        "seed not an integer": ("/api/synthesize?seed=seven", label_bytes(tmp_path, good, config), "image/png", 400,
                                f"{SEED_WORDS}, got 'seven'"),
        "JSON that does not parse": ("/api/synthesize", b"{labels", "application/json", 400,
                                     f"the JSON body does not parse: {refusal(json.loads, b'{labels')}"),
        "JSON nested too deeply": ("/api/synthesize", b"[" * 100000 + b"]" * 100000, "application/json", 400,
                                   "the JSON body does not parse: it nests too deeply"),
        "JSON as text/plain": ("/api/synthesize", b'{"labels": ""}', "text/plain", 400,
                               "the body looks like JSON, but its Content-Type is text/plain; send JSON as "
                               "application/json or text/json or application/*+json, or the label PNG itself as the "
                               "body"),
        "unknown JSON field": ("/api/synthesize", b'{"labels": "", "colour": 1}', "application/json", 400,
                               "unknown JSON fields ['colour']; the fields are ['labels', 'seed', 'style']"),
        "labels not base64": ("/api/synthesize", b'{"labels": "not base64!"}', "application/json", 400,
                              f"\"labels\" is not valid base64 "
                              f"({refusal(lambda text: base64.b64decode(text, validate=True), 'not base64!')})"),
    }
    for name, (path, body, content_type, status, words) in cases.items():
        reply = bundled_studio.post(path, body, content_type)
        assert (reply.status, reply.headers["Content-Type"]) == (status, "application/json"), (name, reply.body)
        assert reply.json() == {"error": words}, name
    # The body is no file of the user's: the words name it "the label map", not a made-up file name.
    assert cases["RGB PNG"][-1].startswith("the label map is an image of mode RGB; "), cases["RGB PNG"][-1]
    missing = bundled_studio.get("/api/examples/6.png")
    assert (missing.status, missing.json()) == (404, {"error": "no example 6: this model has 6 (0..5)"})
    assert bundled_studio.get("/nowhere").status == 404

    reply = bundled_studio.post("/api/synthesize", label_bytes(tmp_path, good, config))
    assert_close(reply.image(), local_landscape(landscape_generator, good))


def peak_memory(studio: Studio) -> int:
    """The studio process's peak resident memory so far, in bytes (Linux's VmHWM)."""
    for line in Path(f"/proc/{studio.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_a_small_png_of_a_huge_label_map_is_refused_by_its_header(bundled_studio: Studio, tmp_path: Path) -> None:
    """A few KiB of PNG that decode to 36 megapixels (288 MB as int64 labels): refused before decoding."""
    huge = png_file(tmp_path / "huge.png", np.zeros((6000, 6000), np.uint8))
    assert len(huge) < 64 * 2 ** 10
    before = peak_memory(bundled_studio)
    for path in ("/api/synthesize", "/api/labels"):
        reply = bundled_studio.post(path, huge)
        assert (reply.status, reply.json()) == (400, {"error": "label maps must be 128x128 (HxW) for this model, "
                                                               "got 6000x6000"}), path
    assert peak_memory(bundled_studio) - before < 16 * 2 ** 20


def test_get_routes_answer_head_too(bundled_studio: Studio) -> None:
    for path in ("/", "/api/model", "/api/examples", "/api/examples/0.png", "/static/studio.js"):
        got, head = bundled_studio.get(path), bundled_studio.request("HEAD", path)
        assert (head.status, head.body) == (200, b""), path
        assert head.headers["Content-Type"] == got.headers["Content-Type"], path
        assert head.headers["Content-Length"] == str(len(got.body)), path


def vae_map(config: GeneratorConfig, height: int, width: int) -> np.ndarray:
    """Stripes of every class, don't-care included (raw 255 in the PNG)."""
    return (np.arange(width)[None, :] // 6 % config.num_label_channels).repeat(height, 0).astype(np.uint8)


def expected_vae(exported: Exported, labels: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The export run here on the map, with the map as its instance map (the studio paints one instance per class)."""
    feed = {io_spec.LABEL: labels[None], io_spec.INSTANCE: labels[None].astype(np.int32), io_spec.Z: z}
    return exported.run_generator(feed)[io_spec.IMAGE][0]


def check_vae_studio(studio: Studio, exported: Exported, tmp_path: Path, backend: str) -> None:
    config = exported.config
    height, width = config.image_size
    model = studio.get("/api/model").json()
    assert (model["backend"], model["height"], model["width"]) == (backend, height, width)
    assert (model["takes_seed"], model["takes_style"]) == (True, True)
    assert [cls["name"] for cls in model["classes"]] == [f"class {index}" for index in range(10)] + ["don't care"]
    assert [cls["raw"] for cls in model["classes"]] == list(range(10)) + [255]
    assert studio.get("/api/examples").json() == []

    labels = vae_map(config, height, width)
    body = label_bytes(tmp_path, labels, config)
    reply = studio.post("/api/synthesize?seed=7", body)
    assert_close(reply.image(), expected_vae(exported, labels, sample_latent(1, config.z_dim, 7)))
    assert reply.headers["X-Seed"] == "7"

    # Neither seed nor style: the studio draws a seed and says which, so the image can be made again.
    drawn = studio.post("/api/synthesize", body)
    seed = int(drawn.headers["X-Seed"])
    assert_close(drawn.image(), expected_vae(exported, labels, sample_latent(1, config.z_dim, seed)))

    # A style image without a seed: z is the encoder's mean of it.
    style = np.random.default_rng(5).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    request = {"labels": base64.b64encode(body).decode(), "seed": None,
               "style": base64.b64encode(png_file(tmp_path / "style.png", style)).decode()}
    styled = studio.post("/api/synthesize", json.dumps(request).encode(), "application/json")
    mu = exported.run_encoder(style[None])[io_spec.MU]
    assert_close(styled.image(), expected_vae(exported, labels, mu))
    assert "X-Seed" not in styled.headers


def test_an_onnx_vae_export_with_its_encoder(vae_studio: Studio, exported_vae: Exported, tmp_path: Path) -> None:
    check_vae_studio(vae_studio, exported_vae, tmp_path, "onnxruntime")


def test_seeds_are_int64_in_plain_decimal_given_once(vae_studio: Studio, exported_vae: Exported,
                                                     tmp_path: Path) -> None:
    config = exported_vae.config
    labels = vae_map(config, *config.image_size)
    body = label_bytes(tmp_path, labels, config)
    images = {}
    for seed in (2 ** 63 - 1, -2 ** 63, 12345678901234567, 7):
        reply = vae_studio.post(f"/api/synthesize?seed={seed}", body)
        assert reply.headers["X-Seed"] == str(seed)
        images[seed] = reply.image()
        assert_close(images[seed], expected_vae(exported_vae, labels, sample_latent(1, config.z_dim, seed)))
    assert len({image.tobytes() for image in images.values()}) == len(images)
    # JSON: the seed as a number, or as its decimal text (what a JavaScript client can send exactly); JSON's content
    # types all take the JSON form.
    encoded = base64.b64encode(body).decode()
    for seed, content_type in ((2 ** 63 - 1, "application/json"), (str(2 ** 63 - 1), "text/json"),
                               (-2 ** 63, "application/vnd.spade+json; charset=utf-8")):
        reply = vae_studio.post("/api/synthesize", json.dumps({"labels": encoded, "seed": seed}).encode(),
                                content_type)
        assert reply.headers["X-Seed"] == str(seed)
        np.testing.assert_array_equal(reply.image(), images[int(seed)])

    digits = "1" * 5000
    refused = {
        "?seed=7&seed=8": "give ?seed= once, not 2 times",
        "?sed=7": "unknown query parameter sed; /api/synthesize takes ?seed=",
        "?seed=7&style=a&z=1": "unknown query parameters style, z; /api/synthesize takes ?seed=",
        "?seed=1_000": f"{SEED_WORDS}, got '1_000'",
        "?seed=%2B7": f"{SEED_WORDS}, got '+7'",
        "?seed=%207": f"{SEED_WORDS}, got ' 7'",
        "?seed=1e21": f"{SEED_WORDS}, got '1e21'",
        "?seed=": f"{SEED_WORDS}, got ''",
        "?seed=9223372036854775808": f"{SEED_WORDS}, got 9223372036854775808",
        f"?seed={digits}": f"{SEED_WORDS}, got '{digits[:29]}… (5000 characters)",
    }
    for query, words in refused.items():
        reply = vae_studio.post(f"/api/synthesize{query}", body)
        assert (reply.status, reply.json()) == (400, {"error": words}), query[:30]
    for seed, words in ((digits, f"{SEED_WORDS}, got '{digits[:29]}… (5000 characters)"),
                        ("-0x1", f"{SEED_WORDS}, got '-0x1'"), (2 ** 63, f"{SEED_WORDS}, got {2 ** 63}")):
        reply = vae_studio.post("/api/synthesize", json.dumps({"labels": encoded, "seed": seed}).encode(),
                                "application/json")
        assert (reply.status, reply.json()) == (400, {"error": words}), str(seed)[:30]
    reply = vae_studio.post("/api/synthesize", f'{{"labels": "{encoded}", "seed": {digits}}}'.encode(),
                            "application/json")
    assert (reply.status, reply.json()) == (400, {"error": 'the JSON body holds an integer of 5000 characters; its '
                                                           'one integer, "seed", lies from -9223372036854775808 to '
                                                           '9223372036854775807 (int64)'})


def test_a_small_image_too_large_as_a_style_is_refused_by_its_header(vae_studio: Studio, exported_vae: Exported,
                                                                       tmp_path: Path) -> None:
    """The encoder resizes every style to 256x256: one whose encoding would take more than the studio's bound is
    refused before it is decoded (30 megapixels here, 90 MB as RGB)."""
    huge = png_file(tmp_path / "huge.png", np.zeros((5000, 6000, 3), np.uint8))
    labels = vae_map(exported_vae.config, *exported_vae.config.image_size)
    request = {"labels": base64.b64encode(label_bytes(tmp_path, labels, exported_vae.config)).decode(),
               "style": base64.b64encode(huge).decode()}
    before = peak_memory(vae_studio)
    reply = vae_studio.post("/api/synthesize", json.dumps(request).encode(), "application/json")
    needed = memory.style_bytes(1, 5000, 6000)
    assert needed > STYLE_MEMORY
    assert (reply.status, reply.json()) == (400, {"error": f"the style image is 5000x6000 (HxW): encoding it would "
                                                           f"need about {memory.format_bytes(needed)} (estimate), "
                                                           f"above the studio's {memory.format_bytes(STYLE_MEMORY)} "
                                                           f"for a style image; scale it down (the encoder resizes it "
                                                           f"to 256x256 anyway)"})
    assert peak_memory(vae_studio) - before < 16 * 2 ** 20


def test_a_triton_server_and_its_going_away(exported_vae: Exported, tmp_path: Path) -> None:
    """The same export served by Triton gives the same images through the studio; once the server is gone, the studio
    answers 503 with the client's reason (after the retries that ride out a restart), and keeps answering."""
    require_triton()
    write_repository(tmp_path / "repository", exported_vae.generator_onnx, exported_vae.encoder_onnx)
    with TritonServer(tmp_path / "repository") as server:
        studio = Studio("--server", server.grpc_url)
        try:
            check_vae_studio(studio, exported_vae, tmp_path, "triton")
            server.stop()
            labels = vae_map(exported_vae.config, *exported_vae.config.image_size)
            for _ in range(2):
                reply = studio.post("/api/synthesize?seed=1", label_bytes(tmp_path, labels, exported_vae.config))
                assert reply.status == 503, reply.body
                error = reply.json()["error"]
                assert error.startswith(f"no Triton server answered: {SERVING_RETRIES + 1} attempts"), error
                assert f"{server.grpc_url}: failed to connect" in error.lower(), error
            assert studio.get("/api/model").status == 200
        finally:
            assert studio.stop()[0] == 0
