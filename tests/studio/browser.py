"""Headless Chromium through selenium, for the browser tests and the README screenshot: Debian's `chromium` and
`chromium-driver` packages (or CHROMIUM / CHROMEDRIVER naming other binaries). Nothing is downloaded: selenium's own
driver manager is never asked. Below, the few moves both make on the studio page."""
from __future__ import annotations

import base64
import importlib.util
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")  # the browser's names on PATH, Debian's first


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _binary("CHROMIUM", *CHROMIUM) is None:
        return "no Chromium on PATH (apt-get install chromium chromium-driver, or set CHROMIUM)"
    if _binary("CHROMEDRIVER", "chromedriver") is None:
        return "no chromedriver on PATH (apt-get install chromium-driver, or set CHROMEDRIVER)"
    return None


def start_chrome(width: int, height: int, downloads: Path | None = None) -> Any:
    """A headless Chromium window of width x height CSS pixels; downloads land in `downloads`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary("CHROMIUM", *CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--hide-scrollbars", f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(argument)  # --no-sandbox: CI containers run as root, where the sandbox cannot start
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(_binary("CHROMEDRIVER", "chromedriver")))
    if downloads is not None:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_script_timeout(60)
    return driver


def _binary(variable: str, *names: str) -> str | None:
    """The executable `variable` names (a path or a name on PATH) if set, else the first of `names` on PATH."""
    names = (os.environ[variable],) if os.environ.get(variable) else names
    return next((found for found in map(shutil.which, names) if found), None)


# ------------------------------------------------------------------------------------- driving the studio page

def wait(driver: Any, script: str, timeout: float = 60.0) -> Any:
    """The first truthy value of `script` in the page."""
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(script)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{script!r} stayed falsy for {timeout} s; page log: {driver.get_log('browser')}")
        time.sleep(0.05)
    return value


def wait_for_result(driver: Any, newer_than: int = 0) -> np.ndarray:
    """The image shown, once the page is idle, the image is of the current map, and more than `newer_than` images
    have arrived."""
    status = wait(driver, f"const s = studio.status(); return !s.busy && s.received + s.failed > {newer_than} "
                          f"&& (s.resultIsCurrent || s.error) && s")
    assert status["error"] is None, status
    return decode(driver.execute_script("return studio.resultPng()"))


def decode(base64_png: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(base64_png))))


def label_map(driver: Any) -> np.ndarray:
    """The page's label map, class indices `[H, W]`."""
    height, width = _size(driver)
    return np.array(driver.execute_script("return studio.labelMap()"), np.uint8).reshape(height, width)


def click(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()


def choose(driver: Any, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def stroke(driver: Any, points: list[tuple[float, float]], kind: str = "mouse") -> None:
    """Press at the first point (in model pixels), move through the others, release: real pointer input, from a
    mouse or (kind="touch") a finger."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "labels")
    height, width = _size(driver)
    box = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", canvas)
    # WebDriver offsets are CSS pixels from the element's centre.
    offsets = [(round(x / width * box[0] - box[0] / 2), round(y / height * box[1] - box[1] / 2)) for x, y in points]
    pointer = PointerInput(interaction.POINTER_TOUCH if kind == "touch" else interaction.POINTER_MOUSE, kind)
    actions = ActionBuilder(driver, mouse=pointer, duration=20)
    actions.pointer_action.move_to(canvas, *offsets[0]).pointer_down()
    for offset in offsets[1:]:
        actions.pointer_action.move_to(canvas, *offset)
    actions.pointer_action.pointer_up()
    actions.perform()


def _size(driver: Any) -> tuple[int, int]:
    return tuple(driver.execute_script("const c = document.getElementById('labels'); return [c.height, c.width]"))
