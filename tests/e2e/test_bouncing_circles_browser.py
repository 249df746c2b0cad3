"""The bouncing circles in a real browser: headless Chromium, driven by Selenium.

The page is opened as a user would open it; what is checked is what the browser
drew, read from screenshots' pixels: four circles of the four colours, moving
between two screenshots 0.5 s apart; the ticks-per-second counter showing a
number; and, once one enclave's proxy is killed (``kill -9``), that circle grey
and still while the other three keep moving.

It needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them
when it runs as root with apt) and the test extra's ``selenium`` and ``pillow``.
Without them it skips, saying so; under CI (``$CI`` set) it fails instead.

``FARSIDE_CIRCLES_SCREENSHOT=docs/images/bouncing_circles.png`` also saves the
page, as the README shows it.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farside.examples.bouncing_circles import CIRCLES, GREY

pytestmark = pytest.mark.timeout(120)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=800,1000",
)
MIN_PIXELS = 40  # a circle's least radius is 4 px (about 50 px); the demo's start at 12+
_RGB = re.compile(r"rgb\((\d+),(\d+),(\d+)\)")


def _rgb(text: str) -> tuple[int, int, int]:
    match = _RGB.fullmatch(text)
    assert match is not None, text
    r, g, b = (int(part) for part in match.groups())
    return r, g, b


COLOURS = {spec.name: _rgb(spec.color) for spec in CIRCLES}
GREY_RGB = _rgb(GREY)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test: .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_tools() -> tuple[str, str]:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        _unavailable(
            f"no {' or '.join(missing)} on PATH: the browser test needs Debian's chromium and "
            "chromium-driver (apt-get install -y chromium chromium-driver)"
        )
    for module in ("selenium", "PIL", "aiohttp"):
        try:
            __import__(module)
        except ImportError:
            _unavailable(f"the browser test needs {module}: pip install -e '.[test]'")
    return str(shutil.which("chromium")), str(shutil.which("chromedriver"))


@pytest.fixture
def driver(browser_tools: tuple[str, str]) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_tools
    with tempfile.TemporaryDirectory(prefix="farside-test-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        try:
            browser.set_page_load_timeout(30)
            yield browser
        finally:
            browser.quit()


def _canvas(driver: Any) -> dict[tuple[int, int, int], tuple[int, float, float]]:
    """Each exact colour of interest on the canvas: (pixel count, centroid x, centroid y)."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.ID, "canvas").screenshot_as_png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width = image.width
    wanted = {*COLOURS.values(), GREY_RGB}
    sums: dict[tuple[int, int, int], list[int]] = {colour: [0, 0, 0] for colour in wanted}
    data = image.tobytes()
    for index, pixel in enumerate(zip(data[0::3], data[1::3], data[2::3], strict=True)):
        entry = sums.get(pixel)
        if entry is not None:
            entry[0] += 1
            entry[1] += index % width
            entry[2] += index // width
    return {
        colour: (n, sx / n, sy / n) if n else (0, math.nan, math.nan)
        for colour, (n, sx, sy) in sums.items()
    }


def _two_shots(
    driver: Any, attempts: int = 6
) -> tuple[dict[Any, tuple[int, float, float]], dict[Any, tuple[int, float, float]]]:
    """Two screenshots 0.5 s apart in which every live colour is visible (circles overlap
    now and then, so a pair where one hides another is taken again)."""
    for _ in range(attempts):
        first = _canvas(driver)
        time.sleep(0.5)
        second = _canvas(driver)
        visible = [
            colour
            for colour in COLOURS.values()
            if first[colour][0] >= MIN_PIXELS and second[colour][0] >= MIN_PIXELS
        ]
        if len(visible) == 4 or (
            len(visible) == 3 and first[GREY_RGB][0] >= MIN_PIXELS
        ):  # all four, or three and the grey one
            return first, second
    return first, second


def _moved(a: tuple[int, float, float], b: tuple[int, float, float]) -> float:
    return math.hypot(a[1] - b[1], a[2] - b[2])


def _tps(driver: Any) -> float:
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "tps").text
    try:
        return float(text)
    except ValueError:
        return math.nan


def test_four_circles_move_and_a_killed_enclave_turns_grey(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    from ._circles import circles_server, get

    with tempfile.TemporaryDirectory(prefix="farside-test-circles-") as directory:
        root = Path(directory)
        with circles_server(root, "--call-timeout", "2") as server:
            driver.get(f"{server.url}/circles")
            deadline = time.monotonic() + 30
            while not _tps(driver) > 0:  # /start loaded the enclaves, /calc runs
                assert time.monotonic() < deadline, driver.find_element(By.TAG_NAME, "body").text
                time.sleep(0.1)
            time.sleep(0.5)

            first, second = _two_shots(driver)
            for name, colour in COLOURS.items():
                assert first[colour][0] >= MIN_PIXELS, (name, first)
                assert second[colour][0] >= MIN_PIXELS, (name, second)
                assert _moved(first[colour], second[colour]) > 2, (name, first, second)
            assert first[GREY_RGB][0] == 0  # nothing is grey while all four are alive
            tps = _tps(driver)
            assert tps > 0, tps
            rows = driver.find_element(By.ID, "rows").text
            assert rows.count("verified: pinned measurement") == 4, rows
            assert "all four enclaves have one measurement" in driver.page_source

            victim = get(f"{server.url}/calc")["circles"][1]
            assert victim["name"] == "circle_enclave_1"
            os.kill(victim["proxy_pid"], signal.SIGKILL)
            red = COLOURS["circle_enclave_1"]
            deadline = time.monotonic() + 15
            while True:
                shot = _canvas(driver)
                if shot[red][0] == 0 and shot[GREY_RGB][0] >= MIN_PIXELS:
                    break
                assert time.monotonic() < deadline, shot
                time.sleep(0.2)

            first, second = _two_shots(driver)
            assert first[red][0] == 0
            assert second[red][0] == 0
            assert first[GREY_RGB][0] >= MIN_PIXELS
            assert _moved(first[GREY_RGB], second[GREY_RGB]) < 1  # grey and still
            for name in ("circle_enclave_0", "circle_enclave_2", "circle_enclave_3"):
                colour = COLOURS[name]
                assert second[colour][0] >= MIN_PIXELS, (name, second)
                assert _moved(first[colour], second[colour]) > 2, (name, first, second)
            deadline = time.monotonic() + 5
            while "EnclaveUnavailableError" not in driver.find_element(By.ID, "rows").text:
                assert time.monotonic() < deadline, driver.find_element(By.ID, "rows").text
                time.sleep(0.1)
            assert _tps(driver) > 0
            path = os.environ.get("FARSIDE_CIRCLES_SCREENSHOT")
            if path:
                _save_page(driver, Path(path))


def _save_page(driver: Any, path: Path) -> None:
    """The page as the README shows it, with one circle grey."""
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
