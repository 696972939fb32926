"""A real browser for the UI tests: Debian's headless Chromium driven through its chromedriver by Selenium
(Playwright's own browser download is not reachable from here). `.ci/run` installs both packages; where
they are absent the browser tests skip, unless FRUITFLOW_REQUIRE_BROWSER=1 (set by CI) makes that a failure.

Screenshots of each stage go to out/screenshots/<test>/; a test keeps them when it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fruitflow.paths import OUT

CHROMIUM = os.environ.get("FRUITFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FRUITFLOW_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = OUT / "screenshots"


def missing() -> str | None:
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if not absent:
        return None
    return f"no headless browser here ({', '.join(absent)}: apt-get install chromium chromium-driver)"


def require() -> None:
    reason = missing()
    if reason and os.environ.get("FRUITFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def chrome(download_dir: Path | None = None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: the tests run as root here, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    return driver


class Screens:
    """Numbered screenshots of one test's stages; removed when the test passes."""

    def __init__(self, driver, name: str):
        self.driver, self.folder, self.n = driver, SCREENSHOTS / name, 0
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)

    def shot(self, stage: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{stage}.png"
        self.driver.save_screenshot(str(path))
        return path

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def images_loaded(driver, css: str, root=None) -> list[dict]:
    """Each <img> matching `css`: its alt text and natural width (0 when the browser could not decode it)."""
    return driver.execute_script(
        "return Array.from((arguments[1] || document).querySelectorAll(arguments[0]))"
        ".map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}));", css, root)
