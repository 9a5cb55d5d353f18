"""Server-Sent Events clients for tests: one that drives an ASGI app directly (httpx's
ASGITransport buffers a whole response, so it cannot read an endless stream) and one
that reads a real server over a socket in a thread. Both parse the stream as it comes
and stamp every event with its arrival time (`time.monotonic()`); every wait has a
hard deadline.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["AsgiEventStream", "HttpEventStream", "SseEvent", "SseParser"]


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: Any  # the JSON `data:` decoded (None when absent)
    id: str | None
    received: float  # time.monotonic() when it arrived

    def is_status(self, session_id: str, new: str | None = None) -> bool:
        return (
            self.event == "status"
            and self.data.get("session_id") == session_id
            and (new is None or self.data.get("new") == new)
        )


class SseParser:
    """Incremental `text/event-stream` parser (comments are counted, not returned)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += self._decoder.decode(chunk).replace("\r\n", "\n")
        events = []
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            event, data, id_ = "message", [], None
            seen = False
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event, seen = value, True
                elif name == "data":
                    data.append(value)
                    seen = True
                elif name == "id":
                    id_, seen = value, True
            if seen:
                text = "\n".join(data)
                decoded = json.loads(text) if text else None
                events.append(SseEvent(event, decoded, id_, time.monotonic()))
        return events


class AsgiEventStream:
    """GET `path` of an ASGI `app` as a stream. `gate` (if given) holds every body write
    after the first one (the server's opening comment) until it is set: a client that
    stops reading."""

    def __init__(
        self,
        app: Any,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.app = app
        path, _, query = path.partition("?")
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (k.lower().encode(), v.encode())
                for k, v in {"host": "localhost", **(headers or {})}.items()
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("localhost", 80),
        }
        self.gate = gate
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.events: list[SseEvent] = []
        self.ended = False
        self.parser = SseParser()
        self._started = asyncio.Event()
        self._changed = asyncio.Event()
        self._disconnect = asyncio.Event()
        self._request_sent = False
        self._cursor = 0
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            self._started.set()
        elif message["type"] == "http.response.body":
            if self.gate is not None and self.body:
                await self.gate.wait()
            chunk = message.get("body", b"")
            self.body += chunk
            self.events += self.parser.feed(chunk)
            if not message.get("more_body", False):
                self.ended = True
        self._changed.set()

    async def __aenter__(self) -> AsgiEventStream:
        self._task = asyncio.create_task(self.app(self.scope, self._receive, self._send))
        self._task.add_done_callback(lambda _: self._changed.set())
        async with asyncio.timeout(10):
            while not self._started.is_set():
                if self._task.done():
                    self._task.result()  # raises what the app raised
                    raise AssertionError("the app returned without a response")
                self._changed.clear()
                await self._changed.wait()
        if self.status == 200:
            # The server's first comment says the subscription exists: nothing is missed.
            await self.wait_until(
                lambda: self.parser.comments > 0 or bool(self.events), 10, "first comment"
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._disconnect.set()
        if self.gate is not None:
            self.gate.set()
        assert self._task is not None
        try:
            async with asyncio.timeout(10):
                await asyncio.wait({self._task})
        except TimeoutError:
            self._task.cancel()
            await asyncio.wait({self._task})
            raise AssertionError(f"the event stream {self.scope['path']} did not end") from None

    async def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or (self._task is not None and self._task.done() and not condition()):
                raise AssertionError(f"no {what} within {timeout}s; events: {self.events}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def next(self, timeout: float = 10.0) -> SseEvent:
        """The next event after the ones already returned."""
        await self.wait_until(lambda: len(self.events) > self._cursor, timeout, "event")
        event = self.events[self._cursor]
        self._cursor += 1
        return event

    async def wait_for(
        self, predicate: Callable[[SseEvent], bool], timeout: float = 10.0, what: str = "event"
    ) -> SseEvent:
        """Skip events until one matches (those skipped stay in `events`)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                event = await self.next(max(remaining, 0.0))
            except AssertionError:
                raise AssertionError(
                    f"no {what} within {timeout}s; events: {self.events}"
                ) from None
            if predicate(event):
                return event

    async def expect_none(
        self, predicate: Callable[[SseEvent], bool], duration: float, what: str = "event"
    ) -> None:
        """Read the stream for `duration` seconds and fail on the first event that matches
        (the others are skipped, and stay in `events`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        while True:
            while len(self.events) > self._cursor:
                event = self.events[self._cursor]
                self._cursor += 1
                if predicate(event):
                    raise AssertionError(f"unexpected {what} within {duration}s: {event}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()


class HttpEventStream:
    """GET `path` of a real server (HTTP/1.1, via http.client) in a reader thread."""

    def __init__(self, base_url: str, path: str, headers: Mapping[str, str] | None = None):
        parts = urlsplit(base_url)
        assert parts.hostname is not None and parts.port is not None
        self._sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self._conn.sock = self._sock
        self._conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self._conn.getresponse()
        self._sock.settimeout(None)  # the reader blocks until close() shuts the socket down
        self.status = self.response.status
        self.parser = SseParser()
        self.events: list[SseEvent] = []
        self._queue: queue.Queue[SseEvent | None] = queue.Queue()
        self._cursor = 0
        self.ended = threading.Event()
        self.subscribed = threading.Event()  # the server's first comment or event arrived
        self._thread = threading.Thread(target=self._read, name=f"sse {path}", daemon=True)
        self._thread.start()
        if self.status == 200 and not self.subscribed.wait(10):
            self.close()
            raise AssertionError(f"no first comment on {path} within 10s")

    def _read(self) -> None:
        try:
            while chunk := self.response.read1(65536):
                for event in self.parser.feed(chunk):
                    self._queue.put(event)
                if self.parser.comments or not self._queue.empty():
                    self.subscribed.set()
        except (OSError, http.client.HTTPException, ValueError):
            pass
        finally:
            self.ended.set()
            self.subscribed.set()
            self._queue.put(None)

    def next(self, timeout: float = 20.0) -> SseEvent:
        if self._cursor < len(self.events):
            event = self.events[self._cursor]
            self._cursor += 1
            return event
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s; events: {self.events}") from None
        if item is None:
            self._queue.put(None)  # stays ended for later calls
            raise AssertionError(f"the event stream ended; events: {self.events}")
        self.events.append(item)
        self._cursor += 1
        return item

    def wait_for(
        self, predicate: Callable[[SseEvent], bool], timeout: float = 20.0, what: str = "event"
    ) -> SseEvent:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout}s; events: {self.events}")
            try:
                event = self.next(remaining)
            except AssertionError:
                raise AssertionError(
                    f"no {what} within {timeout}s; events: {self.events}"
                ) from None
            if predicate(event):
                return event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._conn.close()

    def __enter__(self) -> HttpEventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
