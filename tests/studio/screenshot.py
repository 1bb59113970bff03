"""The README's screenshot of the studio: sky over mountains over water, painted with real pointer input in headless
Chromium over `spade-deploy paint` with the bundled model.

    .venv/bin/python -m tests.studio.screenshot docs/studio.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

from spade_deploy.data.landscapes import CLOUD, GRASS, MOUNTAIN, SNOW, WATER
from tests.studio import browser
from tests.studio.browser import choose, click, stroke, wait, wait_for_result
from tests.studio.process import Studio

# Strokes start inside the canvas (a press elsewhere is not the canvas's) and may leave it: the canvas keeps the
# pointer until it is released.
RIDGE = [(0, 74), (14, 60), (27, 66), (44, 40), (58, 55), (70, 47), (86, 66), (104, 52), (118, 62), (134, 57)]


def paint(driver) -> None:
    """A mountain range (its ridge drawn, the slope filled), snow on the top, clouds, a lake in front and a grass
    shore."""
    click(driver, f'.swatch[data-class="{MOUNTAIN}"]')
    choose(driver, "brush-size", "4")
    stroke(driver, [(x + 0.5, y + 0.5) for x, y in RIDGE])
    click(driver, '.tool[data-tool="fill"]')
    stroke(driver, [(64.5, 90.5)])
    click(driver, '.tool[data-tool="brush"]')
    click(driver, f'.swatch[data-class="{SNOW}"]')
    choose(driver, "brush-size", "4")
    stroke(driver, [(40.5, 45.5), (44.5, 42.5), (48.5, 45.5)])
    click(driver, f'.swatch[data-class="{CLOUD}"]')
    choose(driver, "brush-size", "8")
    stroke(driver, [(12.5, 18.5), (34.5, 16.5)])
    stroke(driver, [(78.5, 24.5), (108.5, 22.5)])
    click(driver, f'.swatch[data-class="{WATER}"]')
    choose(driver, "brush-size", "32")
    stroke(driver, [(2.5, 88.5), (-8.5, 88.5), (136.5, 88.5)])
    stroke(driver, [(2.5, 100.5), (-8.5, 100.5), (136.5, 100.5)])
    click(driver, f'.swatch[data-class="{GRASS}"]')
    choose(driver, "brush-size", "16")
    stroke(driver, [(2.5, 122.5), (-8.5, 122.5), (136.5, 122.5)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--size", default="1280x880", help="window size WxH in CSS pixels (default 1280x880)")
    args = parser.parse_args()
    reason = browser.missing()
    if reason:
        parser.error(reason)
    width, height = map(int, args.size.split("x"))
    studio = Studio()
    driver = browser.start_chrome(width, height)
    try:
        driver.get(studio.url + "/")
        wait(driver, "return window.studio && window.studio.ready")
        paint(driver)
        wait_for_result(driver)
        driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
        studio.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
