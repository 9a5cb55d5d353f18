"""An asyncio HTTP/2 pair client for tests (protocols.md §5.2), over asyncio streams.

Built on ``service.protocols.h2.H2PairClient``. One reader task feeds received
bytes to the sans-IO client and sorts its events per stream; received DATA is
acknowledged only when the test *consumes* it (``read``), the way a real client
acknowledges once bytes are written to its local socket. So a test that stops reading
a stream closes that stream's window, and nothing else::

    async with H2Link.connect("127.0.0.1", port) as link:
        pair = await link.open_pair("default", "echo", 7000)
        assert await link.status(pair.data) == 200
        await link.send(pair.data, payload, end=True)
        echoed = await link.read_all(pair.data)

TLS: pass an ``ssl.SSLContext``; ALPN ``h2`` is required (``link.alpn`` tells what was
selected). ``headers`` (e.g. ``[("authorization", "Bearer TOKEN")]``) go on every stream
the link opens, pairs and ``query_agent`` alike.

GOAWAY: after the agent's graceful GOAWAY the streams up to ``last_stream_id`` go on
(``H2PairClient`` keeps the connection open, RFC 9113 §6.8), so that a test can watch the
agent drain its pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from service.protocols.h2 import (
    ConnectionTerminated,
    DataReceived,
    H2PairClient,
    PairProtocolError,
    PingAcknowledged,
    StreamEnded,
    StreamReplied,
    WindowOpened,
)
from service.protocols.h2 import StreamReset as StreamResetEvent

__all__ = ["H2Link", "LinkClosed", "Pair", "StreamReset"]

READ_SIZE = 256 * 1024


class LinkClosed(ConnectionError):
    """The HTTP/2 connection ended (EOF, GOAWAY or a protocol error)."""


class StreamReset(ConnectionError):
    """The agent reset the stream (``code`` is the RST_STREAM error code)."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} reset with code {code}")
        self.stream_id = stream_id
        self.code = code


@dataclass(frozen=True)
class Pair:
    error: int
    data: int
    request_id: str


@dataclass
class _Stream:
    status: asyncio.Future[int]
    chunks: deque[DataReceived] = field(default_factory=deque)
    ended: bool = False
    reset_code: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    window_events: int = 0  # WindowOpened seen for this stream


class H2Link:
    """One HTTP/2 connection to the agent carrying any number of pairs."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: H2PairClient,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.headers = headers or []
        self.reader = reader
        self.writer = writer
        self.client = client
        ssl_object = writer.get_extra_info("ssl_object")
        self.alpn: str | None = ssl_object.selected_alpn_protocol() if ssl_object else None
        self.streams: dict[int, _Stream] = {}
        self.goaway: ConnectionTerminated | None = None
        self.goaway_received = asyncio.Event()
        self.pings_answered: list[bytes] = []
        self.closed = False
        self.error: BaseException | None = None
        self._window = asyncio.Event()  # set on any WindowOpened
        self._changed = asyncio.Event()  # set on any event at all
        self._next_request = 0
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> AsyncIterator[H2Link]:
        kwargs: dict[str, Any] = {}
        if ssl_context is not None:
            kwargs = {"ssl": ssl_context, "server_hostname": server_hostname or host}
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20, **kwargs)
        scheme = "https" if ssl_context is not None else "http"
        client = H2PairClient(f"{host}:{port}", scheme)
        writer.write(client.initiate())
        link = cls(reader, writer, client, headers)
        try:
            await link._settings_exchanged()  # pairs may only be opened after the agent's SETTINGS
            yield link
        finally:
            await link.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _settings_exchanged(self) -> None:
        async with asyncio.timeout(10):
            while not self.client.settings_received and not self.closed:
                self._changed.clear()
                await self._changed.wait()

    async def flush(self) -> None:
        data = self.client.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
            await self.writer.drain()

    def _flush_nowait(self) -> None:
        data = self.client.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                try:
                    events = self.client.receive_data(data)
                except PairProtocolError as exc:
                    self.error = exc
                    break
                for event in events:
                    self._dispatch(event)
                self._flush_nowait()
                self._changed.set()
        except (ConnectionError, OSError) as exc:
            self.error = exc
        finally:
            self.closed = True
            self._window.set()
            self._changed.set()
            for stream in self.streams.values():
                stream.changed.set()
                if not stream.status.done():
                    stream.status.set_exception(LinkClosed("connection closed"))

    def _dispatch(self, event: object) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.client.acknowledge(event.stream_id, event.flow_controlled_length)
                return
            stream.chunks.append(event)
            stream.changed.set()
        elif isinstance(event, StreamReplied):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.status.done():
                stream.status.set_result(event.status)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream.changed.set()
        elif isinstance(event, StreamResetEvent):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset_code = event.error_code
                stream.changed.set()
                if not stream.status.done():
                    stream.status.set_exception(StreamReset(event.stream_id, event.error_code))
                self._window.set()
        elif isinstance(event, WindowOpened):
            if event.stream_id in self.streams:
                self.streams[event.stream_id].window_events += 1
            self._window.set()
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event
            self.goaway_received.set()
        elif isinstance(event, PingAcknowledged):
            self.pings_answered.append(event.ping_data)

    def _track(self, sid: int) -> _Stream:
        stream = _Stream(asyncio.get_running_loop().create_future())
        # A refused stream may never be awaited for its status: no "never retrieved".
        stream.status.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self.closed:  # the connection ended already: no answer will come
            stream.status.set_exception(LinkClosed("connection closed"))
        self.streams[sid] = stream
        return stream

    # ------------------------------------------------------------------ pairs

    async def open_pair(
        self, namespace: str, pod: str, port: int, request_id: str | None = None
    ) -> Pair:
        if request_id is None:
            request_id = str(self._next_request)
            self._next_request += 1
        error_id, data_id = self.client.open_pair(namespace, pod, port, request_id, self.headers)
        self._track(error_id)
        self._track(data_id)
        await self.flush()
        return Pair(error_id, data_id, request_id)

    async def query_agent(self) -> int:
        """Open the handshake stream (``GET /v1/agent``); its id (then ``status``, ``read_all``)."""
        sid = self.client.query_agent(self.headers)
        self._track(sid)
        await self.flush()
        return sid

    async def open_stream(self, headers: list[tuple[str, str]], end_stream: bool) -> int:
        """A raw request stream with exactly ``headers`` (for malformed requests)."""
        conn = self.client._conn
        sid: int = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=end_stream)
        self._track(sid)
        await self.flush()
        return sid

    async def status(self, sid: int) -> int:
        return await self.streams[sid].status

    def window(self, sid: int) -> int:
        return self.client.window(sid)

    async def send(self, sid: int, data: bytes, *, end: bool = False) -> None:
        """Send all of ``data`` as the windows allow (waits for WindowOpened)."""
        view = memoryview(data)
        while view:
            stream = self.streams[sid]
            if stream.reset_code is not None:
                raise StreamReset(sid, stream.reset_code)
            if self.closed:
                raise LinkClosed("connection closed")
            self._window.clear()
            sent = self.client.send_data(sid, view[: 1 << 20])
            if sent:
                view = view[sent:]
                await self.flush()
            else:
                await self.flush()
                await self._window.wait()
        if end:
            self.client.end_stream(sid)
            await self.flush()

    def send_nowait(self, sid: int, data: bytes) -> int:
        """Queue what the windows allow now; return how much was taken."""
        sent = self.client.send_data(sid, data)
        self._flush_nowait()
        return sent

    async def end(self, sid: int) -> None:
        self.client.end_stream(sid)
        await self.flush()

    async def reset(self, sid: int) -> None:
        self.client.reset_stream(sid)
        await self.flush()

    async def read(self, sid: int) -> bytes:
        """The next received bytes (acknowledged now); b"" at END_STREAM.

        Raises ``StreamReset`` if the stream was reset before its end.
        """
        stream = self.streams[sid]
        while True:
            if stream.chunks:
                event = stream.chunks.popleft()
                self.client.acknowledge(sid, event.flow_controlled_length)
                self._flush_nowait()
                return bytes(event.data)  # often a view of a received chunk
            if stream.ended:
                return b""
            if stream.reset_code is not None:
                raise StreamReset(sid, stream.reset_code)
            if self.closed:
                raise LinkClosed("connection closed")
            stream.changed.clear()
            await stream.changed.wait()

    async def read_all(self, sid: int) -> bytes:
        parts = []
        while chunk := await self.read(sid):
            parts.append(chunk)
        return b"".join(parts)

    async def ping(self) -> None:
        """Send a PING and wait for its ACK (LinkClosed if the connection ends first)."""
        data = self.client.ping()
        await self.flush()
        while data not in self.pings_answered:
            if self.closed:
                raise LinkClosed(f"connection closed before the PING was answered: {self.error}")
            self._changed.clear()
            await self._changed.wait()

    async def wait_closed(self) -> None:
        """Return once the agent has ended the connection (EOF, reset or GOAWAY + close)."""
        await asyncio.shield(self._task)

    async def wait_window_event(self) -> None:
        self._window.clear()
        await self._window.wait()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
            await self.flush()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
