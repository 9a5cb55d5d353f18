"""Sans-IO stream pairs over HTTP/2 for podgate's client↔agent link (protocols.md §5.2).

PROJECT DESIGN, not Kubernetes: each forwarded connection is two client-opened
streams, ``POST /v1/portforward/{namespace}/{pod}`` with ``streamtype`` (``error`` sent
with END_STREAM, ``data`` without), ``port`` and ``requestid``. Built on python-hyper
h2 4.x; this module maps h2's events to small frozen events of its own.

Flow control is end to end: acknowledge every ``DataReceived.flow_controlled_length``
with ``acknowledge()`` only once those bytes were written to the local socket, and
acknowledge it even when the bytes are dropped (stream reset, socket gone), or the
connection window leaks. ``send_data`` accepts what the windows allow now and returns
the count; retry the rest after ``WindowOpened``.

Both sides advertise ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 4 MiB, MAX_FRAME_SIZE 1 MiB and
raise the connection window to 16 MiB with a WINDOW_UPDATE on stream 0.

Output is a list of buffers (``buffers_to_send()``, for ``writelines``): DATA payloads
are queued as slices of the caller's bytes, never copied ("DATA without copies" in
``internals.py``, the only module that touches h2's internals).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated as H2ConnectionTerminated
from h2.events import DataReceived as H2DataReceived
from h2.events import Event as H2Event
from h2.events import (
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    WindowUpdated,
)
from h2.events import StreamEnded as H2StreamEnded
from h2.events import StreamReset as H2StreamReset
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple

from .errors import PairLimitReached, PairProtocolError, PairRequestError, PairStateError
from .events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReplied,
    StreamReset,
    WindowOpened,
)
from .internals import Buffer, new_connection

__all__ = [
    "AGENT_KIND",
    "AGENT_PATH",
    "CONNECTION_WINDOW",
    "MAX_CONCURRENT_STREAMS",
    "MAX_FRAME_SIZE",
    "STREAM_WINDOW",
    "H2PairClient",
    "H2PairServer",
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


# ---------------------------------------------------------------------- helpers


# Fields decoded to text, remembered: the fields of a pair's requests are the same but for
# the requestid (never indexed, not remembered). Bounded: cleared when full.
_texts: dict[tuple[bytes | str, bytes | str], tuple[str, str]] = {}
_TEXTS_LIMIT: Final = 4096


def _header_dict(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    texts = _texts
    for field in headers:
        pair = texts.get(field)
        if pair is None:
            name, value = field
            pair = (
                name if isinstance(name, str) else name.decode("latin-1"),
                value if isinstance(value, str) else value.decode("latin-1"),
            )
            if not isinstance(field, NeverIndexedHeaderTuple):
                if len(texts) >= _TEXTS_LIMIT:
                    texts.clear()
                texts[field] = pair
        key, text = pair
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _status(headers: Iterable[tuple[bytes | str, bytes | str]]) -> int:
    """A response's ``:status`` as a number; 0 when missing, repeated or not a number."""
    found = [value for name, value in headers if name in (b":status", ":status")]
    if len(found) != 1:
        return 0
    text = found[0] if isinstance(found[0], str) else found[0].decode("latin-1")
    return int(text) if text.isdigit() else 0


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


@functools.lru_cache(maxsize=1024)  # the same few paths for every pair
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
        self._conn = new_connection(
            client_side,
            max_concurrent_streams=max_concurrent_streams,
            initial_window_size=STREAM_WINDOW,
            max_frame_size=max_frame_size,
            max_header_list_size=_DEFAULT_MAX_HEADER_LIST,
        )
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

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """RST_STREAM (CANCEL by default); a no-op if the stream is already closed."""
        try:
            self._conn.reset_stream(stream_id, error_code)
        except StreamClosedError:
            pass
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot reset stream {stream_id}: {exc}") from exc

    def acknowledge(self, stream_id: int, n: int) -> None:
        """``n`` flow-controlled bytes of ``stream_id`` were written out: hand them back
        (h2 sends WINDOW_UPDATE once enough is acknowledged). Fine after a reset."""
        if n:
            self._conn.acknowledge_received_data(n, stream_id)

    def release(self, *stream_ids: int) -> None:
        """The owner is done with these streams: those that are closed are forgotten
        now rather than at h2's next count of the open streams (fewer live objects)."""
        self._conn.release(*stream_ids)

    def can_send(self, stream_id: int) -> bool:
        """Whether our side of ``stream_id`` is still open."""
        return self._conn.can_send(stream_id)

    def connection_window(self) -> int:
        """Bytes the connection's window lets ``send_data`` take now, over all streams."""
        return self._conn.outbound_flow_control_window

    def window(self, stream_id: int) -> int:
        """Bytes ``send_data`` would take now on ``stream_id`` (0 if it is closed)."""
        if not self.can_send(stream_id):
            return 0
        try:
            return self._conn.local_flow_control_window(stream_id)
        except H2ProtocolError:
            return 0

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: Buffer) -> list[Event]:
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

    def _translate(self, events: list[H2Event]) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, H2DataReceived):
                # An empty DATA frame (END_STREAM alone) carries nothing to write or to
                # acknowledge: its StreamEnded follows.
                if ev.flow_controlled_length or ev.data:
                    out.append(DataReceived(ev.stream_id, ev.data, ev.flow_controlled_length))
            elif isinstance(ev, H2StreamEnded):
                out.append(StreamEnded(ev.stream_id))
            elif isinstance(ev, RequestReceived):
                out.append(
                    StreamOpened(
                        ev.stream_id, _header_dict(ev.headers), ev.stream_ended is not None
                    )
                )
            elif isinstance(ev, ResponseReceived):
                out.append(StreamReplied(ev.stream_id, _status(ev.headers)))
            elif isinstance(ev, WindowUpdated):
                out.append(WindowOpened(ev.stream_id or 0))
            elif isinstance(ev, H2StreamReset):
                out.append(StreamReset(ev.stream_id, int(ev.error_code or 0), ev.remote_reset))
            elif isinstance(ev, RemoteSettingsChanged):
                self.settings_received = True
                if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    out.append(WindowOpened(0))
            elif isinstance(ev, PingAckReceived):
                out.append(PingAcknowledged(ev.ping_data or b""))
            elif isinstance(ev, H2ConnectionTerminated):
                out.append(ConnectionTerminated(int(ev.error_code or 0), ev.last_stream_id or 0))
            # Ping/settings acks are automatic; trailers, priority, unknown frames: ignored.
        return out


# ---------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class _PairFields:
    """A pair's request fields but the requestid: before it, and after it."""

    error: tuple[tuple[bytes, bytes], ...]
    data: tuple[tuple[bytes, bytes], ...]
    extra: tuple[tuple[bytes, bytes], ...]


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
        # The fields of the requests that open pairs, as bytes, per target (see open_pair).
        self._pair_fields: dict[tuple[object, ...], _PairFields] = {}

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
        fields = self._fields_for(namespace, pod, port, extra_headers)
        # A new value per pair: never indexed, so it does not churn the HPACK table.
        request = NeverIndexedHeaderTuple(b"requestid", str(request_id).encode())
        try:
            error_id = conn.get_next_available_stream_id()
            conn.send_headers(error_id, [*fields.error, request, *fields.extra], end_stream=True)
            data_id = conn.get_next_available_stream_id()
            conn.send_headers(data_id, [*fields.data, request, *fields.extra])
        except H2ProtocolError as exc:
            raise PairStateError(f"cannot open a stream pair: {exc}") from exc
        return error_id, data_id

    def _fields_for(
        self, namespace: str, pod: str, port: int, extra_headers: Sequence[tuple[str, str]]
    ) -> _PairFields:
        """The request fields of a pair but its requestid, built once per target: in
        bytes, which h2 would otherwise encode (and the path quote) for every stream."""
        key = (namespace, pod, port, *extra_headers)
        fields = self._pair_fields.get(key)
        if fields is None:
            path = f"{PATH_PREFIX}{quote(namespace, safe='')}/{quote(pod, safe='')}"
            base = [
                (b":method", b"POST"),
                (b":scheme", self.scheme.encode()),
                (b":authority", self.authority.encode()),
                (b":path", path.encode()),
            ]
            port_field = (b"port", str(port).encode())
            fields = _PairFields(
                error=(*base, (b"streamtype", b"error"), port_field),
                data=(*base, (b"streamtype", b"data"), port_field),
                extra=tuple((k.lower().encode(), v.encode()) for k, v in extra_headers),
            )
            if len(self._pair_fields) >= 256:  # many targets: a bound, not a cache policy
                self._pair_fields.clear()
            self._pair_fields[key] = fields
        return fields

    def query_agent(self, extra_headers: Sequence[tuple[str, str]] = ()) -> int:
        """Open the handshake stream (``GET AGENT_PATH``, END_STREAM); return its id. The
        answer comes as ``StreamReplied``, ``DataReceived`` and ``StreamEnded`` on it: judge it
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
        """Queue a PING; ``PingAcknowledged`` carries the returned 8 bytes."""
        self._ping_counter += 1
        data = self._ping_counter.to_bytes(8, "big")
        self._conn.ping(data)
        return data

    def close(self, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY(``error_code``)."""
        self._conn.close_connection(error_code=error_code)


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
        fields = [(b":status", str(status).encode())]
        fields.extend((k.encode(), v.encode()) for k, v in headers)
        try:
            self._conn.send_headers(stream_id, fields, end_stream=end_stream)
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
        self.send_text_and_end(stream_id, error.message, status=error.error_code)

    def goaway(self, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY(``error_code``, last stream id): the client opens a new connection."""
        self._conn.close_connection(error_code=error_code)
