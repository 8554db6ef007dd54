"""Headless Chromium for tests, driven by Playwright for Python.

    find_chromium()     the system's Chromium, or None (the browser tests then skip)
    skip_reason()       why the browser tests cannot run here, or None
    browser()           context manager: a Playwright Browser on that Chromium
    PageWatch(page)     the page's console errors, uncaught exceptions, failed and sent requests
    LOAD_ALL_IMAGES     script: load every <img> (lazy ones too); [[src, naturalWidth], ...]

Playwright's own browser downloads are not used (none is possible here, and the
system's Chromium is what `make chromium` installs): ``executable_path`` points at
the system binary. The flags keep a headless run from reaching out (no component
updates, sync or background networking) and make it work as root in a container
(``--no-sandbox``). Everything started is stopped when the block ends, pass or fail.
"""

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "/Applications/Chromium.app/Contents/MacOS/Chromium",
              "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (.venv/bin/pip install -e '.[test]')"
    if find_chromium() is None:
        return "headless Chromium not installed (Debian: apt-get install chromium)"
    return None


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=find_chromium(), args=FLAGS,
                                              timeout=60_000)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class PageWatch:
    """What a page did while a test drove it: ``errors`` (console errors and asserts,
    uncaught exceptions, failed requests, one text each) and ``requested_urls``."""

    page: object
    errors: list[str] = field(default_factory=list)
    requested_urls: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"exception: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("request", lambda request: self.requested_urls.append(request.url))

    def _failed(self, request) -> None:
        # A navigation (reload, a new filter) cancels the image loads in flight: not an error.
        if request.failure != "net::ERR_ABORTED":
            self.errors.append(f"network: {request.failure} {request.url}")

    def _console(self, message) -> None:
        if message.type in ("error", "assert"):
            self.errors.append(f"console: {message.text}")


# Lazy images outside the viewport never load on their own in a headless window:
# make every one eager, then wait for each to load or fail (at most 30 s).
LOAD_ALL_IMAGES = """
async () => {
  const images = [...document.images];
  images.forEach(image => { image.loading = "eager"; });
  const settled = images.map(image => image.complete && image.naturalWidth > 0 ? null :
    new Promise(done => { image.addEventListener("load", done); image.addEventListener("error", done); }));
  await Promise.race([Promise.all(settled), new Promise(done => setTimeout(done, 30000))]);
  return images.map(image => [image.getAttribute("src"), image.naturalWidth]);
}
"""
