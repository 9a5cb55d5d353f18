"""A small asyncio SPDY/3.1 port-forward client for tests, built on ``SpdyConnection``.

It speaks plain HTTP/1.1 itself (so the agent's h11 front is tested against an
independent parser), upgrades with whatever method, path and headers a test chooses,
and then records every SPDY event per stream so that tests can *wait on events* with
timeouts instead of sleeping::

    async with spdy_session(port, "/portForward/default/echo") as client:
        error_sid, data_sid = await client.open_pair(8080, requestid=0)
        await client.send_all(data_sid, b"hello", fin=True)
        assert await client.read_stream(data_sid) == b"hello"
        await client.wait_ended(error_sid)

Everything received is kept: ``client.events`` (all events in arrival order) and
``client.streams[sid]`` (reply, data, FIN, RST, per-stream event list).

After a GOAWAY from the agent, ``SpdyConnection`` ignores every later byte, as a
spdystream peer does. The agent however lets in-flight pairs finish after its GOAWAY
(graceful shutdown), so this client keeps reading: it hands the sans-IO connection
the bytes up to and including the GOAWAY frame only, and parses later frames itself
(DATA, RST_STREAM, PING), which needs no header-compression state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.protocols.spdy import (
    ConnectionTerminated,
    DataFrame,
    DataReceived,
    Event,
    FrameType,
    GoAwayFrame,
    PingAcknowledged,
    PingFrame,
    ProtocolError,
    RstStreamFrame,
    SpdyConnection,
    StreamEnded,
    StreamRejected,
    StreamReplied,
    StreamReset,
    parse_frame,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "UPGRADE_HEADERS",
    "ConnectionClosed",
    "HttpConnection",
    "HttpResponse",
    "SpdyClient",
    "StreamRecord",
    "StreamWasReset",
    "UpgradeRefused",
    "http_request",
    "raw_control_frame",
    "spdy_session",
]

DEFAULT_TIMEOUT = 10.0
READ_SIZE = 256 * 1024
SEND_CHUNK = 32 * 1024  # what kubectl and containerd use

#: The headers kubectl sends for a plain SPDY upgrade (protocols.md §1.1), minus Host.
UPGRADE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Connection", "Upgrade"),
    ("Upgrade", "SPDY/3.1"),
    ("X-Stream-Protocol-Version", "portforward.k8s.io"),
)


class ConnectionClosed(ConnectionError):
    """The agent closed the connection before the awaited condition held."""


class StreamWasReset(Exception):
    """The stream got RST_STREAM while something else was awaited on it."""

    def __init__(self, stream_id: int, status: int) -> None:
        super().__init__(f"stream {stream_id} was reset with status {status}")
        self.stream_id = stream_id
        self.status = status


# ----------------------------------------------------------------------------- HTTP


@dataclass
class HttpResponse:
    status: int
    reason: str
    #: in wire order, names lowercased
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (case-insensitive), or None."""
        values = self.header_list(name)
        return values[0] if values else None

    def header_list(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class UpgradeRefused(Exception):
    """The agent answered an upgrade request with something other than 101."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(f"upgrade refused: {response.status} {response.text!r}")
        self.response = response


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; ``upgrade`` turns it into a SpdyClient."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.host = "127.0.0.1"

    @classmethod
    async def open(
        cls, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT
    ) -> HttpConnection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
        conn = cls(reader, writer)
        conn.host = f"{host}:{port}"
        return conn

    async def send_request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()

    async def read_response(self, timeout: float = DEFAULT_TIMEOUT) -> HttpResponse:
        """Read one response; a 101 has no body (what follows is the new protocol)."""
        async with asyncio.timeout(timeout):
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise ConnectionClosed(
                    f"connection closed; partial response {exc.partial!r}"
                ) from None
            status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
            version, status, reason = [*status_line.split(" ", 2), ""][:3]
            assert version == "HTTP/1.1", status_line
            headers = []
            for line in header_lines:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
            response = HttpResponse(int(status), reason, headers)
            if response.status == 101:
                return response
            length = response.header("content-length")
            if length is not None:
                response.body = await self.reader.readexactly(int(length))
            elif response.status not in (204, 304):
                response.body = await self.reader.read()  # framed by close
            return response

    async def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        await self.send_request(method, path, headers, body)
        return await self.read_response(timeout)

    async def upgrade(
        self,
        path: str,
        *,
        method: str = "POST",
        headers: Iterable[tuple[str, str]] = UPGRADE_HEADERS,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> SpdyClient:
        """Send an upgrade request; a 101 gives a SpdyClient, anything else raises."""
        response = await self.request(method, path, headers, timeout=timeout)
        if response.status != 101:
            raise UpgradeRefused(response)
        # Bytes already buffered by the reader are SPDY; the client reads on from there.
        return SpdyClient(self.reader, self.writer, response)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def http_request(
    port: int,
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    host: str = "127.0.0.1",
) -> HttpResponse:
    """One request on a fresh connection."""
    conn = await HttpConnection.open(port, host)
    try:
        return await conn.request(method, path, headers, body)
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- SPDY


@dataclass
class StreamRecord:
    """What happened on one stream, from the client's point of view."""

    stream_id: int
    headers: Mapping[str, str]
    reply_headers: dict[str, str] | None = None
    data: bytearray = field(default_factory=bytearray)
    #: the agent half-closed the stream (FIN)
    ended: bool = False
    #: RST_STREAM status from the agent (or the status of a local rejection)
    reset_status: int | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def replied(self) -> bool:
        return self.reply_headers is not None

    @property
    def finished(self) -> bool:
        """No more bytes will arrive: FIN or RST received."""
        return self.ended or self.reset_status is not None


def _is_goaway_header(buf: bytes | bytearray, pos: int) -> bool:
    return buf[pos] & 0x80 != 0 and int.from_bytes(buf[pos + 2 : pos + 4], "big") == int(
        FrameType.GOAWAY
    )


class SpdyClient:
    """The client end of an upgraded port-forward connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        response: HttpResponse | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.response = response
        self.conn = SpdyConnection(client_side=True)
        self.events: list[Event] = []
        self.streams: dict[int, StreamRecord] = {}
        self.goaway: ConnectionTerminated | None = None
        self.pings: list[int] = []
        #: the agent closed the TCP connection (EOF or reset)
        self.closed = False
        self.read_error: BaseException | None = None
        self.protocol_error: ProtocolError | None = None
        self._buf = bytearray()  # received bytes not yet handed on (partial frame)
        self._after_goaway = False
        self._changed = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        *,
        method: str = "POST",
        headers: Iterable[tuple[str, str]] = UPGRADE_HEADERS,
        host: str = "127.0.0.1",
    ) -> SpdyClient:
        conn = await HttpConnection.open(port, host)
        try:
            return await conn.upgrade(path, method=method, headers=headers)
        except BaseException:
            await conn.close()
            raise

    # ----------------------------------------------------------------- receiving

    async def _read_loop(self) -> None:
        try:
            while True:
                await self._reading.wait()
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self._feed(data)
        except (OSError, ProtocolError) as exc:
            self.read_error = exc
        finally:
            self.closed = True
            self._changed.set()

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._after_goaway:
            self._parse_raw()
            return
        # Hand over complete frames only, and stop right after a GOAWAY (see module doc).
        pos = 0
        goaway = False
        size = len(buf)
        while size - pos >= 8:
            end = pos + 8 + int.from_bytes(buf[pos + 5 : pos + 8], "big")
            if end > size:
                break
            goaway = _is_goaway_header(buf, pos)
            pos = end
            if goaway:
                break
        chunk = bytes(buf[:pos])
        del buf[:pos]
        if chunk:
            try:
                events = self.conn.receive_data(chunk)
            except ProtocolError as exc:
                self.protocol_error = exc
                raise
            for event in events:
                self._record(event)
            self._flush()
        if goaway:
            self._after_goaway = True
            self._parse_raw()
        self._changed.set()

    def _parse_raw(self) -> None:
        """After GOAWAY: parse DATA, RST_STREAM and PING frames without the sans-IO core."""
        buf = self._buf
        pos = 0
        with memoryview(buf) as view:
            while True:
                parsed = parse_frame(view, pos)
                if parsed is None:
                    break
                frame, pos = parsed
                if isinstance(frame, DataFrame):
                    self._record(DataReceived(frame.stream_id, frame.data, frame.fin))
                    if frame.fin:
                        self._record(StreamEnded(frame.stream_id))
                elif isinstance(frame, RstStreamFrame):
                    self._record(StreamReset(frame.stream_id, frame.status))
                elif isinstance(frame, PingFrame) and frame.ping_id & 1:
                    self._record(PingAcknowledged(frame.ping_id))
                elif isinstance(frame, GoAwayFrame):
                    pass  # a second GOAWAY changes nothing
        del buf[:pos]
        self._changed.set()

    def _record(self, event: Event) -> None:
        self.events.append(event)
        sid = getattr(event, "stream_id", None)
        record = self.streams.get(sid) if sid is not None else None
        if record is not None:
            record.events.append(event)
        if isinstance(event, StreamReplied) and record is not None:
            record.reply_headers = dict(event.headers)
        elif isinstance(event, DataReceived) and record is not None:
            record.data += event.data
        elif isinstance(event, StreamEnded) and record is not None:
            record.ended = True
        elif isinstance(event, StreamReset) and record is not None:
            record.reset_status = event.error_code
        elif isinstance(event, StreamRejected) and record is not None:
            record.reset_status = event.error.error_code
        elif isinstance(event, PingAcknowledged):
            self.pings.append(event.ping_id)
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event

    def pause_reading(self) -> None:
        """Stop reading the socket: the agent's writes then back up into TCP buffers."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    # ------------------------------------------------------------------- waiting

    async def wait_for(
        self, predicate: Callable[[], bool], what: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Wait until ``predicate()`` holds; re-checked on every received chunk.

        Raises:
            TimeoutError: not within ``timeout`` seconds (the message names ``what``).
            ConnectionClosed: the connection ended first.
        """
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.closed:
                        raise ConnectionClosed(
                            f"connection closed while waiting for {what} "
                            f"(read error: {self.read_error!r}); events: {self.events!r}"
                        )
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"no {what} within {timeout:.1f}s; events so far: {self.events[-20:]!r}"
            ) from None

    async def wait_reply(self, sid: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
        """The SYN_REPLY headers of ``sid``; raises StreamWasReset if it was reset."""
        record = self.streams[sid]
        await self.wait_for(
            lambda: record.replied or record.reset_status is not None, f"reply on {sid}", timeout
        )
        if record.reply_headers is None:
            assert record.reset_status is not None
            raise StreamWasReset(sid, record.reset_status)
        return record.reply_headers

    async def wait_reset(self, sid: int, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The RST_STREAM status of ``sid`` (waits for it)."""
        record = self.streams[sid]
        await self.wait_for(lambda: record.reset_status is not None, f"RST on {sid}", timeout)
        assert record.reset_status is not None
        return record.reset_status

    async def wait_finished(self, sid: int, timeout: float = DEFAULT_TIMEOUT) -> StreamRecord:
        """Wait for FIN or RST on ``sid`` and return its record."""
        record = self.streams[sid]
        await self.wait_for(lambda: record.finished, f"FIN or RST on {sid}", timeout)
        return record

    async def wait_ended(self, sid: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait for FIN on ``sid`` (RST raises StreamWasReset); returns all its data."""
        record = await self.wait_finished(sid, timeout)
        if not record.ended:
            assert record.reset_status is not None
            raise StreamWasReset(sid, record.reset_status)
        return bytes(record.data)

    async def read_stream(self, sid: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Everything the agent sends on ``sid`` until its FIN."""
        return await self.wait_ended(sid, timeout)

    async def wait_data(self, sid: int, size: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait until at least ``size`` bytes arrived on ``sid``; returns them all."""
        record = self.streams[sid]
        await self.wait_for(
            lambda: len(record.data) >= size or record.finished, f"{size} bytes on {sid}", timeout
        )
        if len(record.data) < size:
            raise AssertionError(
                f"stream {sid} finished after {len(record.data)} of {size} bytes: "
                f"{bytes(record.data[:200])!r}"
            )
        return bytes(record.data)

    async def wait_goaway(self, timeout: float = DEFAULT_TIMEOUT) -> ConnectionTerminated:
        await self.wait_for(lambda: self.goaway is not None, "GOAWAY", timeout)
        assert self.goaway is not None
        return self.goaway

    async def wait_ping(self, ping_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.wait_for(lambda: ping_id in self.pings, f"PING {ping_id} echo", timeout)

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the agent closes the TCP connection."""
        try:
            async with asyncio.timeout(timeout):
                while not self.closed:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"connection still open after {timeout:.1f}s; events: {self.events[-20:]!r}"
            ) from None

    def index_of(self, predicate: Callable[[Event], bool]) -> int:
        """Position in ``events`` of the first event matching ``predicate`` (or -1)."""
        for i, event in enumerate(self.events):
            if predicate(event):
                return i
        return -1

    # ------------------------------------------------------------------- sending

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        self._flush()
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def open_stream(
        self, headers: Mapping[str, str] | Sequence[tuple[str, str]], *, fin: bool = False
    ) -> int:
        """Send a SYN_STREAM (header names lowercase, as on the wire); ``fin`` half-closes
        the stream at once."""
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        sid = self.conn.open_stream(items, fin=fin)
        self.streams[sid] = StreamRecord(sid, dict(items))
        self._flush()
        return sid

    async def open_pair(
        self,
        port: int | str,
        requestid: int | str | None,
        *,
        pipelined: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> tuple[int, int]:
        """Open an error/data pair like client-go (§1.5): error stream, reply, FIN on it,
        data stream, reply. ``requestid=None`` leaves the header out.

        ``pipelined`` sends both SYN_STREAMs at once before waiting for the replies, so
        that a short pair timeout on the agent cannot fire in between, however slow
        the machine is."""
        common = [("port", str(port))]
        if requestid is not None:
            common.append(("requestid", str(requestid)))
        error_sid = self.open_stream([("streamtype", "error"), *common])
        if not pipelined:
            await self.wait_reply(error_sid, timeout)
        self.end_stream(error_sid)
        data_sid = self.open_stream([("streamtype", "data"), *common])
        await self.wait_reply(error_sid, timeout)
        await self.wait_reply(data_sid, timeout)
        return error_sid, data_sid

    def send(self, sid: int, data: bytes, fin: bool = False) -> None:
        self.conn.send_data(sid, data, fin)
        self._flush()

    async def send_all(
        self, sid: int, data: bytes, *, fin: bool = False, chunk: int = SEND_CHUNK
    ) -> None:
        """Send ``data`` in ``chunk``-sized DATA frames, honouring TCP back-pressure."""
        view = memoryview(data)
        for start in range(0, len(view), chunk):
            self.conn.send_data(sid, view[start : start + chunk])
            await self.drain()
        if fin:
            self.end_stream(sid)
        await self.drain()

    def end_stream(self, sid: int) -> None:
        self.conn.end_stream(sid)
        self._flush()

    def reset_stream(self, sid: int, status: int = 5) -> None:
        self.conn.reset_stream(sid, status)
        self._flush()

    def ping(self) -> int:
        ping_id = self.conn.ping()
        self._flush()
        return ping_id

    def send_goaway(self, status: int = 0) -> None:
        """Send GOAWAY, as client-go's Close does."""
        self.conn.goaway(status)
        self._flush()

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (malformed frames, garbage)."""
        self._flush()
        self.writer.write(data)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def raw_control_frame(frame_type: int, flags: int, payload: bytes) -> bytes:
    """A SPDY/3 control frame with any type, flags and payload (for malformed input)."""
    return struct.pack(">HHI", 0x8003, frame_type, (flags << 24) | len(payload)) + payload


@contextlib.asynccontextmanager
async def spdy_session(
    port: int,
    path: str,
    *,
    method: str = "POST",
    headers: Iterable[tuple[str, str]] = UPGRADE_HEADERS,
    host: str = "127.0.0.1",
) -> AsyncIterator[SpdyClient]:
    """An upgraded connection for the duration of the block."""
    client = await SpdyClient.connect(port, path, method=method, headers=headers, host=host)
    try:
        yield client
    finally:
        await client.close()
