"""Sans-IO WebSocket-tunnelled SPDY (protocols.md §3), client and server roles.

After the upgrade, the concatenated payloads of all *binary* messages are the SPDY byte
stream of §1; message boundaries carry no meaning (a Go client writes a SYN_STREAM as
messages of 2, 2, 4, 4, 4, 1, 1 and n bytes). A text message is a protocol error.

Division of labour:

* the HTTP/1.1 handshake is done here with h11 (both roles), so that a rejection keeps
  its status line, headers and a bounded body, and the server can be handed a request
  that another layer already parsed (``TunnelRequested``, ``parse_upgrade_request``);
* once open, ``FrameParser`` below parses every incoming frame (wsproto's checks, codes
  and messages, without its per-frame cost and copies) and hands payloads over as slices
  of what was received; data messages are framed by ``message_pieces`` (header plus
  chunks masked one by one, for ``writelines``). wsproto's ``FrameProtocol`` still
  builds the control frames we send (ping, pong, close).

Kubectl-compatible fallback (§3, "How kubectl chooses"): every condition on which
kubectl falls back to plain SPDY arrives as **one** event, ``TunnelRejected``. A non-101
answer carries its status (403 included). A 101 that fails the WebSocket checks (bad
``Sec-WebSocket-Accept``, ``Upgrade`` or ``Connection``, or a selected subprotocol that
is not ``SPDY/3.1+portforward.k8s.io``, or none) is reported as ``TunnelRejected`` with
``status == 101`` and the reason in ``reason``; the caller must drop that connection.
``TunnelError`` (raised) is never a fallback condition: a malformed HTTP response, EOF
before the response, or a violation after the tunnel was open.

``WebSocketEndpoint`` and the helpers here are shared with ``wschannel``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import h11
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode
from wsproto.utilities import generate_accept_token, generate_nonce

__all__ = [
    "CLOSE_NORMAL",
    "SPDY_TUNNEL_PROTOCOL",
    "FrameError",
    "FrameParser",
    "HandshakeError",
    "PongReceived",
    "StreamBytes",
    "TunnelAccepted",
    "TunnelClient",
    "TunnelClosed",
    "TunnelError",
    "TunnelEvent",
    "TunnelRejected",
    "TunnelRequested",
    "TunnelServer",
    "WebSocketEndpoint",
    "WebSocketError",
    "WebSocketStateError",
    "accept_response",
    "encode_message",
    "frame_header",
    "mask_payload",
    "message_pieces",
    "parse_upgrade_request",
    "reject_response",
]

SPDY_TUNNEL_PROTOCOL: Final = "SPDY/3.1+portforward.k8s.io"
CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_NO_STATUS: Final = 1005  # a Close frame without a status code (never sent as one)
CLOSE_ABNORMAL: Final = 1006  # no Close frame: the transport ended (never sent on the wire)
CLOSE_INVALID_DATA: Final = 1007
CLOSE_MESSAGE_TOO_BIG: Final = 1009

OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2

DEFAULT_MAX_REJECT_BODY: Final = 64 * 1024
try:  # C-accelerated masking (a declared dependency); pure Python below otherwise
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover
    _c_apply_mask = None  # type: ignore[assignment]

_MASK_BLOCK: Final = 4096

_WS_VERSION: Final = "13"
_HDR_SHORT = struct.Struct("!BB")
_HDR_16 = struct.Struct("!BBH")
_HDR_64 = struct.Struct("!BBQ")

Buffer = bytes | bytearray | memoryview
HeaderList = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------- errors


class WebSocketError(Exception):
    """A WebSocket-level violation by the peer (or an unusable handshake answer).

    ``close_code`` is the status of the Close frame that was queued for
    ``data_to_send()`` (1002 protocol error, 1003 unsupported data, 1007 invalid
    payload, 1009 too big) when the connection was open.
    """

    def __init__(self, message: str, *, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.close_code = close_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, close_code={self.close_code})"


class TunnelError(WebSocketError):
    """The tunnel cannot go on; never a reason to fall back to plain SPDY."""


class WebSocketStateError(Exception):
    """Local misuse: the endpoint cannot do this in its current state."""


class HandshakeError(Exception):
    """An upgrade request that must be refused with HTTP ``status`` (server side).

    Answer it with ``reject(err.status, err.message.encode(), err.headers)``.
    """

    def __init__(self, status: int, message: str, headers: HeaderList = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


# ---------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class TunnelRequested:
    """An upgrade request (server side). ``headers`` has every request header with a
    lowercase name, in order; ``path`` is the request target, query included."""

    path: str
    headers: HeaderList
    subprotocols: tuple[str, ...]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class TunnelAccepted:
    """The server switched protocols with the tunnel subprotocol."""

    subprotocol: str
    headers: HeaderList


@dataclass(frozen=True, slots=True)
class TunnelRejected:
    """Fall back to plain SPDY (see the module docstring). ``status`` is 101 when a
    switch happened but failed the WebSocket checks; ``body`` is bounded."""

    status: int
    reason: str
    headers: HeaderList
    body: bytes


@dataclass(frozen=True, slots=True)
class StreamBytes:
    """The next bytes of the SPDY stream (payloads of binary messages, in order)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered a WebSocket ping (or sent an unsolicited pong)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class TunnelClosed:
    """The WebSocket closed. 1000 is a clean EOF; anything else is an error (1006: the
    transport ended without a Close frame). Our Close reply, if due, is queued."""

    code: int
    reason: str

    @property
    def clean(self) -> bool:
        return self.code == CLOSE_NORMAL


TunnelEvent = (
    TunnelRequested | TunnelAccepted | TunnelRejected | StreamBytes | PongReceived | (TunnelClosed)
)


# ---------------------------------------------------------------------- masking


def mask_payload(key: bytes, data: Buffer) -> bytes:
    """XOR ``data`` with the 4-byte masking ``key`` repeated (RFC 6455 §5.3).

    CPython has no vectorised XOR for bytes, but its big integers do one in C: read a
    piece of payload as an int, XOR it with the key repeated to the same length, write
    it back (``from_bytes``, ``^``, ``to_bytes``: three C loops, no Python loop per
    byte). Little-endian on both sides pairs payload byte i with key byte i % 4.
    Pieces are 4 KiB (a multiple of 4, so every piece starts at key byte 0): ints that
    size stay in cache, while one int over a whole MiB is about half as fast. wsproto
    1.3 has no C-accelerator hook; the rates measured against its masker are in the
    report. Masking is its own inverse.
    """
    return b"".join(_masked_pieces(key, data))


def _masked_pieces(key: bytes, data: Buffer) -> list[bytes]:
    """``mask_payload`` as a list of pieces, so that a frame is joined in one copy.

    The C masker of the `websockets` package (tens of GB/s) is used when it is importable;
    the big-int XOR below (about 0.6 GB/s) is the fallback and the tests' oracle.
    """
    if _c_apply_mask is not None:
        return [_c_apply_mask(data, key)]
    return _int_masked_pieces(key, data)


def _int_masked_pieces(key: bytes, data: Buffer) -> list[bytes]:
    n = len(data)
    view = memoryview(data)
    from_bytes = int.from_bytes
    parts: list[bytes] = []
    full = n - n % _MASK_BLOCK
    if full:
        key_block = from_bytes(key * (_MASK_BLOCK >> 2), "little")
        parts = [
            (from_bytes(view[i : i + _MASK_BLOCK], "little") ^ key_block).to_bytes(
                _MASK_BLOCK, "little"
            )
            for i in range(0, full, _MASK_BLOCK)
        ]
    tail = n - full
    if tail:
        key_tail = from_bytes((key * ((tail + 3) >> 2))[:tail], "little")
        parts.append((from_bytes(view[full:], "little") ^ key_tail).to_bytes(tail, "little"))
    return parts


def frame_header(opcode: int, size: int, mask_bit: int) -> bytes:
    """The header of an unfragmented frame; ``mask_bit`` is 0x80 when a key follows."""
    first = 0x80 | opcode  # FIN: never fragmented (x/net/websocket reads frame by frame)
    if size < 126:
        return _HDR_SHORT.pack(first, mask_bit | size)
    if size < 0x10000:
        return _HDR_16.pack(first, mask_bit | 126, size)
    return _HDR_64.pack(first, mask_bit | 127, size)


def message_pieces(opcode: int, chunks: Sequence[Buffer], *, mask: bool) -> list[Buffer]:
    """One unfragmented frame carrying the concatenation of ``chunks``, as pieces for
    ``writelines``: the header (with the key when masked), then the payload chunks, each
    masked on its own or, unmasked, passed through. Nothing is joined."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
    if not mask:
        return [frame_header(opcode, size, 0), *chunks]
    # RFC 6455 §5.3: a fresh, unpredictable key for every frame.
    key = os.urandom(4)
    pieces: list[Buffer] = [frame_header(opcode, size, 0x80) + key]
    key2 = key + key  # key2[k : k + 4] is the key as seen from payload offset k (mod 4)
    offset = 0
    for chunk in chunks:
        if chunk:
            k = offset & 3
            pieces.extend(_masked_pieces(key2[k : k + 4] if k else key, chunk))
            offset += len(chunk)
    return pieces


def encode_message(opcode: int, payload: Buffer, *, mask: bool) -> bytes:
    """One unfragmented data frame (FIN set) carrying ``payload``; masked for clients."""
    return b"".join(message_pieces(opcode, (payload,), mask=mask))


# ---------------------------------------------------------------------- frame parser


class FrameError(Exception):
    """A frame that breaks RFC 6455; ``close_code`` is the Close status to answer with.

    The messages are wsproto's, so that a Close reason reads as it did before.
    """

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.close_code = close_code


_MAX_CONTROL: Final = 2 + 4 + 125  # a whole control frame (buffered before it is handled)
_OPCODE_CONTINUATION: Final = 0x0
_OPCODE_CLOSE: Final = 0x8
_OPCODE_PING: Final = 0x9
_OPCODE_PONG: Final = 0xA
_KNOWN_OPCODES: Final = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))
_KNOWN_CLOSE_CODES: Final = frozenset(int(c) for c in CloseReason)
_LOCAL_ONLY_CLOSE_CODES: Final = frozenset((CLOSE_NO_STATUS, CLOSE_ABNORMAL, 1015))
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class FrameParser:
    """Incremental RFC 6455 frame parser for the receiving side of an open WebSocket.

    It replaces wsproto's receive path, which costs a dozen Python calls and four copies
    per frame: here a data frame costs one header decode, and its payload goes to
    ``on_data`` as a ``memoryview`` slice of the fed buffer (the fed object itself when a
    piece spans all of it), unmasked by the C masker on the server side. A slice is only
    valid until ``feed`` returns (the buffer may be a reused read buffer): copy what you
    keep. Only an incomplete header or control frame (at most 131 bytes) is copied and
    carried to the next call.

    Checks, their order, close codes and messages are wsproto 1.3's (``client=True``
    expects unmasked frames, a server masked ones): bad opcode, fragmented or >125-byte
    control frame, non-minimal or 2**63+ length, reserved bits, mask bit; continuation
    rules when a frame's first payload byte (or its empty payload) arrives; UTF-8 of text
    (1007) and the Close payload rules. A violation raises ``FrameError``.
    """

    def __init__(
        self,
        client: bool,
        on_data: Callable[[Buffer | str, bool], None],
        on_ping: Callable[[bytes], None],
        on_pong: Callable[[bytes], None],
        on_close: Callable[[int, str], None],
    ) -> None:
        self.client = client
        self.closed = False  # a Close frame was parsed: the rest is ignored
        # on_data(piece, finished): payload of a data message in order, as a slice of
        # the fed buffer (binary) or decoded text; finished on its last (maybe empty) piece
        self._data = on_data
        self._on_ping = on_ping
        self._on_pong = on_pong
        self._on_close = on_close  # a valid Close (1005: no status code); parsing stops
        self._head = b""  # incomplete header or control frame from the last call
        # the data frame whose payload is being received
        self._left = 0  # payload bytes still to come
        self._fin = False
        self._opcode = 0
        self._key = b""  # masking key twice (server side), else empty
        self._offset = 0  # payload bytes unmasked so far (selects the key rotation)
        self._fresh = False  # its first payload piece has not been handled yet
        # the data message in progress
        self._message = 0  # its opcode, 0 between messages
        self._decoder: codecs.IncrementalDecoder | None = None  # UTF-8, for text

    def feed(self, data: Buffer) -> None:
        """Parse ``data``; the handler is called for everything complete in it."""
        if self.closed or not data:
            return
        # bytes are indexed as they are (faster); anything else through a view
        raw = data if isinstance(data, bytes | memoryview) else memoryview(data)
        pos = 0
        if self._head:
            head = self._head
            joined = head + raw[:_MAX_CONTROL]
            after = self._header(joined, 0)
            if after < 0:
                self._head = joined  # raw was shorter than what the frame still needs
                return
            self._head = b""
            pos = after - len(head)
        self._run(raw, pos)

    def _run(self, data: bytes | memoryview, pos: int) -> None:
        size = len(data)
        view = data if isinstance(data, memoryview) else memoryview(data)
        while pos < size and not self.closed:
            left = self._left
            if not left:
                after = self._header(data, pos)
                if after < 0:
                    self._head = bytes(data[pos:])
                    return
                pos = after
                continue
            end = pos + left if left < size - pos else size
            left -= end - pos
            self._left = left
            if self._key or self._fresh or self._decoder is not None:
                self._piece(view[pos:end])
            else:  # plain binary payload: handed over as it lies in data
                finished = not left and self._fin
                if finished:
                    self._message = 0
                self._data(data if end - pos == size else view[pos:end], finished)
            pos = end

    def _piece(self, piece: Buffer) -> None:
        """Hand over the next payload piece of the current frame (``_left`` is updated)."""
        if self._fresh:
            self._fresh = False
            self._start_frame()
        key = self._key
        if key:
            k = self._offset & 3
            self._offset += len(piece)
            piece = mask_payload(key[k : k + 4], piece)
        finished = not self._left and self._fin
        decoder = self._decoder
        if decoder is not None:
            try:
                text = decoder.decode(piece, finished)
            except UnicodeDecodeError as exc:
                raise FrameError(str(exc), CLOSE_INVALID_DATA) from None
            if finished:
                self._message, self._decoder = 0, None
            self._data(text, finished)
            return
        if finished:
            self._message = 0
        self._data(piece, finished)

    def _start_frame(self) -> None:
        """wsproto's message checks, made when the frame's first payload piece arrives."""
        opcode = self._opcode
        if not self._message:
            if opcode == _OPCODE_CONTINUATION:
                raise FrameError("unexpected CONTINUATION")
            self._message = opcode
        elif opcode != _OPCODE_CONTINUATION:
            raise FrameError(f"expected CONTINUATION, got {Opcode(opcode)!r}")
        if opcode == OPCODE_TEXT:
            self._decoder = codecs.getincrementaldecoder("utf-8")()

    def _header(self, buf: bytes | memoryview, pos: int) -> int:
        """Parse the frame header at ``pos``: return the offset of its payload (of the
        next frame after a control frame, handled whole), or -1 if ``buf`` ends first."""
        avail = len(buf) - pos
        if avail < 2:
            return -1
        b0 = buf[pos]
        b1 = buf[pos + 1]
        opcode = b0 & 0x0F
        if opcode not in _KNOWN_OPCODES:
            raise FrameError(f"Invalid opcode {opcode:#x}")
        control = opcode & 0x08
        if control and not b0 & 0x80:
            raise FrameError("Invalid attempt to fragment control frame")
        size = b1 & 0x7F
        if control and size > 125:
            raise FrameError("Control frame with payload len > 125")
        start = pos + 2
        if size == 126:
            if avail < 4:
                return -1
            size = _U16.unpack_from(buf, start)[0]
            start += 2
            if size <= 125:
                raise FrameError("Payload length used 2 bytes when 1 would have sufficed")
        elif size == 127:
            if avail < 10:
                return -1
            size = _U64.unpack_from(buf, start)[0]
            start += 8
            if size <= 0xFFFF:
                raise FrameError("Payload length used 8 bytes when 2 would have sufficed")
            if size >> 63:
                raise FrameError("8-byte payload length with non-zero MSB")
        if b0 & 0x70:
            raise FrameError("Reserved bit set unexpectedly")
        masked = b1 & 0x80
        if masked and self.client:
            raise FrameError("client received unexpected masked frame")
        if not masked and not self.client:
            raise FrameError("server received unexpected unmasked frame")
        key = b""
        if masked:
            if len(buf) < start + 4:
                return -1
            key = bytes(buf[start : start + 4])
            start += 4
        if control:
            end = start + size
            if len(buf) < end:
                return -1
            payload = bytes(buf[start:end])
            self._control(opcode, mask_payload(key, payload) if key else payload)
            return end
        self._opcode = opcode
        self._fin = bool(b0 & 0x80)
        self._key = key + key
        self._offset = 0
        self._left = size
        # wsproto checks the message when the first payload byte (or an empty payload) is
        # there, so a header at the very end of buf waits for it.
        if size and len(buf) == start:
            self._fresh = True
        elif self._message or opcode != OPCODE_BINARY:
            self._start_frame()
        else:
            self._message = OPCODE_BINARY
        if not size:
            self._piece(b"")  # an empty frame is complete with its header
        return start

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _OPCODE_PING:
            self._on_ping(payload)
        elif opcode == _OPCODE_PONG:
            self._on_pong(payload)
        else:
            code, reason = _parse_close(payload)
            self.closed = True
            self._on_close(code, reason)


def _parse_close(payload: bytes) -> tuple[int, str]:
    """The status and reason of a Close frame (wsproto's rules and messages)."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError("CLOSE with 1 byte payload")
    code = _U16.unpack_from(payload)[0]
    if code < 1000 or code > 4999:
        raise FrameError("CLOSE with invalid code")
    if code in _LOCAL_ONLY_CLOSE_CODES:
        raise FrameError("remote CLOSE with local-only reason")
    if code <= 2999 and code not in _KNOWN_CLOSE_CODES:
        raise FrameError("CLOSE with unknown reserved code")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("Error decoding CLOSE reason: " + str(exc), CLOSE_INVALID_DATA) from None
    return code, reason


# ---------------------------------------------------------------------- handshake helpers


def _decode(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def _split_tokens(values: Iterable[str]) -> list[str]:
    return [p for v in values for p in (piece.strip() for piece in v.split(",")) if p]


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def _header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if any(c in name or c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} contains a line break or NUL")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines)


def parse_upgrade_request(
    method: bytes | str, target: bytes | str, headers: Iterable[tuple[bytes | str, bytes | str]]
) -> TunnelRequested:
    """Validate a WebSocket upgrade request (RFC 6455 §4.2.1); raise ``HandshakeError``.

    For a server whose HTTP layer already parsed the request (it must still hand over
    the bytes that followed it).
    """
    hdrs = tuple((_decode(k).lower(), _decode(v)) for k, v in headers)
    if _decode(method).upper() != "GET":
        raise HandshakeError(405, "websocket: the request method is not GET", (("Allow", "GET"),))
    connection = _split_tokens(v for k, v in hdrs if k == "connection")
    upgrade = _split_tokens(v for k, v in hdrs if k == "upgrade")
    if not any(t.lower() == "upgrade" for t in connection) or not any(
        t.lower() == "websocket" for t in upgrade
    ):
        raise HandshakeError(400, "Upgrade request required")
    versions = _split_tokens(v for k, v in hdrs if k == "sec-websocket-version")
    if _WS_VERSION not in versions:
        raise HandshakeError(
            426,
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
            (("Sec-WebSocket-Version", _WS_VERSION),),
        )
    key = next((v.strip() for k, v in hdrs if k == "sec-websocket-key"), "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "websocket: not a websocket handshake: 'Sec-WebSocket-Key'")
    subprotocols = tuple(_split_tokens(v for k, v in hdrs if k == "sec-websocket-protocol"))
    return TunnelRequested(_decode(target), hdrs, subprotocols)


def accept_response(
    request: TunnelRequested, subprotocol: str | None, extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The ``101 Switching Protocols`` answer to ``request``."""
    if subprotocol and subprotocol not in request.subprotocols:
        raise WebSocketStateError(f"subprotocol {subprotocol!r} was not offered")
    key = (request.header("sec-websocket-key") or "").strip().encode("latin-1")
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key).decode("ascii")),
    ]
    if subprotocol:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    headers.extend(extra_headers)
    return _status_line(101) + _header_lines(headers) + b"\r\n"


def reject_response(
    status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A complete HTTP/1.1 refusal; the server closes the connection after it."""
    if not 200 <= status <= 599:
        raise ValueError(f"status {status} cannot reject an upgrade")
    lines: list[tuple[str, str]] = []
    if body:
        lines.append(("Content-Type", "text/plain; charset=utf-8"))
    lines.append(("Content-Length", str(len(body))))
    lines.append(("Connection", "close"))
    lines.extend(headers)
    return _status_line(status) + _header_lines(lines) + b"\r\n" + body


class _Phase(enum.Enum):
    IDLE = "idle"  # client: initiate() not called yet
    HANDSHAKE = "handshake"  # waiting for the response (client) or request (server)
    REQUESTED = "requested"  # server: request parsed, accept or reject pending
    REJECTING = "rejecting"  # client: collecting a refusal's body
    OPEN = "open"
    REJECTED = "rejected"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class _Accepted:
    subprotocol: str | None
    headers: HeaderList


# ---------------------------------------------------------------------- shared endpoint


class WebSocketEndpoint:
    """Handshake and open-state plumbing shared by the tunnel and channel endpoints.

    Subclasses implement ``_on_message`` (and, for clients, ``_on_accepted``) and turn
    the calls below into their own events. Automatic replies (pong, the Close echo, the
    Close after a violation) are queued for ``data_to_send()``.
    """

    _error_type: type[WebSocketError] = WebSocketError

    def __init__(self, client: bool, *, max_reject_body: int = DEFAULT_MAX_REJECT_BODY) -> None:
        self.client = client
        self.max_reject_body = max_reject_body
        self.subprotocol: str | None = None
        self.request: TunnelRequested | None = None
        self._phase = _Phase.IDLE if client else _Phase.HANDSHAKE
        self._h11 = h11.Connection(h11.CLIENT if client else h11.SERVER)
        # open state: None until the switch; wsproto's states, REMOTE_CLOSING excepted
        # (a Close is echoed as soon as it is parsed)
        self._state: ConnectionState | None = None
        self._parser: FrameParser | None = None
        self._frames: FrameProtocol | None = None  # builds our control frames
        self._pending = b""  # server: frames received before our 101, parsed on next call
        self._out: list[bytes] = []
        self._error: WebSocketError | None = None
        # client handshake
        self._nonce = b""
        self._offered: tuple[str, ...] = ()
        self._status = 0
        self._reason = ""
        self._headers: HeaderList = ()
        self._body = bytearray()
        # server: the request came complete (EndOfMessage) from h11
        self._pending_request: TunnelRequested | None = None

    # ------------------------------------------------------------------ inspection

    @property
    def is_open(self) -> bool:
        """Whether data messages may be sent now."""
        return self._phase is _Phase.OPEN and self._state is ConnectionState.OPEN

    @property
    def phase(self) -> str:
        return self._phase.value

    @property
    def error(self) -> WebSocketError | None:
        return self._error

    @property
    def trailing_data(self) -> bytes:
        """Server: bytes received after the upgrade request, not yet parsed."""
        return self._h11.trailing_data[0]

    def data_to_send(self) -> bytes:
        """Drain the automatic replies queued by ``receive_data``."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    # ------------------------------------------------------------------ client handshake

    def _initiate(
        self,
        host: str,
        target: str,
        subprotocols: Sequence[str],
        extra_headers: Sequence[tuple[str, str]],
    ) -> bytes:
        if self._phase is not _Phase.IDLE:
            raise WebSocketStateError("initiate() was already called")
        self._nonce = generate_nonce()
        self._offered = tuple(subprotocols)
        headers = [
            ("Host", host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self._nonce.decode("ascii")),
            ("Sec-WebSocket-Version", _WS_VERSION),
        ]
        if subprotocols:
            headers.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
        headers.extend(extra_headers)
        request = h11.Request(method="GET", target=target, headers=headers)
        data = self._h11.send(request) or b""
        data += self._h11.send(h11.EndOfMessage()) or b""
        self._phase = _Phase.HANDSHAKE
        return data

    def _client_handshake(self, data: Buffer) -> bytes | None:
        """Feed the response. Returns the bytes after a valid 101 (then ``_on_accepted``
        was called), or None while waiting or after a refusal (``_on_rejected``)."""
        self._h11.receive_data(bytes(data))
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._phase is _Phase.REJECTING:
                    self._rejected()  # a refusal whose body was cut short is still a refusal
                    return None
                raise self._fail(
                    self._error_type(f"bad HTTP response to the upgrade: {exc}")
                ) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self._phase is _Phase.OPEN:
                    return self._h11.trailing_data[0]
                return None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    continue  # 100 Continue and friends: the real answer follows
                accepted = self._check_switch(event)
                if accepted is None:
                    return None
                self._open_ws()
                self._phase = _Phase.OPEN
                self.subprotocol = accepted.subprotocol
                self._on_accepted(accepted.subprotocol, accepted.headers)
            elif isinstance(event, h11.Response):
                self._phase = _Phase.REJECTING
                self._status = event.status_code
                self._reason = event.reason.decode("latin-1")
                self._headers = _header_tuple(event.headers)
            elif isinstance(event, h11.Data):
                room = self.max_reject_body - len(self._body)
                self._body += event.data[:room]
                if len(event.data) >= room:
                    self._rejected()  # bounded: the rest of the body is not awaited
                    return None
            elif isinstance(event, h11.EndOfMessage):
                self._rejected()
                return None
            else:  # ConnectionClosed after a complete response: nothing more to read
                return None

    def _check_switch(self, event: h11.InformationalResponse) -> _Accepted | None:
        headers = _header_tuple(event.headers)
        connection = _split_tokens(v for k, v in headers if k == "connection")
        upgrade = _split_tokens(v for k, v in headers if k == "upgrade")
        accept = next((v.strip() for k, v in headers if k == "sec-websocket-accept"), None)
        selected = next((v.strip() for k, v in headers if k == "sec-websocket-protocol"), None)
        problem = None
        if not any(t.lower() == "upgrade" for t in connection):
            problem = "missing 'Connection: Upgrade' in the 101 response"
        elif not any(t.lower() == "websocket" for t in upgrade):
            problem = "missing 'Upgrade: websocket' in the 101 response"
        elif accept != generate_accept_token(self._nonce).decode("ascii"):
            problem = "bad Sec-WebSocket-Accept in the 101 response"
        elif any(k == "sec-websocket-extensions" for k, _ in headers):
            problem = "the server selected an extension that was not offered"
        elif selected is not None and selected not in self._offered:
            problem = f"the server selected subprotocol {selected!r}, which was not offered"
        if problem is not None:
            self._reject_switch(problem, headers)
            return None
        return _Accepted(selected, headers)

    def _reject_switch(self, problem: str, headers: HeaderList) -> None:
        self._status, self._reason, self._headers = 101, problem, headers
        self._rejected()

    def _rejected(self) -> None:
        self._phase = _Phase.REJECTED
        self._on_rejected(self._status, self._reason, self._headers, bytes(self._body))
        self._body = bytearray()

    def _on_accepted(self, subprotocol: str | None, headers: HeaderList) -> None:
        raise NotImplementedError

    def _on_rejected(self, status: int, reason: str, headers: HeaderList, body: bytes) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ server handshake

    def _server_handshake(self, data: Buffer) -> TunnelRequested | None:
        """Feed the request; returns it once complete. Raises ``HandshakeError``."""
        self._h11.receive_data(bytes(data))
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._phase = _Phase.FAILED
                raise HandshakeError(exc.error_status_hint, f"bad HTTP request: {exc}") from None
            if isinstance(event, h11.Request):
                try:
                    self._pending_request = parse_upgrade_request(
                        event.method, event.target, event.headers
                    )
                except HandshakeError:
                    self._phase = _Phase.FAILED
                    raise
            elif isinstance(event, h11.EndOfMessage) and self._pending_request is not None:
                self.request, self._pending_request = self._pending_request, None
                self._phase = _Phase.REQUESTED
                return self.request
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            # h11.Data: a body on an upgrade request is read and ignored

    def _adopt_request(self, request: TunnelRequested) -> None:
        self.request = request
        self._phase = _Phase.REQUESTED

    def _accept(
        self, subprotocol: str | None, extra_headers: Sequence[tuple[str, str]], trailing: bytes
    ) -> bytes:
        if self._phase is not _Phase.REQUESTED or self.request is None:
            raise WebSocketStateError(f"cannot accept in phase {self._phase.value}")
        data = accept_response(self.request, subprotocol, extra_headers)
        self._open_ws()
        self._pending = trailing  # parsed lazily: its events come out of the next call
        self.subprotocol = subprotocol
        self._phase = _Phase.OPEN
        return data

    def reject(
        self, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        """Server: refuse the upgrade (or a request that raised ``HandshakeError``)."""
        if self._phase not in (_Phase.REQUESTED, _Phase.HANDSHAKE, _Phase.FAILED) or self.client:
            raise WebSocketStateError(f"cannot reject in phase {self._phase.value}")
        data = reject_response(status, body, headers)
        self._phase = _Phase.REJECTED
        return data

    # ------------------------------------------------------------------ open state

    def _open_ws(self) -> None:
        self._state = ConnectionState.OPEN
        self._parser = FrameParser(
            self.client, self._on_message, self._frame_ping, self._on_pong, self._frame_close
        )
        self._frames = FrameProtocol(self.client, [])

    def _drop_ws(self) -> None:
        self._state = self._parser = self._frames = None

    def _pump(self, data: Buffer | None) -> None:
        """Feed open-state bytes (None: EOF) to the frame parser; it calls the hooks."""
        if self._pending:
            pending, self._pending = self._pending, b""
            self._feed(pending)
        if data is not None:
            self._feed(data)
        elif self._state is not ConnectionState.CLOSED:
            self._state = ConnectionState.CLOSED
            self._phase = _Phase.CLOSED
            self._on_close(CLOSE_ABNORMAL, "")

    def _feed(self, data: Buffer) -> None:
        parser = self._parser
        assert parser is not None
        if self._state is ConnectionState.CLOSED:
            return
        try:
            parser.feed(data)
        except FrameError as exc:
            raise self._fail(self._error_type(exc.message, close_code=exc.close_code)) from None

    def _frame_ping(self, payload: bytes) -> None:
        if self._state is ConnectionState.OPEN:
            self._out.append(bytes(self._control_frame().pong(payload)))

    def _frame_close(self, code: int, reason: str) -> None:
        if self._state is ConnectionState.OPEN:
            # The echo; no status code (1005) is echoed as an empty Close, as wsproto does.
            no_status = code == CLOSE_NO_STATUS
            self._out.append(self._close_frame(None if no_status else code, reason))
        self._state = ConnectionState.CLOSED
        self._phase = _Phase.CLOSED
        self._on_close(code, reason)

    def _control_frame(self) -> FrameProtocol:
        frames = self._frames
        assert frames is not None
        return frames

    def _close_frame(self, code: int | None, reason: str | None) -> bytes:
        """Our Close frame (wsproto builds it); no data frame may follow it."""
        self._state = ConnectionState.LOCAL_CLOSING
        return bytes(self._control_frame().close(code, reason))

    def _fail(self, error: WebSocketError) -> WebSocketError:
        """Record ``error``, queue our Close frame if the connection is open, return it."""
        self._error = error
        if self._state is ConnectionState.OPEN:
            self._out.append(self._close_frame(error.close_code, error.message[:100]))
        self._phase = _Phase.FAILED
        return error

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error

    def _on_message(self, data: Buffer | str, finished: bool) -> None:
        """A piece of a data message: bytes (a slice of what was received) or text."""
        raise NotImplementedError

    def _on_pong(self, payload: bytes) -> None:
        raise NotImplementedError

    def _on_close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ sending

    def _require_open(self) -> None:
        if self._phase is not _Phase.OPEN or self._state is not ConnectionState.OPEN:
            raise WebSocketStateError(f"cannot send data in phase {self._phase.value}")

    def _message(self, opcode: int, payload: Buffer) -> bytes:
        self._require_open()
        return encode_message(opcode, payload, mask=self.client)

    def ping(self, payload: bytes = b"") -> bytes:
        """A WebSocket ping (at most 125 bytes); the answer is ``PongReceived``."""
        self._require_open()
        return bytes(self._control_frame().ping(payload))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        """Our Close frame (1000 = EOF); b"" if one was already sent or it is too late."""
        if self._state is not ConnectionState.OPEN:
            return b""
        return self._close_frame(code, reason or None)


def _header_tuple(headers: Iterable[tuple[bytes, bytes]]) -> HeaderList:
    return tuple((_decode(k).lower(), _decode(v)) for k, v in headers)


# ---------------------------------------------------------------------- the tunnel


class _TunnelMixin(WebSocketEndpoint):
    """Open-state behaviour common to both tunnel roles."""

    _error_type = TunnelError

    def __init__(self, client: bool, *, max_reject_body: int = DEFAULT_MAX_REJECT_BODY) -> None:
        super().__init__(client, max_reject_body=max_reject_body)
        self._events: list[TunnelEvent] = []
        self._chunks: list[Buffer] = []  # binary payloads of this call, coalesced

    def _on_message(self, data: Buffer | str, finished: bool) -> None:
        if isinstance(data, str):
            raise self._fail(
                TunnelError("invalid message type received", close_code=CLOSE_UNSUPPORTED_DATA)
            )
        if data:  # zero-length messages are legal and mean nothing
            self._chunks.append(data)

    def _flush_bytes(self) -> None:
        """One ``StreamBytes`` for the payloads gathered so far: joined in one copy (the
        SPDY parser wants a frame contiguous), no copy when one payload was a whole read."""
        chunks = self._chunks
        if chunks:
            self._chunks = []
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._events.append(StreamBytes(data if isinstance(data, bytes) else bytes(data)))

    def _on_pong(self, payload: bytes) -> None:
        self._flush_bytes()
        self._events.append(PongReceived(payload))

    def _on_close(self, code: int, reason: str) -> None:
        self._flush_bytes()
        self._events.append(TunnelClosed(code, reason))

    def _receive_open(self, data: Buffer | None) -> None:
        try:
            self._pump(data)
        except WebSocketError:
            self._chunks = []  # slices of the caller's buffer: never kept past the call
            raise
        self._flush_bytes()

    def _take_events(self) -> list[TunnelEvent]:
        events, self._events = self._events, []
        return events

    def send_bytes(self, data: Buffer) -> bytes:
        """One binary message carrying ``data`` (pass whole SPDY frames)."""
        return self._message(OPCODE_BINARY, data)

    def send_chunks(self, chunks: Sequence[Buffer]) -> bytes:
        """One binary message carrying the concatenation of ``chunks``, as one bytes."""
        return b"".join(self.send_pieces(chunks))

    def send_pieces(self, chunks: Sequence[Buffer]) -> list[Buffer]:
        """``send_chunks`` for ``writelines``: the frame header, then the chunks (masked
        one by one on the client), never joined. For ``SpdyConnection.chunks_to_send()``,
        whose chunks are immutable, so that a transport may keep them queued."""
        self._require_open()
        return message_pieces(OPCODE_BINARY, chunks, mask=self.client)


class TunnelClient(_TunnelMixin):
    """Client of ``SPDY/3.1+portforward.k8s.io``: feed it the socket, give its
    ``StreamBytes`` to a ``SpdyConnection(client_side=True)`` and wrap that
    connection's output with ``send_bytes``/``send_chunks``.

    ``receive_data(b"")`` signals EOF from the transport.
    """

    def __init__(
        self,
        host: str,
        target: str,
        extra_headers: Sequence[tuple[str, str]] = (),
        *,
        max_reject_body: int = DEFAULT_MAX_REJECT_BODY,
    ) -> None:
        super().__init__(True, max_reject_body=max_reject_body)
        self.host = host
        self.target = target
        self.extra_headers = tuple(extra_headers)

    def initiate(self) -> bytes:
        """The upgrade request (GET) offering ``SPDY/3.1+portforward.k8s.io``."""
        return self._initiate(self.host, self.target, [SPDY_TUNNEL_PROTOCOL], self.extra_headers)

    def _on_accepted(self, subprotocol: str | None, headers: HeaderList) -> None:
        if subprotocol != SPDY_TUNNEL_PROTOCOL:
            # kubectl falls back on a 101 without the offered subprotocol (§3).
            self._drop_ws()
            self.subprotocol = None
            self._reject_switch(
                f"the server selected subprotocol {subprotocol!r}, not {SPDY_TUNNEL_PROTOCOL}",
                headers,
            )
            return
        self._events.append(TunnelAccepted(subprotocol, headers))

    def _on_rejected(self, status: int, reason: str, headers: HeaderList, body: bytes) -> None:
        self._events.append(TunnelRejected(status, reason, headers, body))

    def receive_data(self, data: Buffer) -> list[TunnelEvent]:
        """Parse received bytes; ``b""`` means the transport hit EOF."""
        self._check_usable()
        phase = self._phase
        if phase is _Phase.IDLE:
            raise WebSocketStateError("call initiate() first")
        if phase in (_Phase.HANDSHAKE, _Phase.REJECTING):
            trailing = self._client_handshake(data)
            if trailing is None or self._phase is not _Phase.OPEN:
                return self._take_events()
            self._receive_open(trailing)
            if not data:
                self._receive_open(None)
            return self._take_events()
        if phase is _Phase.OPEN:
            self._receive_open(data if data else None)
        return self._take_events()


class TunnelServer(_TunnelMixin):
    """Server of the tunnel. ``receive_data`` yields ``TunnelRequested`` once; answer
    with ``accept()`` or ``reject()``. A request parsed elsewhere can be passed in
    (``request=``) together with the bytes that followed it (``trailing_data=``).

    ``receive_data`` raises ``HandshakeError`` (with the HTTP status to ``reject``
    with) for a request that is not a valid WebSocket upgrade.
    """

    def __init__(
        self,
        request: TunnelRequested | None = None,
        *,
        trailing_data: bytes = b"",
    ) -> None:
        super().__init__(False)
        self._early = bytearray(trailing_data)  # bytes that came after the request
        if request is not None:
            self._adopt_request(request)

    def receive_data(self, data: Buffer) -> list[TunnelEvent]:
        """Parse received bytes; ``b""`` means the transport hit EOF."""
        self._check_usable()
        phase = self._phase
        if phase is _Phase.HANDSHAKE:
            if not data:
                self._phase = _Phase.CLOSED  # EOF before a complete request
                return []
            request = self._server_handshake(data)
            if request is not None:
                self._events.append(request)
        elif phase is _Phase.REQUESTED:
            self._early += data  # frames sent before our 101: parsed after accept()
        elif phase is _Phase.OPEN:
            self._receive_open(data if data else None)
        return self._take_events()

    def accept(
        self,
        subprotocol: str | None = SPDY_TUNNEL_PROTOCOL,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """The 101 answer selecting ``subprotocol`` (which the client must have offered)."""
        trailing = self._h11.trailing_data[0] + self._early
        self._early = bytearray()
        return self._accept(subprotocol, extra_headers, trailing)
