"""The podgate API over HTTP (httpx): sessions and the live event stream.

Every failure becomes `ApiError` (the server answered: its problem+json ``detail``) or
`Unreachable` (nothing answered).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from service.client import DEFAULT_REQUEST_TIMEOUT

__all__ = [
    "REQUEST_TIMEOUT",
    "STREAM_READ_TIMEOUT",
    "ApiError",
    "PodgateClient",
    "SseEvent",
    "SseParser",
    "Unreachable",
    "UsageError",
    "describe_transport_error",
]

#: Seconds one request (not the event stream) may take.
REQUEST_TIMEOUT = DEFAULT_REQUEST_TIMEOUT
#: The event stream sends a comment every 15 s (PODGATE_SSE_KEEPALIVE_SECONDS): a stream
#: silent for this long is dead and is re-opened with Last-Event-ID.
STREAM_READ_TIMEOUT = 60.0


# --------------------------------------------------------------------------- errors


class UsageError(Exception):
    """A command line that cannot be used (exit status 2)."""


class Unreachable(Exception):
    """The server cannot be reached at all (nothing listening, DNS, TLS, timeout)."""


class ApiError(Exception):
    """The server answered with an error; ``detail`` is the problem+json ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------- the API


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched Server-Sent Event; ``data`` is the JSON ``data:`` decoded."""

    event: str
    data: Any
    id: str | None


class SseParser:
    """The ``text/event-stream`` line rules of the HTML standard (9.2.6), for the lines
    ``httpx`` splits: a blank line dispatches, ``:`` starts a comment, ``id`` persists."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self._event = ""
        self._data: list[str] = []
        self._id_seen: str | None = None

    def feed_line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
            self._id_seen = value
        return None

    def _dispatch(self) -> SseEvent | None:
        event, data, id_ = self._event or "message", self._data, self._id_seen
        self._event, self._data, self._id_seen = "", [], None
        if not data:
            return None
        text = "\n".join(data)
        try:
            decoded: Any = json.loads(text)
        except ValueError:
            decoded = text
        return SseEvent(event, decoded, id_)


def _detail(response: httpx.Response) -> str:
    """The problem+json ``detail`` of an error answer, else what the body says."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    text = response.text.strip()
    reason = response.reason_phrase or "error"
    if not text:
        return f"HTTP {response.status_code} {reason} from {response.request.url}"
    return f"HTTP {response.status_code} {reason} from {response.request.url}: {text[:300]}"


def _error(response: httpx.Response, *, token_sent: bool) -> ApiError:
    detail = _detail(response)
    if response.status_code == 401:
        verb = "check" if token_sent else "give it with"
        detail += f"; {verb} --token or PODGATE_TOKEN"
    return ApiError(response.status_code, detail)


def describe_transport_error(exc: httpx.TransportError) -> str:
    cause: BaseException = exc
    for _ in range(10):  # the innermost cause says it best (e.g. ConnectionRefusedError)
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            break
        cause = inner
    if isinstance(cause, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or str(cause) or type(exc).__name__


class PodgateClient:
    """The podgate API over httpx: every error becomes `ApiError` or `Unreachable`."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = REQUEST_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "podgate-sessions"}
        self.token_sent = bool(token)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> PodgateClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    def unreachable(self, exc: httpx.TransportError) -> Unreachable:
        return Unreachable(
            f"cannot reach the podgate server at {self.server}: "
            f"{describe_transport_error(exc)} (is `podgate serve` running there? "
            "Give its URL with --server or PODGATE_SERVER)"
        )

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise _error(response, token_sent=self.token_sent)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                f"the server at {response.request.url} did not answer with JSON: "
                f"{response.text[:200]!r} (is it a podgate server?)",
            ) from None

    async def list_sessions(self) -> dict[str, Any]:
        """``GET /sessions``: ``{"data": [...], "count": N}``."""
        body = self._json(await self._request("GET", "/sessions"))
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ApiError(200, f"unexpected answer to GET /sessions: {str(body)[:200]}")
        return body

    async def get_session(self, ref: str) -> dict[str, Any]:
        """A session by id, else by name (`ApiError` 404 with the API's detail if neither)."""
        try:
            session: dict[str, Any] = self._json(
                await self._request("GET", f"/sessions/{quote(ref, safe='')}")
            )
            return session
        except ApiError as exc:
            if exc.status != 404:
                raise
            not_found = exc
        for session in (await self.list_sessions())["data"]:
            if session.get("name") == ref:
                return session
        raise not_found

    async def create_session(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """``POST /sessions``; True when it was created (False: it existed, same spec)."""
        response = await self._request("POST", "/sessions", json=dict(body))
        session: dict[str, Any] = self._json(response)
        return session, response.status_code == 201

    async def delete_session(self, session_id: str) -> None:
        await self._request("DELETE", f"/sessions/{quote(session_id, safe='')}")

    @contextlib.asynccontextmanager
    async def events(
        self, path: str = "/events", last_event_id: str | None = None
    ) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """Open an event stream (subscribed once this returns: the server subscribes
        before it answers); iterate it for the events. Transport errors while reading
        propagate as `httpx.TransportError` (the caller resumes)."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=STREAM_READ_TIMEOUT)
        request = self._http.build_request("GET", path, headers=headers, timeout=timeout)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise _error(response, token_sent=self.token_sent)

            async def stream() -> AsyncGenerator[SseEvent, None]:
                parser = SseParser()
                async for line in response.aiter_lines():
                    event = parser.feed_line(line)
                    if event is not None:
                        yield event

            async with contextlib.aclosing(stream()) as iterator:
                yield iterator
        finally:
            await response.aclose()
