"""What a request must pass before any route sees it (README "Security"), as plain ASGI:

- **Host allow-list** (DNS rebinding): the Host header must name localhost, 127.0.0.1,
  [::1], the address the API is bound to, or an ``--allowed-host``; else ``421``.
- **Origin**: a request from a browser page carries ``Origin``. It must be the API's own
  origin or an ``--cors-origin``; else ``403`` and nothing is done (this also stops the
  "simple" cross-site POSTs that need no preflight). Listed origins get CORS headers
  (``CorsPolicy``); a preflight from another origin gets none.
- **Body size**: a body over ``max_body_bytes`` is refused with ``413`` before it is read
  in full (by its ``Content-Length``, or as it streams in).
- **Body time**: a body must have arrived within ``header_timeout_seconds`` of its head,
  else ``408`` and the connection is closed (a body dribbled a byte at a time held its
  connection forever: the slowloris of bodies; service/api/http.py bounds the head).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from service.api.problems import PROBLEM_JSON, problem_bytes
from service.config import Settings

__all__ = ["RequestGuard", "allowed_host_names"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_METHODS = "GET, POST, DELETE"
_PREFLIGHT_MAX_AGE = "600"


def allowed_host_names(settings: Settings) -> frozenset[str]:
    """The names a Host header may carry (any port), lowercase, IPv6 without brackets."""
    names = {*_LOOPBACK_NAMES, settings.host.strip("[]").lower()}
    names.update(h.strip("[]").lower() for h in settings.allowed_hosts)
    return frozenset(names)


def _host_name(host: str) -> str:
    """``example.org:8080`` → ``example.org``; ``[::1]:8080`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class RequestGuard:
    """The outermost ASGI middleware of the API."""

    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.hosts = allowed_host_names(settings)
        self.origins = frozenset(o.rstrip("/") for o in settings.cors_origins)
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.header_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if _host_name(host) not in self.hosts:
            detail = (
                f'this API does not answer for host "{host}": use localhost, 127.0.0.1 or '
                "[::1], or start podgate with --allowed-host NAME"
            )
            await _problem(send, 421, detail)
            return
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and origin.rstrip("/") != f"{scope.get('scheme', 'http')}://{host}":
            if origin.rstrip("/") not in self.origins:
                detail = (
                    f'requests from origin "{origin}" are not allowed; start podgate with '
                    f"--cors-origin {origin} to allow them"
                )
                await _problem(send, 403, detail)
                return
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin"),
            ]
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                await _preflight(send, cors, headers)
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _too_large(send, self.max_body)
            return
        if length is not None or "transfer-encoding" in headers:
            # Read here, bounded in size and time, and replayed.
            try:
                async with asyncio.timeout(self.body_timeout):
                    body = await _read_body(receive, self.max_body)
            except TimeoutError:
                detail = f"the request body did not arrive within {self.body_timeout:g} s"
                await _problem(send, 408, detail, close=True)
                return
            if body is None:
                await _too_large(send, self.max_body)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _with_headers(send, cors))


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client left: the route sees an empty body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then http.disconnect, when the client goes

    return replay


def _with_headers(send: Send, extra: Sequence[tuple[bytes, bytes]]) -> Send:
    if not extra:
        return send

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return sending


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]], headers: dict[str, str]) -> None:
    requested = headers.get("access-control-request-headers", "")
    answer = [
        *cors,
        (b"access-control-allow-methods", _METHODS.encode()),
        (b"access-control-max-age", _PREFLIGHT_MAX_AGE.encode()),
    ]
    if requested:
        answer.append((b"access-control-allow-headers", requested.encode("latin-1")))
    await send({"type": "http.response.start", "status": 204, "headers": answer})
    await send({"type": "http.response.body", "body": b""})


async def _too_large(send: Send, limit: int) -> None:
    detail = f"the request body is larger than {limit} bytes"
    await _problem(send, 413, detail, close=True)


async def _problem(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    body = problem_bytes(status, detail)
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:  # the rest of the body is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
