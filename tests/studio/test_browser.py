"""The studio page in a real headless Chromium (selenium), over a real `spade-deploy paint` with the bundled model:
real pointer input (mouse and touch) paints, fills, undoes; the page's label map, the canvas pixels, the PNG it saves
and the images it shows are read back and checked against the API and the model. Skips, with the reason, where
Chromium, chromedriver or selenium is missing."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from spade_deploy.data.landscapes import CLASSES, MOUNTAIN, SKY, VALIDATION_SEED, WATER, render, sample_seed
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.labels import read_label_png, write_label_png
from tests.studio import browser
from tests.studio.browser import choose, click, label_map, stroke, wait, wait_for_result
from tests.studio.process import Studio, assert_close

SIZE = 128  # the bundled model's
CONFIG = GeneratorConfig(label_nc=len(CLASSES), crop_size=SIZE)  # its label encoding: raw PNG value = class index
COLOURS = np.array([cls.colour for cls in CLASSES], np.uint8)
WIDE, PHONE = (1280, 800), (390, 844)  # CSS pixels


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads: Path) -> Iterator[Any]:
    reason = browser.missing()
    if reason:
        pytest.skip(reason)
    chrome = browser.start_chrome(*WIDE, downloads=downloads)
    yield chrome
    chrome.quit()


@pytest.fixture
def page(driver: Any, bundled_studio: Studio) -> Any:
    """The studio freshly loaded in a wide window, its first image (of the blank sky map) shown."""
    driver.set_window_size(*WIDE)
    driver.get(bundled_studio.url + "/")
    wait(driver, "return window.studio && window.studio.ready")
    wait_for_result(driver)
    return driver


def api_image(studio: Studio, body: bytes, query: str = "", content_type: str = "image/png") -> np.ndarray:
    return studio.post("/api/synthesize" + query, body, content_type).image()


def download(driver: Any, selector: str, path: Path) -> bytes:
    """Click a download button or link and read what Chromium saved at `path`."""
    path.unlink(missing_ok=True)
    click(driver, selector)
    deadline = time.monotonic() + 30
    while not path.is_file() and time.monotonic() < deadline:  # Chromium writes a .crdownload, then renames it
        time.sleep(0.05)
    return path.read_bytes()


def test_paint_fill_undo_and_redo_hold_exactly_the_painted_classes(page: Any, bundled_studio: Studio) -> None:
    assert not label_map(page).any()  # a blank page of class 0, sky
    click(page, f'.swatch[data-class="{MOUNTAIN}"]')
    choose(page, "brush-size", "16")
    stroke(page, [(0.5, 64.5), (40.5, 60.5), (90.5, 68.5), (127.5, 64.5)])  # across the whole width
    band = label_map(page)
    assert set(np.unique(band)) == {SKY, MOUNTAIN}
    assert (band[:44] == SKY).all() and (band[85:] == SKY).all()
    assert (band[62:67] == MOUNTAIN).all()  # closed from edge to edge, so it splits the sky in two

    click(page, '.tool[data-tool="fill"]')
    click(page, f'.swatch[data-class="{WATER}"]')
    stroke(page, [(64.5, 110.5)])
    filled = label_map(page)
    assert set(np.unique(filled)) == {SKY, MOUNTAIN, WATER}
    np.testing.assert_array_equal(filled == MOUNTAIN, band == MOUNTAIN)
    below = np.arange(SIZE)[:, None] > np.argmax(band == MOUNTAIN, axis=0)[None, :]  # under each column's band
    np.testing.assert_array_equal(filled[below & (band == SKY)], WATER)  # all of the lower sky, 4-connected
    np.testing.assert_array_equal(filled[~below & (band == SKY)], SKY)
    # No antialiasing: every canvas pixel is exactly the colour of its one class.
    pixels = np.array(page.execute_script("return studio.canvasPixels()"), np.uint8).reshape(SIZE, SIZE, 4)
    np.testing.assert_array_equal(pixels[..., :3], COLOURS[filled])
    assert (pixels[..., 3] == 255).all()

    click(page, "#undo")
    np.testing.assert_array_equal(label_map(page), band)
    click(page, "#undo")
    assert not label_map(page).any()
    click(page, "#redo")
    click(page, "#redo")
    np.testing.assert_array_equal(label_map(page), filled)

    # The image shown is the model's image of this map, from the PNG the page sends.
    shown = wait_for_result(page)
    png = base64.b64decode(page.execute_script("return studio.labelPng()"))
    assert_close(shown, api_image(bundled_studio, png))


def test_a_result_arrives_and_follows_each_stroke(page: Any, bundled_studio: Studio) -> None:
    first = wait_for_result(page)
    sent = page.execute_script("return studio.status().sent")
    click(page, f'.swatch[data-class="{MOUNTAIN}"]')
    choose(page, "brush-size", "32")
    stroke(page, [(10.5, 100.5), (120.5, 90.5)])
    second = wait_for_result(page)
    assert page.execute_script("return studio.status().sent") == sent + 1
    assert (first != second).any()
    png = base64.b64decode(page.execute_script("return studio.labelPng()"))
    assert_close(second, api_image(bundled_studio, png))
    latency = page.find_element("id", "latency").text
    assert latency.startswith("model ") and " ms · round trip " in latency, latency


def test_edits_while_a_request_runs_are_coalesced_into_one_more(page: Any) -> None:
    before = page.execute_script("return studio.status().sent")
    click(page, f'.swatch[data-class="{WATER}"]')
    stroke(page, [(5.5, 5.5), (60.5, 5.5)])
    # Ten edits in one task, while that stroke's request is in flight: they replace each other in the one slot.
    page.execute_script("for (let i = 0; i < 5; i++) { document.getElementById('undo').click(); "
                        "document.getElementById('redo').click(); }")
    wait_for_result(page)
    status = page.execute_script("return studio.status()")
    assert status["sent"] - before <= 2, status  # the stroke's, and at most one for all ten edits
    assert status["received"] == status["sent"] and status["failed"] == 0, status


def test_save_gives_the_png_the_api_takes_and_load_reads_it_back(page: Any, bundled_studio: Studio,
                                                                  downloads: Path, tmp_path: Path) -> None:
    click(page, f'.swatch[data-class="{MOUNTAIN}"]')
    stroke(page, [(20.5, 80.5), (100.5, 70.5)])
    painted = label_map(page)
    data = download(page, "#save-map", downloads / "labels.png")
    assert data == base64.b64decode(page.execute_script("return studio.labelPng()"))
    np.testing.assert_array_equal(read_label_png(downloads / "labels.png", CONFIG), painted)
    shown = wait_for_result(page)
    assert_close(shown, api_image(bundled_studio, data))
    image = download(page, "#download-result", downloads / "result.png")
    assert image == base64.b64decode(page.execute_script("return studio.resultPng()"))

    example = render(sample_seed(VALIDATION_SEED, 4), SIZE)[0]
    write_label_png(tmp_path / "mine.png", example, CONFIG)
    page.find_element("id", "load-map").send_keys(str(tmp_path / "mine.png"))
    wait(page, "return document.getElementById('status').textContent.startsWith('loaded')")
    np.testing.assert_array_equal(label_map(page), example)

    # A file the API refuses leaves the map as it was and shows the server's reason, naming the user's file.
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "photo.png")
    page.find_element("id", "load-map").send_keys(str(tmp_path / "photo.png"))
    reason = bundled_studio.post("/api/labels", (tmp_path / "photo.png").read_bytes()).json()["error"]
    assert reason.startswith("the label map is an image of mode RGB; "), reason
    assert error_status(page) == f"cannot load photo.png: {reason}"
    np.testing.assert_array_equal(label_map(page), example)


def test_examples_load_the_held_out_maps(page: Any) -> None:
    click(page, "#examples button:nth-child(3)")
    np.testing.assert_array_equal(label_map(page), render(sample_seed(VALIDATION_SEED, 2), SIZE)[0])
    wait_for_result(page)


def test_a_phone_sized_window_paints_with_a_finger(page: Any) -> None:
    page.set_window_size(*PHONE)
    width = page.execute_script("return document.documentElement.clientWidth")
    canvas, result = page.execute_script(
        "return ['labels', 'result'].map((id) => document.getElementById(id).getBoundingClientRect().toJSON())")
    assert 0 <= canvas["left"] and canvas["right"] <= width and result["right"] <= width
    assert canvas["top"] < result["bottom"] and result["top"] < canvas["bottom"]  # side by side
    click(page, f'.swatch[data-class="{WATER}"]')
    stroke(page, [(10.5, 100.5), (118.5, 100.5)], kind="touch")
    labels = label_map(page)
    assert set(np.unique(labels)) == {SKY, WATER} and (labels[100, 12:117] == WATER).all()
    wait_for_result(page)


def error_status(driver: Any) -> str:
    """The status line's text, once it shows an error."""
    return wait(driver, "const s = document.getElementById('status'); "
                        "return s.classList.contains('error') && s.textContent")


@pytest.fixture
def vae_page(driver: Any, vae_studio: Studio) -> Any:
    """The studio over the VAE model with its encoder, freshly loaded, its first image shown."""
    driver.set_window_size(*WIDE)
    driver.get(vae_studio.url + "/")
    wait(driver, "return window.studio && window.studio.ready")
    wait_for_result(driver)
    return driver


def type_seed(driver: Any, text: str) -> None:
    """Replace the seed box's text with `text`, then Enter, as a user types it."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "seed")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys((text or Keys.DELETE) + Keys.ENTER)


def test_a_vae_model_has_seed_and_style_controls(vae_page: Any, vae_studio: Studio, tmp_path: Path) -> None:
    driver = vae_page
    shown = wait_for_result(driver)
    assert driver.find_element("id", "latent-group").is_displayed()
    status = driver.execute_script("return studio.status()")
    assert status["resultSeed"] == str(status["seed"])
    png = base64.b64decode(driver.execute_script("return studio.labelPng()"))
    assert_close(shown, api_image(vae_studio, png, f"?seed={status['seed']}"))

    # "New seed" draws another; while "keep the seed" is on, a stroke keeps it; off, every image draws a new one.
    click(driver, "#new-seed")
    wait_for_result(driver, newer_than=status["received"])
    seeds = [driver.execute_script("return studio.status()")["seed"]]
    assert seeds[0] != status["seed"]
    for keep in (True, False):
        if not keep:
            click(driver, "#keep-seed")
        received = driver.execute_script("return studio.status().received")
        click(driver, f'.swatch[data-class="{len(seeds) + 2}"]')
        stroke(driver, [(10.5, 10.5 * len(seeds)), (50.5, 10.5 * len(seeds))])
        shown = wait_for_result(driver, newer_than=received)
        seeds.append(driver.execute_script("return studio.status()")["seed"])
        png = base64.b64decode(driver.execute_script("return studio.labelPng()"))
        assert_close(shown, api_image(vae_studio, png, f"?seed={seeds[-1]}"))
    assert seeds[1] == seeds[0] and seeds[2] != seeds[1]

    # A style image: the latent is its encoding, whatever the seed.
    style = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(style).save(tmp_path / "style.png")
    received = driver.execute_script("return studio.status().received")
    driver.find_element("id", "style-file").send_keys(str(tmp_path / "style.png"))
    shown = wait_for_result(driver, newer_than=received)
    assert driver.execute_script("return studio.status().resultSeed") is None
    request = {"labels": base64.b64encode(png).decode(),
               "style": base64.b64encode((tmp_path / "style.png").read_bytes()).decode()}
    assert_close(shown, api_image(vae_studio, json.dumps(request).encode(), content_type="application/json"))


def test_the_seed_box_takes_every_int64_seed_exactly_and_keeps_the_seed_on_bad_text(vae_page: Any,
                                                                                  vae_studio: Studio) -> None:
    driver = vae_page
    png = base64.b64decode(driver.execute_script("return studio.labelPng()"))
    for seed in ("9223372036854775807", "12345678901234567", "-9223372036854775808"):  # beyond 2 ** 53
        received = driver.execute_script("return studio.status().received")
        type_seed(driver, seed)
        shown = wait_for_result(driver, newer_than=received)
        status = driver.execute_script("return studio.status()")
        assert (status["seed"], status["resultSeed"]) == (seed, seed)
        assert driver.find_element("id", "seed").get_attribute("value") == seed
        assert driver.find_element("id", "latency").text.endswith(f" · seed {seed}")
        assert_close(shown, api_image(vae_studio, png, f"?seed={seed}"))

    # Text that is no int64 seed, or none at all, sends nothing: the seed stays, and the page says why.
    sent = driver.execute_script("return studio.status().sent")
    for text in ("1e21", "9223372036854775808", "1_000", ""):
        type_seed(driver, text)
        what = f'"{text}" is not a seed' if text else "the seed box is empty"
        assert error_status(driver) == (f"{what}: a seed is a whole number from -9223372036854775808 to "
                                        f"9223372036854775807; the seed stays -9223372036854775808")
        assert driver.find_element("id", "seed").get_attribute("value") == "-9223372036854775808"
    assert driver.execute_script("return studio.status()")["sent"] == sent


def test_a_style_image_the_server_refuses_is_dropped_with_the_reason(vae_page: Any, vae_studio: Studio,
                                                                      tmp_path: Path) -> None:
    driver = vae_page
    (tmp_path / "notes.png").write_bytes(b"not an image")
    received = driver.execute_script("return studio.status().received")
    driver.find_element("id", "style-file").send_keys(str(tmp_path / "notes.png"))
    message = error_status(driver)
    reason = vae_studio.post("/api/synthesize", json.dumps({
        "labels": driver.execute_script("return studio.labelPng()"),
        "style": base64.b64encode(b"not an image").decode()}).encode(), "application/json").json()["error"]
    assert message == f"cannot use notes.png as the style image: {reason}; back to no style image"
    # Back to seeds: the seed controls work again, and the next stroke makes an image with the seed.
    wait_for_result(driver, newer_than=received)
    assert not driver.find_element("id", "style-info").is_displayed()
    assert driver.find_element("id", "seed").is_enabled()
    click(driver, '.swatch[data-class="3"]')
    stroke(driver, [(5.5, 5.5), (40.5, 40.5)])
    wait_for_result(driver, newer_than=received + 1)
    status = driver.execute_script("return studio.status()")
    assert (status["resultSeed"], status["error"]) == (status["seed"], None)
    assert error_status(driver) == message  # the reason stays until something else is said
