"""Sans-IO stream pairs over HTTP/2 for podgate's client↔agent link (protocols.md §5.2).

PROJECT DESIGN, not Kubernetes: each forwarded connection is two client-opened
streams, ``POST /v1/portforward/{namespace}/{pod}`` with ``streamtype`` (``error`` sent
with END_STREAM, ``data`` without), ``port`` and ``requestid``. Built on python-hyper
h2 4.x; this module maps h2's events to small frozen events of its own.

Flow control is end to end: acknowledge every ``PairData.flow_controlled_length``
with ``acknowledge()`` only once those bytes were written to the local socket, and
acknowledge it even when the bytes are dropped (stream reset, socket gone), or the
connection window leaks. ``send_data`` accepts what the windows allow now and returns
the count; retry the rest after ``WindowOpened``.

Both sides advertise ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 1 MiB and raise the connection
window to 16 MiB with a WINDOW_UPDATE on stream 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.events import Event as H2Event
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import StreamState
from hyperframe.frame import DataFrame, Frame

__all__ = [
    "CONNECTION_WINDOW",
    "STREAM_WINDOW",
    "H2PairClient",
    "H2PairServer",
    "LinkTerminated",
    "PairData",
    "PairEnded",
    "PairEvent",
    "PairProtocolError",
    "PairRequestError",
    "PairReset",
    "PairResponse",
    "PairStateError",
    "PairStreamOpened",
    "PingAnswered",
    "WindowOpened",
    "parse_pair_path",
    "validate_pair_headers",
]

STREAM_WINDOW: Final = 1 << 20  # SETTINGS_INITIAL_WINDOW_SIZE we advertise
CONNECTION_WINDOW: Final = 16 << 20  # raised with a WINDOW_UPDATE on stream 0
_DEFAULT_CONNECTION_WINDOW: Final = 65535  # RFC 9113 §6.9.2; SETTINGS cannot change it
_DEFAULT_MAX_HEADER_LIST: Final = 1 << 16
PATH_PREFIX: Final = "/v1/portforward/"
_DIGITS = re.compile(r"[0-9]+")
_SENDABLE: Final = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)

Buffer = bytes | bytearray | memoryview


# ---------------------------------------------------------------------- errors


class PairProtocolError(Exception):
    """The peer broke HTTP/2; GOAWAY(``error_code``) is queued in ``data_to_send()``."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class PairStateError(Exception):
    """Local misuse: the stream is closed or unknown, or no stream can be opened."""


class PairRequestError(Exception):
    """A stream to refuse with HTTP ``status`` and ``message`` as the text body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


# ---------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class PairStreamOpened:
    """Server: the client opened a stream. With ``end_stream`` a ``PairEnded`` follows."""

    stream_id: int
    headers: dict[str, str]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class PairResponse:
    """Client: the agent answered a stream (200, or an error status)."""

    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class PairData:
    """Bytes on a stream; acknowledge ``flow_controlled_length`` once written out."""

    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class PairEnded:
    """The peer half-closed the stream (END_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PairReset:
    """The stream is gone: RST_STREAM from the peer (``remote``), or h2 reset it."""

    stream_id: int
    code: int
    remote: bool = True


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """More may be sent on ``stream_id``; 0 means the connection window or every
    stream's window (the peer's INITIAL_WINDOW_SIZE) grew: retry all blocked sends."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """The peer acknowledged our ping carrying ``data``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LinkTerminated:
    """The peer sent GOAWAY; streams above ``last_stream_id`` were not processed."""

    code: int
    last_stream_id: int


PairEvent = (
    PairStreamOpened
    | PairResponse
    | PairData
    | PairEnded
    | PairReset
    | WindowOpened
    | PingAnswered
    | LinkTerminated
)


# ---------------------------------------------------------------------- the repr cost
#
# h2 4.4.1, H2Connection._receive_frame (h2/connection.py:1543) runs
#     self.config.logger.trace("Received frame: %s", repr(frame))
# for EVERY received frame. The repr is built before the call, so a no-op logger (the
# default DummyLogger) does not help. For a DATA frame, hyperframe's Frame.__repr__ calls
# Frame._body_repr -> _raw_data_repr(self.serialize_body()): serialize_body joins
# padding + payload (a full copy) and binascii.hexlify encodes the WHOLE payload, then
# keeps 20 hex digits. That is two passes and a 3x-size allocation per received frame.
#
# The one fix, for our connections only: the frame buffer re-classes each received
# DataFrame as _QuietDataFrame, whose __repr__ reports only the size, and the dispatch
# table learns the subclass (h2 dispatches on frame.__class__). Nothing else in h2 looks
# at the class. tests/unit/test_h2pair.py proves that no serialize/hexlify runs.


class _QuietDataFrame(DataFrame):
    """A received DATA frame whose repr neither copies nor hex-encodes the payload."""

    def __repr__(self) -> str:
        return f"DataFrame(stream_id={self.stream_id}): <{len(self.data)} bytes>"


class _QuietFrameBuffer(FrameBuffer):
    def __next__(self) -> Frame:
        frame = super().__next__()
        if frame.__class__ is DataFrame:
            frame.__class__ = _QuietDataFrame
        return frame


class _H2Connection(H2Connection):
    """h2's connection, with received DATA frames made cheap to repr (see above)."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.incoming_buffer = _QuietFrameBuffer(server=not config.client_side)
        table = self._frame_dispatch_table
        table[_QuietDataFrame] = table[DataFrame]


# ---------------------------------------------------------------------- helpers


def _header_dict(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = name if isinstance(name, str) else name.decode("latin-1")
        text = value if isinstance(value, str) else value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def validate_pair_headers(headers: Mapping[str, str]) -> tuple[str, int, str]:
    """``(streamtype, port, requestid)`` of a pair stream, or ``PairRequestError(400)``.

    Port checks and texts follow the kubelet: decimal, unsigned 16-bit, > 0.
    """
    port_text = headers.get("port", "")
    if not port_text:
        raise PairRequestError(400, '"port" header is required')
    if not _DIGITS.fullmatch(port_text):
        raise PairRequestError(400, f'unable to parse "{port_text}" as a port: invalid syntax')
    port = int(port_text)
    if port > 0xFFFF:
        raise PairRequestError(400, f'unable to parse "{port_text}" as a port: value out of range')
    if port < 1:
        raise PairRequestError(400, f'port "{port_text}" must be > 0')
    streamtype = headers.get("streamtype", "")
    if streamtype not in ("error", "data"):
        raise PairRequestError(400, f'invalid stream type "{streamtype}"')
    request_id = headers.get("requestid", "")
    if not request_id:
        raise PairRequestError(400, '"requestid" header is required')
    return streamtype, port, request_id


def parse_pair_path(path: str) -> tuple[str, str]:
    """``(namespace, pod)`` from ``/v1/portforward/{namespace}/{pod}``, else 404."""
    rest = path.partition("?")[0]
    if rest.startswith(PATH_PREFIX):
        parts = rest[len(PATH_PREFIX) :].split("/")
        if len(parts) == 2 and all(parts):
            return unquote(parts[0]), unquote(parts[1])
    raise PairRequestError(404, f"no port-forward endpoint at {path!r}")


# ---------------------------------------------------------------------- shared endpoint


class _PairEndpoint:
    def __init__(self, client_side: bool, max_concurrent_streams: int, max_frame_size: int) -> None:
        config = H2Configuration(client_side=client_side, header_encoding=None)
        conn = _H2Connection(config)
        # Replaced before initiate_connection(), which advertises exactly these values.
        conn.local_settings = Settings(
            client=client_side,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_FRAME_SIZE: max_frame_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: _DEFAULT_MAX_HEADER_LIST,
            },
        )
        conn.max_inbound_frame_size = max_frame_size
        self._conn = conn
        self._initiated = False

    def _initiate(self) -> None:
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_CONNECTION_WINDOW)
        self._initiated = True

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Everything queued: our frames and h2's automatic ones (SETTINGS ACK, PING ACK,
        WINDOW_UPDATE after ``acknowledge``, GOAWAY after a protocol error)."""
        return self._conn.data_to_send()

    # ------------------------------------------------------------------ sending

    def send_data(self, stream_id: int, data: Buffer) -> int:
        """Queue as much of ``data`` as the windows allow now, in frames of at most the
        peer's MAX_FRAME_SIZE; return how many bytes were taken (0: wait for
        ``WindowOpened``)."""
        conn = self._conn
        try:
            allowed = min(len(data), conn.local_flow_control_window(stream_id))
            if allowed <= 0:
                return 0
            step = conn.max_outbound_frame_size
            view = memoryview(data)
            for start in range(0, allowed, step):
                conn.send_data(stream_id, view[start : min(start + step, allowed)])
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot send on stream {stream_id}: {exc}") from exc
        return allowed

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side of the stream (END_STREAM)."""
        try:
            self._conn.end_stream(stream_id)
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot end stream {stream_id}: {exc}") from exc

    def reset_stream(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM (CANCEL by default); a no-op if the stream is already closed."""
        try:
            self._conn.reset_stream(stream_id, code)
        except StreamClosedError:
            pass
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot reset stream {stream_id}: {exc}") from exc

    def acknowledge(self, stream_id: int, n: int) -> None:
        """``n`` flow-controlled bytes of ``stream_id`` were written out: hand them back
        (h2 sends WINDOW_UPDATE once enough is acknowledged). Fine after a reset."""
        if n:
            self._conn.acknowledge_received_data(n, stream_id)

    def can_send(self, stream_id: int) -> bool:
        """Whether our side of ``stream_id`` is still open."""
        stream = self._conn.streams.get(stream_id)
        return stream is not None and stream.state_machine.state in _SENDABLE

    def window(self, stream_id: int) -> int:
        """Bytes ``send_data`` would take now on ``stream_id`` (0 if it is closed)."""
        if not self.can_send(stream_id):
            return 0
        try:
            return self._conn.local_flow_control_window(stream_id)
        except H2ProtocolError:
            return 0

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: Buffer) -> list[PairEvent]:
        """Parse received bytes into pair events. A connection error queues GOAWAY and
        raises ``PairProtocolError``."""
        if not self._initiated:
            raise PairStateError("call initiate() first")
        try:
            events = self._conn.receive_data(data)
        except H2ProtocolError as exc:
            code = int(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR))
            raise PairProtocolError(str(exc) or type(exc).__name__, code) from exc
        return self._translate(events)

    def _translate(self, events: list[H2Event]) -> list[PairEvent]:
        out: list[PairEvent] = []
        for ev in events:
            if isinstance(ev, DataReceived):
                out.append(PairData(ev.stream_id, ev.data, ev.flow_controlled_length))
            elif isinstance(ev, StreamEnded):
                out.append(PairEnded(ev.stream_id))
            elif isinstance(ev, RequestReceived):
                out.append(
                    PairStreamOpened(
                        ev.stream_id, _header_dict(ev.headers), ev.stream_ended is not None
                    )
                )
            elif isinstance(ev, ResponseReceived):
                status = _header_dict(ev.headers).get(":status", "0")
                out.append(PairResponse(ev.stream_id, int(status) if status.isdigit() else 0))
            elif isinstance(ev, WindowUpdated):
                out.append(WindowOpened(ev.stream_id or 0))
            elif isinstance(ev, StreamReset):
                out.append(PairReset(ev.stream_id, int(ev.error_code or 0), ev.remote_reset))
            elif isinstance(ev, RemoteSettingsChanged):
                if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    out.append(WindowOpened(0))
            elif isinstance(ev, PingAckReceived):
                out.append(PingAnswered(ev.ping_data or b""))
            elif isinstance(ev, ConnectionTerminated):
                out.append(LinkTerminated(int(ev.error_code or 0), ev.last_stream_id or 0))
            # Ping/settings acks are automatic; trailers, priority, unknown frames: ignored.
        return out


# ---------------------------------------------------------------------- client


class H2PairClient(_PairEndpoint):
    """The podgate side: opens a pair of streams per forwarded connection."""

    def __init__(
        self,
        authority: str,
        scheme: str = "http",
        *,
        max_frame_size: int = 1 << 16,
    ) -> None:
        super().__init__(True, 100, max_frame_size)
        self.authority = authority
        self.scheme = scheme
        self._ping_counter = 0

    def initiate(self) -> bytes:
        """Preface, SETTINGS and the connection WINDOW_UPDATE (h2c prior knowledge, or
        the first bytes after a TLS handshake that selected ``h2``)."""
        if self._initiated:
            raise PairStateError("initiate() was already called")
        self._initiate()
        return self._conn.data_to_send()

    def open_pair(
        self,
        namespace: str,
        pod: str,
        port: int,
        request_id: int | str,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, int]:
        """Open the error stream (HEADERS + END_STREAM) then the data stream (HEADERS);
        return ``(error_stream_id, data_stream_id)``. Data may be sent at once."""
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port {port} is not in 1..65535")
        conn = self._conn
        limit = conn.remote_settings.max_concurrent_streams
        if conn.open_outbound_streams + 2 > limit:
            raise PairStateError(f"the agent allows {limit} concurrent streams")
        path = f"{PATH_PREFIX}{quote(namespace, safe='')}/{quote(pod, safe='')}"
        base = [
            (":method", "POST"),
            (":scheme", self.scheme),
            (":authority", self.authority),
            (":path", path),
        ]
        tail = [("port", str(port)), ("requestid", str(request_id))]
        tail.extend((k.lower(), v) for k, v in extra_headers)
        try:
            error_id = conn.get_next_available_stream_id()
            conn.send_headers(error_id, [*base, ("streamtype", "error"), *tail], end_stream=True)
            data_id = conn.get_next_available_stream_id()
            conn.send_headers(data_id, [*base, ("streamtype", "data"), *tail])
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot open a stream pair: {exc}") from exc
        return error_id, data_id

    def ping(self) -> bytes:
        """Queue a PING; ``PingAnswered`` carries the returned 8 bytes."""
        self._ping_counter += 1
        data = self._ping_counter.to_bytes(8, "big")
        self._conn.ping(data)
        return data

    def close(self, code: int = ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY."""
        self._conn.close_connection(error_code=code)


# ---------------------------------------------------------------------- server


class H2PairServer(_PairEndpoint):
    """The agent side. Its SETTINGS and connection WINDOW_UPDATE are queued at once:
    write ``data_to_send()`` as soon as the connection is accepted."""

    def __init__(
        self, *, max_concurrent_streams: int = 1024, max_frame_size: int = 1 << 16
    ) -> None:
        super().__init__(False, max_concurrent_streams, max_frame_size)
        self._initiate()

    def respond(
        self,
        stream_id: int,
        status: int,
        end_stream: bool = False,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Response HEADERS (the SYN_REPLY equivalent when ``status`` is 200)."""
        try:
            self._conn.send_headers(
                stream_id, [(":status", str(status)), *headers], end_stream=end_stream
            )
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot respond on stream {stream_id}: {exc}") from exc

    def send_text_and_end(self, stream_id: int, text: str, status: int | None = None) -> int:
        """UTF-8 ``text`` as DATA, then END_STREAM; with ``status``, response HEADERS
        (text/plain) first. Text beyond the current window is dropped: returns the bytes
        sent."""
        if status is not None:
            self.respond(stream_id, status, headers=[("content-type", "text/plain; charset=utf-8")])
        sent = self.send_data(stream_id, text.encode("utf-8")) if text else 0
        self.end_stream(stream_id)
        return sent

    def reject_stream(self, stream_id: int, error: PairRequestError) -> None:
        """Answer a stream that failed validation: status, text body, END_STREAM."""
        self.send_text_and_end(stream_id, error.message, status=error.status)

    def goaway(self, code: int = ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY(``code``, last stream id): the client opens a new connection."""
        self._conn.close_connection(error_code=code)
