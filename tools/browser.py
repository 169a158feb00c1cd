"""Open a local HTML file in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium)
and say what a person would have seen: console errors, images that did not load, the page's text, and a
screenshot. Used by the report's test and by `make docs-images`."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Every <img> on the page: loaded (complete, with a natural size) or not, with its alt text.
IMAGES_JS = """
return Array.from(document.images).map(i => ({
  alt: i.alt, loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth, height: i.naturalHeight}));
"""


@dataclass
class Page:
    title: str
    text: str
    images: list[dict]
    console: list[dict]  # every console entry Chromium logged (level, message)
    requests: list[str] = field(default_factory=list)  # URLs the page asked for beyond itself

    @property
    def console_errors(self) -> list[dict]:
        return [e for e in self.console if e.get("level") == "SEVERE"]

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not i["loaded"]]


def available() -> str | None:
    """None when the browser can run here, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def open_page(
    path: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    height: int = 1000,
    full_page: bool = False,
) -> Page:
    """Load `path` (a file), wait for it, and return what it showed; with `screenshot`, write a PNG of the
    first `height` pixels (or of the whole page with `full_page`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mlmon-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in a container, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        url = Path(path).resolve().as_uri()
        driver.get(url)
        driver.execute_script("return document.readyState")
        images = driver.execute_script(IMAGES_JS)
        page = Page(
            title=driver.title,
            text=driver.find_element("tag name", "body").text,
            images=images,
            console=driver.get_log("browser"),
            requests=_requests(driver.get_log("performance"), url),
        )
        if screenshot:
            if full_page:
                size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
                driver.execute_cdp_cmd(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": int(size["height"]), "deviceScaleFactor": 1, "mobile": False},
                )
            driver.save_screenshot(str(screenshot))
        return page
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _requests(performance: list[dict], page_url: str) -> list[str]:
    """URLs requested other than the page itself and its inline data: a self-contained page asks for none."""
    import json

    urls = []
    for entry in performance:
        try:
            message = json.loads(entry["message"])["message"]
        except (KeyError, ValueError):
            continue
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            # Chromium's own pages (chrome://, the new tab page before ours) are not the page's requests.
            if url != page_url and url.startswith(("http:", "https:", "file:", "ws:", "wss:", "ftp:")):
                urls.append(url)
    return urls
