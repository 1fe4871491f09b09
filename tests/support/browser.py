"""Open Snakemake's HTML report in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through
Selenium): screenshots and the page's JavaScript errors. Used by tests/test_report.py and to make the README's
screenshot:

    python tests/support/browser.py demo/report.html docs/report.png
    python tests/support/browser.py demo/report.html docs/report-hours.png --result hours_per_language.svg
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"


def chromium() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when either is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


@dataclass
class Look:
    """What the browser saw: one PNG per view, and the console's errors (uncaught exceptions are SEVERE)."""

    screenshots: dict[str, bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


# The report's menu, on the left of every page (px at the default zoom).
MENU_WIDTH = 300


def distinct_colours(png: bytes, left: int = 0) -> int:
    """How many colours a screenshot has right of ``left`` px: a blank page has one or two."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        colours = image.convert("RGB").crop((left, 0, image.width, image.height)).getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20


def look_at_report(report: str | Path, views: dict[str, str] | None = None, *, width: int = 1400) -> Look:
    """Open ``report`` (Snakemake's single-page report) and screenshot its first page, then each of ``views``
    (name -> JavaScript run on the page, e.g. ``app.showCategory('Audio')`` or ``show_result('audit.svg')``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = chromium()
    if found is None:
        raise RuntimeError("chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)")
    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    look = Look()
    try:
        driver.get(Path(report).resolve().as_uri())
        _settle(driver)
        look.screenshots["main"] = driver.get_screenshot_as_png()
        look.texts["main"] = driver.find_element("tag name", "body").text
        for name, script in (views or {}).items():
            driver.execute_script(script)
            _settle(driver)
            look.screenshots[name] = driver.get_screenshot_as_png()
            look.texts[name] = driver.find_element("tag name", "body").text
        look.errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    return look


def show_result(suffix: str) -> str:
    """JavaScript that opens the report's result whose path ends with ``suffix`` (as its eye button does)."""
    find = f"const path = Object.keys(results).find(p => p.endsWith({json.dumps(suffix)}));"
    return (
        find + "const html = results[path].mime_type === 'text/html';"
        "app.setView({content: html ? 'html' : 'img', contentPath: results[path].data_uri, resultPath: path});"
    )


def _settle(driver: Any, seconds: float = 1.0) -> None:
    """Wait for the page to load and React to render."""
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="the report made by snakemake --report")
    parser.add_argument("png", help="where the screenshot goes")
    parser.add_argument("--result", default="", help="open the result whose path ends so (default: the first page)")
    args = parser.parse_args()
    look = look_at_report(args.report, {"view": show_result(args.result)} if args.result else None)
    Path(args.png).write_bytes(look.screenshots["view" if args.result else "main"])
    for error in look.errors:
        print("JavaScript error:", error)


if __name__ == "__main__":
    main()
