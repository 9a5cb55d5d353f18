"""WebSocket frames (RFC 6455) on an open connection: the incremental ``FrameParser``,
frame headers and masking.

``FrameParser`` parses every incoming frame (wsproto's checks, codes and messages,
without its per-frame cost and copies) and hands payloads over as slices of what was
received. Data messages are framed by ``message_pieces``: the header, then the chunks
masked one by one, for ``writelines``, never joined. Masking uses the C masker of the
``websockets`` package; a big-int XOR is the fallback and the tests' oracle.
"""

from __future__ import annotations

import codecs
import os
import struct
from collections.abc import Callable, Sequence
from typing import Final

from wsproto.frame_protocol import CloseReason, Opcode

from .errors import (
    CLOSE_ABNORMAL,
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    FrameError,
)

__all__ = [
    "OPCODE_BINARY",
    "OPCODE_TEXT",
    "Buffer",
    "FrameParser",
    "encode_message",
    "frame_header",
    "mask_payload",
    "message_pieces",
]

OPCODE_TEXT: Final = 0x1
OPCODE_BINARY: Final = 0x2

try:  # C-accelerated masking (a declared dependency); pure Python below otherwise
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover
    _c_apply_mask = None  # type: ignore[assignment]

_MASK_BLOCK: Final = 4096

_HDR_SHORT = struct.Struct("!BB")
_HDR_16 = struct.Struct("!BBH")
_HDR_64 = struct.Struct("!BBQ")

Buffer = bytes | bytearray | memoryview


# ---------------------------------------------------------------------- masking


def mask_payload(key: bytes, data: Buffer) -> bytes:
    """XOR ``data`` with the 4-byte masking ``key`` repeated (RFC 6455 §5.3).

    CPython has no vectorised XOR for bytes, but its big integers do one in C: read a
    piece of payload as an int, XOR it with the key repeated to the same length, write
    it back (``from_bytes``, ``^``, ``to_bytes``: three C loops, no Python loop per
    byte). Little-endian on both sides pairs payload byte i with key byte i % 4.
    Pieces are 4 KiB (a multiple of 4, so every piece starts at key byte 0): ints that
    size stay in cache, while one int over a whole MiB is about half as fast. wsproto
    1.3 has no C-accelerator hook, so ``_masked_pieces`` prefers the C masker of
    ``websockets`` and keeps this one as the fallback. Masking is its own inverse.
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
