"""The web page at `/`, end to end: a real headless Chromium (tests/support/browser.py)
against a real `podgate serve --demo` (its demo pod `default/hello` answers HTTP on 8080).

Every wait is the driver's explicit wait on what the page shows. Screenshots go to
tests/output/web/ (ignored by git); docs/screenshot.png is a copy of `sessions-wide.png`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver as ChromeDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.support.browser import Browser, chromium
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    Podgate,
    api_client,
    create_session,
    explain_on_failure,
    free_port,
    podgate_env,
    wait_for_session,
    wait_for_status,
)
from tests.support.procs import ManagedProcess
from tests.support.sse import HttpEventStream

OUTPUT = Path(__file__).resolve().parents[1] / "output" / "web"


# ------------------------------------------------------------------------ fixtures


@contextlib.contextmanager
def demo_serve(
    browser: Browser,
    data_dir: Path,
    *,
    port: int = 0,
    extra_args: Sequence[str] = (),
    leave_page: bool = True,
) -> Iterator[tuple[Podgate, httpx.Client]]:
    """`podgate serve --demo` (what `make run` starts) and an API client until the block
    ends; the process's output is printed if the block fails. The browser leaves the
    page first: an open event stream holds up the server's graceful stop for 5 s."""
    args = [*PODGATE, "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)]
    with ManagedProcess([*args, *extra_args], env=podgate_env(), name="podgate-serve") as proc:
        serve = Podgate(proc, proc.wait_for_stdout(LISTENING_RE, 30)[1])
        with api_client(serve.url) as api, explain_on_failure(proc):
            try:
                yield serve, api
            finally:
                if leave_page:
                    browser.driver.get("about:blank")


@pytest.fixture(scope="module")
def chromium_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromeDriver]:
    """One browser for the module (each test's server is another origin, so pages share
    no storage); each test gets it on a blank page with its logs emptied."""
    with chromium(tmp_path_factory.mktemp("chromium")) as running:
        yield running.driver


@pytest.fixture
def browser(chromium_driver: ChromeDriver) -> Browser:
    chromium_driver.get("about:blank")
    chromium_driver.set_window_size(1400, 900)
    fresh = Browser(chromium_driver)
    fresh.collect()
    fresh.requests.clear()
    fresh.console.clear()
    return fresh


# ------------------------------------------------------------------- the page's parts


def link_state(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "link-state").get_attribute("data-state"))


def wait_live(browser: Browser) -> None:
    browser.wait(lambda d: link_state(d) == "live", "live event stream")


#: The table as it shows, read in one call: per row, each cell's text by its class
#: (name, target, namespace, ports, transport, last-error, ...), each counter's by its
#: name, the status badge's text and classes, and the ports' link targets.
_TABLE = """
return [...document.querySelectorAll('#sessions-body > tr')].map((tr) => {
  const row = {};
  for (const c of tr.children) row[c.classList[0]] = c.innerText.trim();
  for (const c of tr.querySelectorAll('[data-counter]')) {
    row[c.dataset.counter] = c.innerText.trim();
  }
  const status = tr.querySelector('.status');
  row.status = status.innerText.trim();
  row.status_class = status.className;
  row.links = [...tr.querySelectorAll('td.ports a')].map((a) => a.href);
  return row;
});
"""


def table(driver: WebDriver) -> dict[str, dict[str, Any]]:
    """What the table shows, by session name, in the table's order."""
    return {r["name"]: r for r in driver.execute_script(_TABLE)}


def row_names(driver: WebDriver) -> list[str]:
    return list(table(driver))


def cell(driver: WebDriver, name: str, key: str) -> Any:
    """A cell of the session's row (None while there is no such row)."""
    return table(driver).get(name, {}).get(key)


def row(driver: WebDriver, name: str) -> WebElement:
    xpath = f"//tbody[@id='sessions-body']/tr[th[normalize-space()='{name}']]"
    return driver.find_element(By.XPATH, xpath)


def fill(driver: WebDriver, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def shown_bytes(n: int) -> str:
    """What the page shows for a small byte count (app.js formatBytes, below 1 KiB)."""
    assert n < 1024, n
    return f"{n} B"


def http_get(port: int) -> bytes:
    """One HTTP/1.1 request through a session's local port, read to the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def page_requests(browser: Browser, path: str) -> list[Any]:
    browser.collect()
    return [r for r in browser.requests if r.url.startswith("http") and r.path == path]


# ------------------------------------------------------------------------ the tests


def test_page_creates_a_session_shows_its_traffic_and_deletes_it(
    tmp_path: Path, browser: Browser
) -> None:
    """Create through the form (several ports, a transport, Enter in a field), see it
    turn ready without reloading, see counters move after traffic through its port, see
    a failed session's error and the API's detail for a bad port spec, delete with the
    keyboard and the mouse; a narrow window shows cards without horizontal scrolling."""
    driver = browser.driver
    with demo_serve(browser, tmp_path / "data") as (serve, api):
        driver.get(f"{serve.url}/")
        wait_live(browser)
        assert text_of(driver, "sessions-empty") == "No sessions."
        driver.execute_script("window.podgateNotReloaded = true;")

        fill(driver, "create-target", "pod/hello")
        fill(driver, "create-ports", "0:8080, :8080")
        driver.find_element(By.CSS_SELECTOR, '#create-transport option[value="spdy"]').click()
        fill(driver, "create-name", "web" + Keys.ENTER)
        browser.wait(lambda d: cell(d, "web", "status") == "ready", "web ready")
        assert driver.execute_script("return window.podgateNotReloaded === true;")
        session = api.get("/sessions").json()["data"][0]
        assert session["name"] == "web" and session["status"] == "ready"
        assert text_of(driver, "create-result").startswith("Created web (")
        ports = [p["local_port"] for p in session["ports"]]
        web = table(driver)["web"]
        assert web["links"] == [f"http://127.0.0.1:{p}/" for p in ports]
        assert web["ports"] == "\n".join(f"http://127.0.0.1:{p} → 8080" for p in ports)
        assert (web["namespace"], web["target"], web["transport"]) == (
            "default",
            "pod/hello",
            "spdy",
        )
        assert web["status_class"] == "status status-ready"
        assert (web["last-error"], web["reconnects"]) == ("", "0")
        assert cell(driver, "web", "bytes_in") == "in 0 B"

        # Traffic through the second port; counters come from GET /sessions polls.
        assert b"Hello from podgate" in http_get(ports[1])
        done = wait_for_session(
            api,
            session["id"],
            lambda s: s["connections_total"] == 1 and s["connections_active"] == 0,
            what="one finished connection",
        )
        browser.wait(
            lambda d: (
                cell(d, "web", "bytes_in") == f"in {shown_bytes(done['bytes_in'])}"
                and cell(d, "web", "bytes_out") == f"out {shown_bytes(done['bytes_out'])}"
                and cell(d, "web", "connections_total") == "1 total"
            ),
            "counters after the traffic",
        )
        assert done["bytes_in"] > 0 and done["bytes_out"] > 0
        assert cell(driver, "web", "connections_active") == "0 active"

        # A pod that does not exist: the session is created and fails, with its error.
        fill(driver, "create-target", "pod/nope")
        fill(driver, "create-ports", "0:9090")
        driver.find_element(By.ID, "create-submit").click()
        browser.wait(
            lambda d: text_of(d, "create-result").startswith("Created nope-"), "nope created"
        )
        nope = wait_for_status(api, _id_of(api, "nope"), "failed")
        browser.wait(lambda d: cell(d, nope["name"], "status") == "failed", "failed status")
        browser.wait(
            lambda d: cell(d, nope["name"], "last-error") == nope["last_error"],
            "the failed session's last error",
        )
        assert row_names(driver) == ["web", nope["name"]]
        browser.screenshot(OUTPUT / "sessions-wide.png")

        # A bad port spec: the API's own problem detail, shown in the form.
        body = {"namespace": "default", "target": "pod/hello", "ports": ["80800"]}
        refused = api.post("/sessions", json=body)
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "80800" in detail
        fill(driver, "create-target", "pod/hello")
        fill(driver, "create-ports", "80800" + Keys.ENTER)
        browser.wait(lambda d: text_of(d, "create-error") == detail, "the problem detail")
        assert text_of(driver, "create-result") == ""
        assert api.get("/sessions").json()["count"] == 2

        # A narrow window: cards, nothing wider than the window.
        driver.set_window_size(420, 900)
        browser.wait(
            lambda d: d.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"
                " && getComputedStyle(document.querySelector('#sessions tr')).display"
                " === 'block';"
            ),
            "the narrow layout",
        )
        driver.execute_script("document.getElementById('sessions-section').scrollIntoView();")
        browser.screenshot(OUTPUT / "sessions-narrow.png")
        driver.set_window_size(1400, 900)

        # The keyboard: the form's fields in order, then each row's links and button.
        driver.find_element(By.ID, "create-namespace").click()
        order = [_focused_id(driver)]
        for _ in range(5):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            order.append(_focused_id(driver))
        assert order == [
            "create-namespace",
            "create-target",
            "create-ports",
            "create-name",
            "create-transport",
            "create-submit",
        ]
        focused = []
        for _ in range(len(ports) + 3):  # web: links, Delete; nope: link, Delete
            driver.switch_to.active_element.send_keys(Keys.TAB)
            element = driver.switch_to.active_element
            focused.append(element.get_attribute("aria-label") or element.text)
        assert focused == [
            *(f"http://127.0.0.1:{p}" for p in ports),
            "Delete session web",
            f"http://127.0.0.1:{nope['ports'][0]['local_port']}",
            f"Delete session {nope['name']}",
        ]
        driver.switch_to.active_element.send_keys(Keys.ENTER)  # deletes "nope"
        browser.wait(lambda d: row_names(d) == ["web"], "nope's row gone")
        assert api.get(f"/sessions/{nope['id']}").status_code == 404
        # Focus moved to the remaining row's button, not lost to the page.
        browser.wait(
            lambda d: (
                d.switch_to.active_element.get_attribute("aria-label") == "Delete session web"
            ),
            "focus on the next Delete button",
        )

        row(driver, "web").find_element(By.CSS_SELECTOR, "button.delete").click()
        browser.wait(lambda d: not row_names(d), "an empty table")
        assert text_of(driver, "sessions-empty") == "No sessions."
        assert api.get("/sessions").json()["count"] == 0
        assert driver.execute_script("return window.podgateNotReloaded === true;")
        assert browser.console_errors() == []


def _id_of(api: httpx.Client, target_name: str) -> str:
    """The id of the session whose target is pod/NAME (exactly one)."""
    found = [
        s["id"]
        for s in api.get("/sessions").json()["data"]
        if s["target"].endswith(f"/{target_name}")
    ]
    assert len(found) == 1, found
    return str(found[0])


def _focused_id(driver: WebDriver) -> str:
    return str(driver.switch_to.active_element.get_attribute("id"))


def test_page_follows_the_event_stream_and_resyncs_after_a_restart(
    tmp_path: Path, browser: Browser
) -> None:
    """With polling off (`?poll=0`) the table follows GET /events alone: sessions made and
    deleted through the API appear, turn ready and go. After the service restarts (on
    the same port, with an empty store) the page resumes with Last-Event-ID, is told to
    resync, and re-reads the sessions: the session that no longer exists goes, though no
    event about it was ever sent."""
    driver = browser.driver
    port = free_port()
    with (
        demo_serve(browser, tmp_path / "a", port=port, leave_page=False) as (serve, api),
        HttpEventStream(serve.url, "/events") as events,
    ):
        driver.get(f"{serve.url}/?poll=0")
        wait_live(browser)
        first = create_session(api, target="pod/hello", ports=["0:8080"], name="first")
        browser.wait(lambda d: cell(d, "first", "status") == "ready", "first ready")
        create_session(api, target="pod/hello", ports=["0:8080"], name="gone")
        browser.wait(lambda d: cell(d, "gone", "status") == "ready", "gone ready")
        assert api.delete(f"/sessions/{first['id']}").status_code == 204
        browser.wait(lambda d: row_names(d) == ["gone"], "first's row gone")
        last = events.wait_for(lambda e: e.event == "deleted", what="the deleted event")
        assert [r.headers.get("last-event-id") for r in page_requests(browser, "/events")] == [None]
        serve.process.popen.kill()  # no graceful stop: nothing more is sent
        serve.process.wait(20)
        browser.wait(lambda d: link_state(d) != "live", "the stream noticed the stop")
        assert row_names(driver) == ["gone"]

    with demo_serve(browser, tmp_path / "b", port=port) as (serve, api):
        browser.wait(lambda d: not row_names(d), "the resync emptied the table", timeout=30)
        wait_live(browser)
        resumed = [r for r in page_requests(browser, "/events") if "last-event-id" in r.headers]
        assert resumed, "the page reconnected without Last-Event-ID"
        # The id of the last event it had: the deletion (the other client saw the same).
        assert {r.headers["last-event-id"] for r in resumed} == {last.id}
        # And the stream goes on after the resync.
        create_session(api, target="pod/hello", ports=["0:8080"], name="after")
        browser.wait(lambda d: cell(d, "after", "status") == "ready", "after ready")
        assert browser.console_errors() == []


def test_page_lists_sessions_when_the_event_stream_is_refused(
    tmp_path: Path, browser: Browser
) -> None:
    """With no event stream to be had (`--max-event-subscribers 1`, taken), the page says
    why, still lists the sessions and polls them; it goes live once a stream is free."""
    driver = browser.driver
    args = ["--max-event-subscribers", "1"]
    with demo_serve(browser, tmp_path / "data", extra_args=args) as (serve, api):
        create_session(api, target="pod/hello", ports=["0:8080"], name="before")
        with HttpEventStream(serve.url, "/events"):
            driver.get(f"{serve.url}/")
            browser.wait(lambda d: cell(d, "before", "status") == "ready", "the list")
            assert link_state(driver) == "down"
            assert "1 event streams are open" in text_of(driver, "link-state")
            create_session(api, target="pod/hello", ports=["0:8080"], name="polled")
            browser.wait(lambda d: row_names(d) == ["before", "polled"], "the polled list")
        wait_live(browser)  # the page's next try gets the free stream
        assert browser.console_errors() == []


TOKENS = "alice-secret-0123456789,alice,uid-alice\nbob-secret-9876543210,bob,uid-bob\n"
ALICE = {"Authorization": "Bearer alice-secret-0123456789"}
BOB = {"Authorization": "Bearer bob-secret-9876543210"}


def test_page_asks_for_the_token_and_keeps_it_in_the_tab(tmp_path: Path, browser: Browser) -> None:
    """With --token-file the page asks for a token (a wrong one is refused with the API's
    detail), then shows and creates the user's own sessions only; the live stream works
    with the token (polling is off); the token stays for a reload of the tab, is sent in
    the Authorization header and never in a URL; "Forget token" asks again."""
    driver = browser.driver
    token_file = tmp_path / "tokens.csv"
    token_file.write_text(TOKENS)
    args = ["--token-file", str(token_file)]
    with demo_serve(browser, tmp_path / "data", extra_args=args) as (serve, api):
        assert api.get("/sessions").status_code == 401
        bobs = api.post(
            "/sessions",
            json={"target": "pod/hello", "ports": ["0:8080"], "name": "bobs"},
            headers=BOB,
        )
        assert bobs.status_code == 201, bobs.text

        driver.get(f"{serve.url}/?poll=0")
        browser.wait(
            lambda d: d.find_element(By.ID, "token-section").is_displayed(), "the token form"
        )
        assert not driver.find_element(By.ID, "sessions-section").is_displayed()
        assert not driver.find_element(By.ID, "create-section").is_displayed()
        assert _focused_id(driver) == "token-input"

        driver.switch_to.active_element.send_keys("not-a-token" + Keys.ENTER)
        browser.wait(
            lambda d: (
                text_of(d, "token-error") == "The token was refused: the bearer token is not valid"
            ),
            "the refusal",
        )
        assert driver.find_element(By.ID, "token-section").is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('podgate.token');") is None

        fill(driver, "token-input", "alice-secret-0123456789" + Keys.ENTER)
        wait_live(browser)
        browser.wait(
            lambda d: d.find_element(By.ID, "sessions-empty").is_displayed(), "alice's list"
        )
        assert not driver.find_element(By.ID, "token-section").is_displayed()
        assert _focused_id(driver) == "create-namespace"
        assert row_names(driver) == []  # bob's session is not alice's

        fill(driver, "create-target", "pod/hello")
        fill(driver, "create-ports", "0:8080")
        fill(driver, "create-name", "alices" + Keys.ENTER)
        browser.wait(lambda d: cell(d, "alices", "status") == "ready", "alices ready")
        assert [s["name"] for s in api.get("/sessions", headers=ALICE).json()["data"]] == ["alices"]
        assert [s["name"] for s in api.get("/sessions", headers=BOB).json()["data"]] == ["bobs"]
        browser.screenshot(OUTPUT / "token-signed-in.png")

        driver.refresh()  # the same tab: the token is still there
        browser.wait(lambda d: cell(d, "alices", "status") == "ready", "alices after reload")
        assert not driver.find_element(By.ID, "token-section").is_displayed()
        stored = driver.execute_script("return sessionStorage.getItem('podgate.token');")
        assert stored == "alice-secret-0123456789"

        browser.collect()
        sent = [r for r in browser.requests if r.url.startswith(serve.url)]
        assert not [r.url for r in sent if "secret" in r.url]
        api_calls = [r for r in sent if r.path in ("/sessions", "/events")]
        with_token = [
            r for r in api_calls if r.headers.get("authorization") == ALICE["Authorization"]
        ]
        assert {r.path for r in with_token} == {"/sessions", "/events"}
        assert {"GET", "POST"} <= {r.method for r in with_token}

        driver.find_element(By.ID, "forget-token").click()
        browser.wait(
            lambda d: d.find_element(By.ID, "token-section").is_displayed(), "the token form"
        )
        assert driver.execute_script("return sessionStorage.getItem('podgate.token');") is None
        assert not driver.find_element(By.ID, "sessions-section").is_displayed()
        assert row_names(driver) == []
        assert browser.console_errors() == []
