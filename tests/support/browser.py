"""A real headless Chromium for the web page's tests: Debian's `chromium`, driven by
selenium through Debian's `chromedriver` (the same build; `.ci/run` installs both).

Nothing is downloaded: the driver's path is given, so selenium-manager (which would look
for or fetch a browser and a driver) is never asked, and `chromium()` makes sure of it.
The flags keep a browser on a machine without a network quiet (no background requests,
no QUIC, no component updates). Every browser gets its own profile directory.

The browser's console and its network requests (the DevTools `Network` domain, request
headers included) are collected, so that a test can check what the page sent and that
it logged no error::

    with chromium(tmp_path / "profile") as browser:
        browser.driver.get(url)
        browser.wait(lambda d: ..., "what is awaited")
        assert not browser.console_errors()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.support.ui import WebDriverWait

__all__ = ["CHROMEDRIVER", "CHROMIUM", "Browser", "Request", "chromium"]

CHROMIUM = Path(os.environ.get("PODGATE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PODGATE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))

#: Headless, and nothing that would reach for a network this machine does not have.
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

#: Bound for any single wait on the page.
WAIT = 20.0


@dataclass(frozen=True)
class Request:
    """A request the page sent, as DevTools saw it."""

    method: str
    url: str
    headers: dict[str, str]  # names lowercased

    @property
    def path(self) -> str:
        rest = self.url.split("://", 1)[-1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


@dataclass
class Browser:
    driver: WebDriver
    requests: list[Request] = field(default_factory=list)
    console: list[dict[str, Any]] = field(default_factory=list)

    def collect(self) -> None:
        """Move what the browser logged since the last call into `requests`/`console`."""
        self.console += self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        for entry in self.driver.get_log("performance"):  # type: ignore[no-untyped-call]
            message = json.loads(entry["message"])["message"]
            if message.get("method") != "Network.requestWillBeSent":
                continue
            request = message["params"]["request"]
            headers = {k.lower(): v for k, v in request.get("headers", {}).items()}
            self.requests.append(Request(request["method"], request["url"], headers))

    def console_errors(self) -> list[str]:
        """Errors the page logged (CSP violations, exceptions, console.error), leaving out
        the "Failed to load resource" lines Chromium prints for every 4xx answer and
        refused connection (the tests cause those on purpose)."""
        self.collect()
        return [
            e["message"]
            for e in self.console
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]
        ]

    def wait(self, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT) -> Any:
        """`WebDriverWait(...).until(condition)`, failing with `what` and the page's state.
        An element that goes (or is not there yet) while the condition looks is a "not yet"."""
        ignored = (NoSuchElementException, StaleElementReferenceException)
        wait = WebDriverWait(self.driver, timeout, 0.05, ignored_exceptions=ignored)
        try:
            return wait.until(condition)
        except TimeoutException:
            state = self.driver.execute_script(
                "const s = document.getElementById('link-state');"
                "const b = document.getElementById('sessions-body');"
                "return {link: s && s.textContent, rows: b && b.innerText,"
                " errors: [...document.querySelectorAll('.error')].map(e => e.textContent)};"
            )
            raise AssertionError(
                f"no {what} within {timeout}s; page: {state}; console: {self.console_errors()}"
            ) from None

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(path)), path
        return path


def _no_selenium_manager(*args: object, **kwargs: object) -> dict[str, str]:
    raise AssertionError("selenium-manager must not run: pass the chromedriver path")


@contextlib.contextmanager
def chromium(profile: Path, *, width: int = 1400, height: int = 900) -> Iterator[Browser]:
    """Headless Chromium with a fresh profile in `profile`, quit when the block ends."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        raise AssertionError(
            f"{' and '.join(missing)} not found: install Debian's chromium and "
            "chromium-driver (.ci/run does)"
        )
    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile / 'user-data'}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True})
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(profile / "chromedriver.log")
    )
    with _forbid_selenium_manager():
        driver = webdriver.Chrome(service=service, options=options)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


@contextlib.contextmanager
def _forbid_selenium_manager() -> Iterator[None]:
    original = SeleniumManager.binary_paths
    SeleniumManager.binary_paths = _no_selenium_manager  # type: ignore[method-assign]
    try:
        yield
    finally:
        SeleniumManager.binary_paths = original  # type: ignore[method-assign]
