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

Both sides advertise ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB, MAX_FRAME_SIZE 1 MiB and
raise the connection window to 16 MiB with a WINDOW_UPDATE on stream 0.

Output is a list of buffers (``buffers_to_send()``, for ``writelines``): DATA payloads
are queued as slices of the caller's bytes, never copied (see "DATA without copies").
"""

from __future__ import annotations

import json
import re
import struct
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import quote, unquote

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, H2Connection
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
from h2.exceptions import FrameDataMissingError, StreamClosedError
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import StreamInputs, StreamState
from hpack import NeverIndexedHeaderTuple
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

if TYPE_CHECKING:
    from h2._typing import Buffer as _H2Buffer

__all__ = [
    "AGENT_KIND",
    "AGENT_PATH",
    "CONNECTION_WINDOW",
    "MAX_CONCURRENT_STREAMS",
    "MAX_FRAME_SIZE",
    "STREAM_WINDOW",
    "H2PairClient",
    "H2PairServer",
    "LinkTerminated",
    "PairData",
    "PairEnded",
    "PairEvent",
    "PairLimitReached",
    "PairProtocolError",
    "PairRequestError",
    "PairReset",
    "PairResponse",
    "PairStateError",
    "PairStreamOpened",
    "PingAnswered",
    "WindowOpened",
    "agent_identity",
    "parse_pair_path",
    "validate_pair_headers",
]

# SETTINGS_INITIAL_WINDOW_SIZE we advertise. h2 sends a WINDOW_UPDATE once half a window
# is acknowledged: with 1 MiB that was a write (and a wake-up of the peer) per 512 KiB,
# about a third of a bulk receiver's syscall time; with 4 MiB it is one per 2 MiB.
STREAM_WINDOW: Final = 4 << 20
# Raised with a WINDOW_UPDATE on stream 0; it bounds the bytes in flight (and so the bytes
# a receiver may hold unacknowledged) over all streams of a connection.
CONNECTION_WINDOW: Final = 16 << 20
# SETTINGS_MAX_FRAME_SIZE we advertise: never the limit (reads are 256 KiB), so one local
# read is one DATA frame, and h2's per-frame work runs once per read.
MAX_FRAME_SIZE: Final = 1 << 20
# SETTINGS_MAX_CONCURRENT_STREAMS the agent advertises: 8192 pairs per connection, where
# SPDY has no limit at all (1024 refused the bench's 1000 concurrent connections); a
# client past it waits for streams to close (H2Link queues the connection).
MAX_CONCURRENT_STREAMS: Final = 16384
_DEFAULT_CONNECTION_WINDOW: Final = 65535  # RFC 9113 §6.9.2; SETTINGS cannot change it
_DEFAULT_MAX_HEADER_LIST: Final = 1 << 16
PATH_PREFIX: Final = "/v1/portforward/"
#: ``GET`` here is the agent handshake: a podgate agent answers 200 with a JSON body whose
#: ``kind`` is AGENT_KIND. Any other server (an API server answers 403 or 404) is not one,
#: and its answers must never be taken for pod data.
AGENT_PATH: Final = "/v1/agent"
AGENT_KIND: Final = "PodgateAgent"
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


class PairLimitReached(PairStateError):
    """No pair can be opened now: the agent's SETTINGS have not arrived, or its
    MAX_CONCURRENT_STREAMS is reached. Retry once streams close."""


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
    """Bytes on a stream (often a slice of a received chunk: write it out, or copy it to
    keep it); acknowledge ``flow_controlled_length`` once written out."""

    stream_id: int
    data: bytes | memoryview
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
    """The peer sent GOAWAY; streams above ``last_stream_id`` were not processed. After a
    graceful one (``code`` 0) a client's streams up to it go on to their end (drain)."""

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
# The one fix, for our connections only: the frame buffer (_FrameBuffer, below) makes
# each received DATA frame a _QuietDataFrame, whose __repr__ reports only the size, and
# the dispatch table learns the subclass (h2 dispatches on frame.__class__). Nothing else
# in h2 looks at the class. tests/unit/test_h2pair.py proves that no serialize/hexlify
# runs.


class _QuietDataFrame(DataFrame):
    """A received DATA frame whose repr neither copies nor hex-encodes the payload."""

    def __repr__(self) -> str:
        return f"DataFrame(stream_id={self.stream_id}): <{len(self.data)} bytes>"


# ---------------------------------------------------------------------- DATA without copies
#
# h2 4.4.1 copies every payload several times, and at bulk rates each large copy is a
# fresh allocation that page-faults (measured: ~200k minor faults per GB received):
#
# * Sending: H2Stream.send_data's memoryview.tobytes(), DataFrame.serialize_body's join
#   with the padding, Frame.serialize's header + body, _prepare_for_sending's bytearray +=
#   and data_to_send's bytes(): five copies. _H2Connection.queue_data does what
#   H2Connection.send_data does for an unpadded DATA frame without END_STREAM -- the same
#   state machine inputs on the connection and the stream (which raise as h2's would),
#   the same decrements of both outbound windows -- and queues a 9-byte header (RFC 9113
#   §4.1) plus a slice of the caller's bytes, in order with h2's own output.
# * Receiving: FrameBuffer.add_data's bytearray +=, __next__'s slice of the body and
#   DataFrame.parse_body's tobytes(): three copies. _FrameBuffer keeps the received
#   chunks as they came and cuts an unpadded DATA payload out of them: a slice of one
#   chunk, or one join when the frame spans reads. The frame then goes through h2's
#   dispatch like any other (state machines, inbound windows, events).
#
# Everything else (HEADERS, END_STREAM, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY, padded
# DATA) is still parsed and built by h2. tests/unit/test_h2pair.py checks both directions
# against a stock H2Connection.

_FRAME_HEADER: Final = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, id
_DATA: Final = 0x0
_END_STREAM: Final = 0x1
_PADDED: Final = 0x8


class _FrameBuffer(FrameBuffer):
    """h2's frame buffer over the received chunks themselves (see above)."""

    def __init__(self, server: bool) -> None:
        super().__init__(server)
        self._parts: deque[memoryview] = deque()
        self._size = 0

    def add_data(self, data: _H2Buffer) -> None:
        # A bytes object cannot change under the views cut from it; anything else is
        # copied once (the event loops hand us bytes).
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        if self._preamble_len:  # server: the client preface first, checked as h2 does
            n = min(self._preamble_len, len(view))
            if view[:n] != self._preamble[:n]:
                raise H2ProtocolError("Invalid HTTP/2 preamble.")
            self._preamble, self._preamble_len = self._preamble[n:], self._preamble_len - n
            view = view[n:]
        if view:
            self._parts.append(view)
            self._size += len(view)

    def _peek(self, n: int) -> bytes:
        out = b""
        for part in self._parts:
            out += part[: n - len(out)]
            if len(out) == n:
                break
        return out

    def _take(self, n: int) -> Buffer:
        """The next ``n`` bytes: a slice of one received chunk, or one join."""
        if not n:
            return b""
        self._size -= n
        parts = self._parts
        first = parts[0]
        if len(first) >= n:
            if len(first) == n:
                parts.popleft()
            else:
                parts[0] = first[n:]
            piece = first[:n]
            # A view keeps its whole read alive while the payload waits in a buffer: only
            # for at least half of that read, so held memory stays within 2x the payload.
            return piece if 2 * n >= len(cast(bytes, piece.obj)) else piece.tobytes()
        pieces: list[memoryview] = []
        while n:
            part = parts.popleft()
            if len(part) > n:
                parts.appendleft(part[n:])
                part = part[:n]
            pieces.append(part)
            n -= len(part)
        return b"".join(pieces)

    def __next__(self) -> Frame:
        if self._size < 9:
            raise StopIteration
        header = self._peek(9)
        length = int.from_bytes(header[:3], "big")
        # Checked before the body arrives, so a peer cannot make us buffer a huge frame.
        self._validate_frame_length(length)
        if self._size < 9 + length:
            raise StopIteration
        self._take(9)
        body = self._take(length)
        kind, flags = header[3], header[4]
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        frame: Frame
        if kind == _DATA and stream_id and not flags & _PADDED:
            frame = _QuietDataFrame(stream_id)
            if flags & _END_STREAM:
                frame.flags.add("END_STREAM")
            frame.data = cast(bytes, body)  # a view is fine: h2 only takes its len()
            frame.body_len = length
        else:
            frame = self._parse(header, body)
        new_frame = self._update_header_buffer(frame)
        return new_frame if new_frame is not None else self.__next__()

    @staticmethod
    def _parse(header: bytes, body: Buffer) -> Frame:
        """Any other frame, parsed by hyperframe with h2's error mapping."""
        try:
            frame, _ = Frame.parse_frame_header(memoryview(header))
        except (InvalidDataError, InvalidFrameError) as err:
            raise H2ProtocolError(f"Received frame with invalid header: {err!s}") from err
        try:
            frame.parse_body(memoryview(body))
        except InvalidDataError as err:
            raise H2ProtocolError("Received frame with non-compliant data") from err
        except InvalidFrameError as err:
            raise FrameDataMissingError("Frame data missing or invalid") from err
        if frame.__class__ is DataFrame:
            frame.__class__ = _QuietDataFrame
        return frame


class _H2Connection(H2Connection):
    """h2's connection, with received DATA frames made cheap to repr and DATA payloads
    neither copied when sent nor when received (see above)."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.incoming_buffer = _FrameBuffer(server=not config.client_side)
        table = self._frame_dispatch_table
        table[_QuietDataFrame] = table[DataFrame]
        # Output queued before whatever is in h2's own buffer (_data_to_send), in order.
        self._out: list[Buffer] = []
        # len(self.streams) at which the next exact count (and cull) runs; see _open_streams.
        self._recount_at = 0
        #: Set by a graceful GOAWAY: no new stream may be opened, those up to it finish.
        self.goaway_last_stream_id: int | None = None

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[H2Event]]:
        """A graceful GOAWAY (NO_ERROR) leaves a client's connection open: the streams up
        to ``last_stream_id`` may finish (RFC 9113 §6.8). h2 4.x closes its state machine
        on any GOAWAY (and drops its queued output, acknowledgements included), after
        which it refuses to send or receive anything. Other GOAWAYs end the connection."""
        if not self.config.client_side or frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        self.goaway_last_stream_id = frame.last_stream_id
        event = ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _open_streams(self, remainder: int) -> int:
        """h2 counts the open streams of one side by walking every stream, culling the
        closed ones, before every HEADERS sent or received: with 1000 pairs that walk was
        most of the time spent opening a pair. ``len(self.streams)`` bounds the count from
        above, and h2 only compares it with a limit (``count + 1 > limit``), as does
        ``can_open_pair`` (``+ 2``): while the bound leaves room for a pair, it is the
        answer. The exact walk runs when the bound nears the limit, or once the table has
        doubled since the last walk, so closed streams are still culled (amortised O(1))."""
        size = len(self.streams)
        outbound = remainder == int(self.config.client_side)
        settings = self.remote_settings if outbound else self.local_settings
        if size < self._recount_at and size + 2 <= settings.max_concurrent_streams:
            return size
        count = super()._open_streams(remainder)
        self._recount_at = 2 * len(self.streams) + 64
        return count

    def queue_data(self, stream_id: int, view: memoryview) -> None:
        """Queue all of ``view`` as DATA frames (no padding, no END_STREAM); the caller
        checked the windows and keeps the bytes unchanged until they are written."""
        stream = self._get_stream_by_id(stream_id)
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        out = self._out
        if self._data_to_send:
            out.append(super().data_to_send())  # frames h2 queued earlier go first
        size = len(view)
        step = self.max_outbound_frame_size
        for start in range(0, size, step):
            n = min(step, size - start)
            out.append(_FRAME_HEADER.pack(n >> 8, n & 0xFF, _DATA, 0, stream_id))
            out.append(view[start : start + n])
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size

    def take_output(self) -> list[Buffer]:
        """Every queued frame, in order, as buffers for ``writelines``."""
        out = self._out
        if self._data_to_send:
            out.append(super().data_to_send())
        self._out = []
        return out


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


def agent_identity(status: int, body: bytes) -> str | None:
    """The agent's version from its answer to ``GET AGENT_PATH``, or None when the answer
    is not a podgate agent's."""
    if status != 200:
        return None
    try:
        info = json.loads(body)
    except ValueError:
        return None
    if not isinstance(info, dict) or info.get("kind") != AGENT_KIND:
        return None
    version = info.get("version")
    return version if isinstance(version, str) else ""


# ---------------------------------------------------------------------- shared endpoint


class _PairEndpoint:
    def __init__(self, client_side: bool, max_concurrent_streams: int, max_frame_size: int) -> None:
        # Our own headers are valid by construction: h2's checks and normalisation of them
        # were a tenth of the CPU of opening a pair. The agent still checks what it gets.
        config = H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=not client_side,
        )
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
        # Until the peer's SETTINGS arrive its limits are h2's defaults (100 streams), not
        # what it will enforce: streams opened before could be refused.
        self.settings_received = False

    def _initiate(self) -> None:
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_CONNECTION_WINDOW)
        self._initiated = True

    # ------------------------------------------------------------------ output

    def buffers_to_send(self) -> list[Buffer]:
        """Everything queued, for ``writelines``: our frames and h2's automatic ones
        (SETTINGS ACK, PING ACK, WINDOW_UPDATE after ``acknowledge``, GOAWAY after a
        protocol error). DATA payloads are slices of the bytes given to ``send_data``."""
        return self._conn.take_output()

    def data_to_send(self) -> bytes:
        """``buffers_to_send()`` joined into one bytes object."""
        return b"".join(self.buffers_to_send())

    # ------------------------------------------------------------------ sending

    def send_data(self, stream_id: int, data: Buffer) -> int:
        """Queue as much of ``data`` as the windows allow now, in frames of at most the
        peer's MAX_FRAME_SIZE; return how many bytes were taken (0: wait for
        ``WindowOpened``). Read-only data (bytes) is queued without a copy: it is
        referenced until written out; writable buffers are copied."""
        conn = self._conn
        try:
            allowed = min(len(data), conn.local_flow_control_window(stream_id))
            if allowed <= 0:
                return 0
            view = memoryview(data)
            view = view[:allowed] if view.readonly else memoryview(bytes(view[:allowed]))
            conn.queue_data(stream_id, view)
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
                self.settings_received = True
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
        max_frame_size: int = MAX_FRAME_SIZE,
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
        return self.data_to_send()

    def can_open_pair(self) -> bool:
        """Whether the agent's SETTINGS arrived and its MAX_CONCURRENT_STREAMS leaves room
        for two more streams."""
        conn = self._conn
        return (
            self.settings_received
            and conn.open_outbound_streams + 2 <= conn.remote_settings.max_concurrent_streams
        )

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
        if conn.goaway_last_stream_id is not None:
            raise PairStateError("the agent sent GOAWAY: no new stream may be opened")
        if not self.settings_received:
            raise PairLimitReached("the agent's SETTINGS have not arrived yet")
        if not self.can_open_pair():
            limit = conn.remote_settings.max_concurrent_streams
            raise PairLimitReached(f"the agent allows {limit} concurrent streams")
        path = f"{PATH_PREFIX}{quote(namespace, safe='')}/{quote(pod, safe='')}"
        base = [
            (":method", "POST"),
            (":scheme", self.scheme),
            (":authority", self.authority),
            (":path", path),
        ]
        # A new value per pair: never indexed, so it does not churn the HPACK table.
        tail: list[tuple[str, str]] = [
            ("port", str(port)),
            cast(tuple[str, str], NeverIndexedHeaderTuple("requestid", str(request_id))),
        ]
        tail.extend((k.lower(), v) for k, v in extra_headers)
        try:
            error_id = conn.get_next_available_stream_id()
            conn.send_headers(error_id, [*base, ("streamtype", "error"), *tail], end_stream=True)
            data_id = conn.get_next_available_stream_id()
            conn.send_headers(data_id, [*base, ("streamtype", "data"), *tail])
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot open a stream pair: {exc}") from exc
        return error_id, data_id

    def query_agent(self, extra_headers: Sequence[tuple[str, str]] = ()) -> int:
        """Open the handshake stream (``GET AGENT_PATH``, END_STREAM); return its id. The
        answer comes as ``PairResponse``, ``PairData`` and ``PairEnded`` on it: judge it
        with ``agent_identity``. Needs no SETTINGS from the peer (one stream)."""
        conn = self._conn
        headers = [
            (":method", "GET"),
            (":scheme", self.scheme),
            (":authority", self.authority),
            (":path", AGENT_PATH),
            *((k.lower(), v) for k, v in extra_headers),
        ]
        try:
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, headers, end_stream=True)
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot open the handshake stream: {exc}") from exc
        return stream_id

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
        self,
        *,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
        max_frame_size: int = MAX_FRAME_SIZE,
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

    def answer_agent_query(self, stream_id: int, version: str) -> None:
        """Answer ``GET AGENT_PATH``: 200, the agent's identity as JSON, END_STREAM."""
        body = json.dumps({"kind": AGENT_KIND, "version": version}).encode()
        self.respond(stream_id, 200, headers=[("content-type", "application/json")])
        self.send_data(stream_id, body)
        self.end_stream(stream_id)

    def reject_stream(self, stream_id: int, error: PairRequestError) -> None:
        """Answer a stream that failed validation: status, text body, END_STREAM."""
        self.send_text_and_end(stream_id, error.message, status=error.status)

    def goaway(self, code: int = ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY(``code``, last stream id): the client opens a new connection."""
        self._conn.close_connection(error_code=code)
