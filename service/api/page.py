"""The web page at `/` (README "The web page"): static files from `service/api/static/`.

A handful of files known by name, each with a fixed content type (not guessed from the
machine's mime.types: a module script must come as JavaScript), served with a strict
Content-Security-Policy. The page and its files are public, like any client's code; what
they show comes from the API, which asks for the token as it does for every client. The
request guard (Host allow-list, Origin) applies to them as to every route.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response

from service.api.problems import ProblemError

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_FILES", "router"]

#: The files of the page, and their content types.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: Only this origin's scripts, styles, images and connections; no inline script or style,
#: no plugins, no <base>, no framing, forms posted here only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # A click on a forwarded port's link must not tell that server where it came from.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on every load (a 304 when unchanged): an upgraded podgate's page is
    # never mixed with an old script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    media_type: str
    etag: str


@cache
def _load(name: str) -> _File:
    body = resources.files("service.api").joinpath("static", name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return _File(body, STATIC_FILES[name], etag)


def _serve(name: str, request: Request) -> Response:
    if name not in STATIC_FILES:
        raise ProblemError(404, f'the page has no file "{name}"')
    file = _load(name)
    headers = {**_HEADERS, "ETag": file.etag}
    if file.etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else file.body
    headers["Content-Length"] = str(len(file.body))
    return Response(body, media_type=file.media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    return _serve("index.html", request)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
async def static_file(name: str, request: Request) -> Response:
    return _serve(name, request)
