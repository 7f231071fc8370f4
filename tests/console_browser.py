"""What the console's browser tests share: the API served over HTTP, a headless Debian
Chromium driven by Selenium with Debian's chromium-driver, screenshots and the URLs each page
requested, and waits that survive the live regions' refreshes.

Each test module wraps `serving` and `chromium` in fixtures of its own, so that no fixture
is imported by name (an imported fixture and a test's argument of the same name read as a
redefinition to ruff)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.services import free_port

SHOTS = ROOT / "var" / "console-screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make test installs them as root)",
)


@contextmanager
def serving(settings) -> Iterator[tuple[str, object]]:
    """The API (console included) over HTTP, and the settings with the PUBLIC_BASE_URL
    Plivo's reports go to."""
    from werkzeug.serving import make_server

    from api import create_app

    port = free_port()
    public = settings.model_copy(
        update={"public_base_url": f"http://127.0.0.1:{port}", "reconcile_interval": 1}
    )
    server = make_server("127.0.0.1", port, create_app(public), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield public.public_base_url, public
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager must not look for drivers on the network: Debian's are given.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--disable-extensions",
                     "--disable-background-networking", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


class Watch:
    """Screenshots and every URL the browser requested, page after page."""

    def __init__(self, driver, base: str):
        self.driver, self.base = driver, base
        self.requested: list[str] = []
        SHOTS.mkdir(parents=True, exist_ok=True)

    def collect(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(SHOTS / f"{name}.png"))
        self.collect()

    def foreign(self) -> list[str]:
        self.collect()
        return [u for u in self.requested if not u.startswith((self.base + "/", "data:"))]


def until(driver, condition, timeout=60, message=""):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The live regions replace their contents every few seconds: an element found just
    # before a refresh is gone just after, and the next poll finds the new one.
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.3, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition, message)


def click(driver, css: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, css).click()


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def sign_in(driver, base: str, key: str) -> None:
    """Sign in with the keyboard alone (the key, then Enter), landing on the broadcasts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{base}/console/sign-in")
    driver.find_element(By.ID, "api_key").send_keys(key, Keys.ENTER)
    until(driver, lambda d: "/console/broadcasts" in d.current_url, 20, "not signed in")
