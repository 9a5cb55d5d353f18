"""The web page's files as HTTP serves them (tests/integration/test_web_page.py drives the
page in a browser): content types, the Content-Security-Policy, caching, the request
guard, and no inline script or style that the policy would block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.api.page import CONTENT_SECURITY_POLICY, STATIC_FILES
from service.config import Settings

STATIC = Path(str(resources.files("service.api").joinpath("static")))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a token file: the page must load without a token all the same."""
    tokens = tmp_path / "tokens.csv"
    tokens.write_text("page-test-token,alice,1\n")
    app = create_app(Settings(data_dir=tmp_path, token_file=tokens))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as c,
    ):
        yield c


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/", "index.html"),
        ("/static/app.js", "app.js"),
        ("/static/style.css", "style.css"),
        ("/static/favicon.svg", "favicon.svg"),
    ],
)
async def test_page_files_are_served_with_their_type_and_policy(
    client: httpx.AsyncClient, path: str, name: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content == (STATIC / name).read_bytes()
    assert response.headers["content-type"] == STATIC_FILES[name]
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-cache"
    # Unchanged: 304 without a body. HEAD: the headers only.
    again = await client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = await client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


def test_the_policy_is_strict() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"


async def test_the_page_is_public_and_the_api_is_not(client: httpx.AsyncClient) -> None:
    assert (await client.get("/")).status_code == 200
    assert (await client.get("/sessions")).status_code == 401


async def test_unknown_files_are_not_found(client: httpx.AsyncClient) -> None:
    for path in ("/static/nope.js", "/static/..%2Fapp.py", "/static/"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


async def test_the_request_guard_covers_the_page(client: httpx.AsyncClient) -> None:
    """DNS rebinding: another Host gets 421 for the page too."""
    response = await client.get("/", headers={"Host": "attacker.example:8080"})
    assert response.status_code == 421
    response = await client.post("/sessions", headers={"Origin": "http://attacker.example"})
    assert response.status_code == 403


def test_every_static_file_is_listed() -> None:
    """What is in static/ is served (and shipped: pyproject's package data, static/*)."""
    assert {p.name for p in STATIC.iterdir()} == set(STATIC_FILES)


class _Inline(HTMLParser):
    """Collects what a `script-src 'self'; style-src 'self'` policy would block."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self.scripts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        self.blocked += [f"<{tag} {n}>" for n in names if n == "style" or n.startswith("on")]
        if tag == "style":
            self.blocked.append("<style>")
        if tag == "script":
            self.scripts.append(dict(attrs).get("src") or "")
        self._in = tag

    def handle_data(self, data: str) -> None:
        if self._in == "script" and data.strip():
            self.blocked.append("inline <script>")

    def handle_endtag(self, tag: str) -> None:
        self._in = None


def test_the_page_has_no_inline_script_or_style() -> None:
    parser = _Inline()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.blocked == []
    assert parser.scripts == ["static/app.js"]


def test_the_script_builds_no_html_from_strings() -> None:
    """Session fields (names, errors) come from users: text only, never markup."""
    script = (STATIC / "app.js").read_text()
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert risky not in script, risky
