"""SPDY/3 frame dataclasses with parse/serialise (protocols.md §1.2).

Header blocks stay compressed here: inflating them needs the connection's shared zlib
context (see ``headers.py``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

from .errors import FrameError

__all__ = [
    "CONTROL_BIT",
    "FLAG_CLEAR_SETTINGS",
    "FLAG_FIN",
    "FLAG_UNIDIRECTIONAL",
    "MAX_FRAME_LENGTH",
    "MAX_SETTINGS_ENTRIES",
    "MAX_STREAM_ID",
    "SPDY_VERSION",
    "DataFrame",
    "Frame",
    "FrameType",
    "GoAwayFrame",
    "GoAwayStatus",
    "HeadersFrame",
    "PingFrame",
    "RstStatus",
    "RstStreamFrame",
    "SettingsFrame",
    "SynReplyFrame",
    "SynStreamFrame",
    "WindowUpdateFrame",
    "data_frame_header",
    "parse_frame",
]

SPDY_VERSION: Final = 3
CONTROL_BIT: Final = 0x80000000
MAX_STREAM_ID: Final = 0x7FFFFFFF
MAX_FRAME_LENGTH: Final = 0xFFFFFF
# SPDY/3 defines 8 setting ids; a larger table is hostile and only costs memory.
MAX_SETTINGS_ENTRIES: Final = 4096

FLAG_FIN: Final = 0x01
FLAG_UNIDIRECTIONAL: Final = 0x02
FLAG_CLEAR_SETTINGS: Final = 0x01

_ID_MASK: Final = 0x7FFFFFFF
_LEN_MASK: Final = 0xFFFFFF


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# Precompiled layouts. Every frame header is two 32-bit words.
_HDR = struct.Struct(">II")
_U32 = struct.Struct(">I")
_SYN_STREAM = struct.Struct(">IIIIBB")  # header(2) + id + assoc + priority + slot
_SYN_REPLY = struct.Struct(">III")  # header(2) + id
_FOUR_WORDS = struct.Struct(">IIII")  # header(2) + two payload words (RST, GOAWAY, WINDOW)
_PING = struct.Struct(">III")
_SETTING = struct.Struct(">II")

_CTRL_WORD: Final = CONTROL_BIT | (SPDY_VERSION << 16)


def _control_header(frame_type: int, flags: int, length: int) -> tuple[int, int]:
    if length > MAX_FRAME_LENGTH:
        raise ValueError(f"control frame payload of {length} bytes exceeds {MAX_FRAME_LENGTH}")
    return _CTRL_WORD | frame_type, (flags << 24) | length


def _two_words(frame_type: int, first: int, second: int) -> bytes:
    """RST_STREAM, GOAWAY and WINDOW_UPDATE: the control header, then two 32-bit words."""
    w0, w1 = _control_header(frame_type, 0, 8)
    return _FOUR_WORDS.pack(w0, w1, first, second)


def data_frame_header(stream_id: int, length: int, fin: bool) -> bytes:
    """The 8-byte DATA frame header; write it followed by ``length`` payload bytes."""
    if not 0 <= length <= MAX_FRAME_LENGTH:
        raise ValueError(f"DATA length {length} out of range")
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} out of range")
    return _HDR.pack(stream_id, (FLAG_FIN << 24 if fin else 0) | length)


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False

    def serialize(self) -> bytes:
        return data_frame_header(self.stream_id, len(self.data), self.fin) + self.data


@dataclass(frozen=True, slots=True)
class SynStreamFrame:
    stream_id: int
    header_block: bytes
    fin: bool = False
    unidirectional: bool = False
    assoc_stream_id: int = 0
    priority: int = 0
    slot: int = 0

    def serialize(self) -> bytes:
        flags = (FLAG_FIN if self.fin else 0) | (FLAG_UNIDIRECTIONAL if self.unidirectional else 0)
        w0, w1 = _control_header(FrameType.SYN_STREAM, flags, 10 + len(self.header_block))
        head = _SYN_STREAM.pack(
            w0, w1, self.stream_id, self.assoc_stream_id, (self.priority & 7) << 5, self.slot
        )
        return head + self.header_block


@dataclass(frozen=True, slots=True)
class _StreamHeadersFrame:
    """The layout SYN_REPLY and HEADERS share: a stream id, then the header block."""

    frame_type: ClassVar[FrameType]
    stream_id: int
    header_block: bytes
    fin: bool = False

    def serialize(self) -> bytes:
        w0, w1 = _control_header(
            self.frame_type, FLAG_FIN if self.fin else 0, 4 + len(self.header_block)
        )
        return _SYN_REPLY.pack(w0, w1, self.stream_id) + self.header_block


@dataclass(frozen=True, slots=True)
class SynReplyFrame(_StreamHeadersFrame):
    frame_type = FrameType.SYN_REPLY


@dataclass(frozen=True, slots=True)
class HeadersFrame(_StreamHeadersFrame):
    frame_type = FrameType.HEADERS


@dataclass(frozen=True, slots=True)
class RstStreamFrame:
    stream_id: int
    status: int

    def serialize(self) -> bytes:
        return _two_words(FrameType.RST_STREAM, self.stream_id, self.status)


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    """``entries`` holds ``(flags, id, value)`` triples in wire order."""

    entries: tuple[tuple[int, int, int], ...] = ()
    clear: bool = False

    def serialize(self) -> bytes:
        n = len(self.entries)
        w0, w1 = _control_header(
            FrameType.SETTINGS, FLAG_CLEAR_SETTINGS if self.clear else 0, 4 + 8 * n
        )
        parts = [_SYN_REPLY.pack(w0, w1, n)]
        parts.extend(_SETTING.pack((f << 24) | i, v) for f, i, v in self.entries)
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class PingFrame:
    ping_id: int

    def serialize(self) -> bytes:
        w0, w1 = _control_header(FrameType.PING, 0, 4)
        return _PING.pack(w0, w1, self.ping_id)


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK

    def serialize(self) -> bytes:
        return _two_words(FrameType.GOAWAY, self.last_good_stream_id, self.status)


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int

    def serialize(self) -> bytes:
        return _two_words(FrameType.WINDOW_UPDATE, self.stream_id, self.delta)


Frame = (
    DataFrame
    | SynStreamFrame
    | SynReplyFrame
    | HeadersFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | WindowUpdateFrame
)

_TYPE_NAMES: Final = {t.value: t.name for t in FrameType}


def _check_control_header(frame_type: int, version: int, flags: int, length: int) -> None:
    """Reject a control frame from its 8-byte header alone (before its payload arrives)."""
    if version != SPDY_VERSION:
        raise FrameError(f"unsupported SPDY version {version}")
    name = _TYPE_NAMES.get(frame_type)
    if name is None:
        raise FrameError(f"unknown control frame type {frame_type}")
    if frame_type in (FrameType.RST_STREAM, FrameType.GOAWAY, FrameType.WINDOW_UPDATE):
        if length != 8:
            raise FrameError(f"{name} length {length} != 8")
    elif frame_type == FrameType.PING:
        if length != 4:
            raise FrameError(f"PING length {length} != 4")
    elif frame_type == FrameType.SYN_STREAM:
        if length < 10:
            raise FrameError(f"SYN_STREAM length {length} < 10")
    elif length < 4:  # SYN_REPLY, HEADERS, SETTINGS
        raise FrameError(f"{name} length {length} < 4")
    if flags and frame_type in (FrameType.PING, FrameType.GOAWAY, FrameType.WINDOW_UPDATE):
        raise FrameError(f"{name} with flags 0x{flags:02x}")


def _nonzero(stream_id: int, what: str) -> int:
    if stream_id == 0:
        raise FrameError(f"{what} with stream id 0")
    return stream_id


def parse_frame(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Frame, int] | None:
    """Parse one frame starting at ``offset``.

    Returns ``(frame, end_offset)``, or ``None`` when the frame is not complete yet (nothing
    is consumed). Raises ``FrameError`` as soon as the 8-byte header shows the frame is
    invalid, so garbage is rejected without waiting for its claimed payload.
    """
    avail = len(buf) - offset
    if avail < 8:
        return None
    w0, w1 = _HDR.unpack_from(buf, offset)
    flags = w1 >> 24
    length = w1 & _LEN_MASK
    start = offset + 8
    end = start + length
    if not w0 & CONTROL_BIT:
        if avail < 8 + length:
            return None
        stream_id = _nonzero(w0, "DATA")
        return DataFrame(stream_id, bytes(buf[start:end]), bool(flags & FLAG_FIN)), end

    frame_type = w0 & 0xFFFF
    _check_control_header(frame_type, (w0 >> 16) & 0x7FFF, flags, length)
    if frame_type == FrameType.SETTINGS and avail >= 12:
        count = _U32.unpack_from(buf, start)[0]
        if count > MAX_SETTINGS_ENTRIES or length != 4 + 8 * count:
            raise FrameError(f"SETTINGS length {length} does not match {count} entries")
    if avail < 8 + length:
        return None
    fin = bool(flags & FLAG_FIN)
    frame: Frame
    if frame_type == FrameType.SYN_STREAM:
        _, _, sid, assoc, prio, slot = _SYN_STREAM.unpack_from(buf, offset)
        frame = SynStreamFrame(
            _nonzero(sid & _ID_MASK, "SYN_STREAM"),
            bytes(buf[start + 10 : end]),
            fin,
            bool(flags & FLAG_UNIDIRECTIONAL),
            assoc & _ID_MASK,
            prio >> 5,
            slot,
        )
    elif frame_type == FrameType.SYN_REPLY or frame_type == FrameType.HEADERS:
        sid = _nonzero(_U32.unpack_from(buf, start)[0] & _ID_MASK, _TYPE_NAMES[frame_type])
        block = bytes(buf[start + 4 : end])
        kind = SynReplyFrame if frame_type == FrameType.SYN_REPLY else HeadersFrame
        frame = kind(sid, block, fin)
    elif frame_type == FrameType.RST_STREAM:
        _, _, sid, status = _FOUR_WORDS.unpack_from(buf, offset)
        sid = _nonzero(sid & _ID_MASK, "RST_STREAM")
        if status == 0:
            raise FrameError("RST_STREAM with status 0")
        frame = RstStreamFrame(sid, status)
    elif frame_type == FrameType.PING:
        ping_id = _U32.unpack_from(buf, start)[0]
        if ping_id == 0:
            raise FrameError("PING with id 0")
        frame = PingFrame(ping_id)
    elif frame_type == FrameType.GOAWAY:
        _, _, last_good, status = _FOUR_WORDS.unpack_from(buf, offset)
        frame = GoAwayFrame(last_good & _ID_MASK, status)
    elif frame_type == FrameType.WINDOW_UPDATE:
        _, _, sid, delta = _FOUR_WORDS.unpack_from(buf, offset)
        frame = WindowUpdateFrame(sid & _ID_MASK, delta & _ID_MASK)
    else:  # SETTINGS; count and length were checked above
        entries = tuple(
            (word >> 24, word & _LEN_MASK, value)
            for word, value in _SETTING.iter_unpack(buf[start + 4 : end])
        )
        frame = SettingsFrame(entries, bool(flags & FLAG_CLEAR_SETTINGS))
    return frame, end
