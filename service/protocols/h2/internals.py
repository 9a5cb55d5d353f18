"""Everything that reaches into python-hyper h2 4.x's internals, in this one file.

The ``h2>=4.4,<5`` pin in pyproject.toml is for this module: a new h2 may rename or
change any of what it uses (``FrameBuffer``'s fields, ``H2Connection._receive_frame``'s
dispatch table, ``_data_to_send``, ``_open_streams``, ``_receive_goaway_frame``, the
stream and connection state machines, and of the hpack 4.x that h2 4.x requires,
``HeaderTable`` and the encoder's and decoder's methods). Check it, with
``tests/unit/test_h2pair.py`` (which compares it with a stock ``H2Connection`` and stock
hpack both ways), before moving the pin.

``new_connection`` builds the h2 connection of a pair endpoint: h2's configuration flags,
the exact SETTINGS it advertises, and ``Connection``, an ``H2Connection`` that neither
copies nor hex-encodes DATA payloads (below), opens streams in amortised O(1), encodes
and decodes the header blocks of pairs without hpack's per-field work, and lets streams
finish after a graceful GOAWAY. ``pairs.py`` uses h2's public API only, and this.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from typing import TYPE_CHECKING, Final, cast

from h2.config import H2Configuration
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    H2Connection,
    H2ConnectionStateMachine,
    _decode_headers,
)
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, RequestReceived, ResponseReceived, TrailersReceived
from h2.events import Event as H2Event
from h2.exceptions import FrameDataMissingError, StreamIDTooLowError, TooManyStreamsError
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream, H2StreamStateMachine, StreamInputs, StreamState
from h2.stream import _transitions as _stream_transitions
from h2.utilities import CONNECTION_HEADERS, HeaderValidationFlags, is_informational_response
from hpack import Decoder, Encoder, HeaderTuple, HPACKError, NeverIndexedHeaderTuple
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.flags import Flags
from hyperframe.frame import (
    AltSvcFrame,
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from h2._typing import Buffer as _H2Buffer
    from hpack.struct import Header, HeaderWeaklyTyped

__all__ = ["Connection", "new_connection"]

Buffer = bytes | bytearray | memoryview

_SENDABLE: Final = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


def new_connection(
    client_side: bool,
    *,
    max_concurrent_streams: int,
    initial_window_size: int,
    max_frame_size: int,
    max_header_list_size: int,
) -> Connection:
    """A connection that advertises exactly these settings (and ENABLE_PUSH 0) once
    ``initiate_connection()`` is called, and accepts frames up to ``max_frame_size``."""
    # Our own headers are valid by construction: h2's checks and normalisation of them
    # were a tenth of the CPU of opening a pair. The agent still checks what it gets.
    config = H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=not client_side,
    )
    conn = Connection(config)
    # Replaced before initiate_connection(), which advertises exactly these values.
    conn.local_settings = Settings(
        client=client_side,
        initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
            SettingCodes.MAX_FRAME_SIZE: max_frame_size,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
        },
    )
    conn.max_inbound_frame_size = max_frame_size
    return conn


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
# So, for our connections only, the frame buffer (FrameBufferOverChunks, below) makes each
# received DATA frame a QuietDataFrame, whose __repr__ reports only the size, and the
# dispatch table learns the subclass (h2 dispatches on frame.__class__). Nothing else in
# h2 looks at the class. tests/unit/test_h2pair.py proves that no serialize/hexlify runs.
# Every other received frame gets a quiet subclass too: for a HEADERS frame the repr
# hex-encoded the header block and sorted the flags, a few microseconds a frame.


class QuietDataFrame(DataFrame):
    """A received DATA frame whose repr neither copies nor hex-encodes the payload."""

    def __repr__(self) -> str:
        return f"DataFrame(stream_id={self.stream_id}): <{len(self.data)} bytes>"


def _quiet_repr(frame: Frame) -> str:
    return (
        f"{type(frame).__mro__[1].__name__}(stream_id={frame.stream_id}): <{frame.body_len} bytes>"
    )


class QuietHeadersFrame(HeadersFrame):
    """A received HEADERS frame whose repr neither hex-encodes the block nor sorts flags."""

    __repr__ = _quiet_repr


#: Every other frame type h2 dispatches on -> its subclass with a cheap repr.
_QUIET: Final[dict[type[Frame], type[Frame]]] = {
    HeadersFrame: QuietHeadersFrame,
    **{
        cls: type(f"Quiet{cls.__name__}", (cls,), {"__repr__": _quiet_repr})
        for cls in (
            PushPromiseFrame,
            SettingsFrame,
            WindowUpdateFrame,
            PingFrame,
            RstStreamFrame,
            PriorityFrame,
            GoAwayFrame,
            ContinuationFrame,
            AltSvcFrame,
            ExtensionFrame,
        )
    },
}


# ---------------------------------------------------------------------- DATA without copies
#
# h2 4.4.1 copies every payload several times, and at bulk rates each large copy is a
# fresh allocation that page-faults (measured: ~200k minor faults per GB received):
#
# * Sending: H2Stream.send_data's memoryview.tobytes(), DataFrame.serialize_body's join
#   with the padding, Frame.serialize's header + body, _prepare_for_sending's bytearray +=
#   and data_to_send's bytes(): five copies. Connection.queue_data does what
#   H2Connection.send_data does for an unpadded DATA frame without END_STREAM -- the same
#   state machine inputs on the connection and the stream (which raise as h2's would),
#   the same decrements of both outbound windows -- and queues a 9-byte header (RFC 9113
#   §4.1) plus a slice of the caller's bytes, in order with h2's own output.
# * Receiving: FrameBuffer.add_data's bytearray +=, __next__'s slice of the body and
#   DataFrame.parse_body's tobytes(): three copies. FrameBufferOverChunks keeps the received
#   chunks as they came and cuts an unpadded DATA payload out of them: a slice of one
#   chunk, or one join when the frame spans reads. The frame then goes through h2's
#   dispatch like any other (state machines, inbound windows, events).
#
# Everything else (HEADERS, END_STREAM, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY, padded
# DATA) is still parsed and built by h2. tests/unit/test_h2pair.py checks both directions
# against a stock H2Connection.

_FRAME_HEADER: Final = struct.Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, id
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_CONTINUATION: Final = 0x9
_END_STREAM: Final = 0x1
_END_HEADERS: Final = 0x4
_PADDED: Final = 0x8
_PRIORITY: Final = 0x20


# An unpadded DATA frame, and a HEADERS frame without padding or priority, are built as
# hyperframe's parse_frame_header + parse_body would build them, without the chain of
# keyword-argument constructors (Frame, Padding, Priority, Flags: 2.5 us a frame): the
# attributes of a frame its own constructor made, with this frame's stream, flags, data
# and length. tests/unit/test_h2pair.py compares the two.
_PROTOTYPES: Final[dict[type[Frame], dict[str, object]]] = {
    cls: vars(cls(1)) for cls in (QuietDataFrame, QuietHeadersFrame)
}
_VALID_FLAGS: Final = {cls: cls(1).flags._valid_flags for cls in _PROTOTYPES}
_FLAG_NAMES: Final[dict[type[Frame], dict[int, tuple[str, ...]]]] = {
    QuietDataFrame: {0: (), _END_STREAM: ("END_STREAM",)},
    QuietHeadersFrame: {
        bits: tuple(name for name, bit in (("END_STREAM", 1), ("END_HEADERS", 4)) if bits & bit)
        for bits in range(256)
    },
}


def _received(cls: type[Frame], stream_id: int, flags: int, data: Buffer, length: int) -> Frame:
    frame = cls.__new__(cls)
    names = Flags.__new__(Flags)
    names._valid_flags = _VALID_FLAGS[cls]
    names._flags = set(_FLAG_NAMES[cls][flags])
    frame.__dict__.update(_PROTOTYPES[cls], stream_id=stream_id, flags=names, body_len=length)
    frame.data = data  # type: ignore[attr-defined]
    return frame


class FrameBufferOverChunks(FrameBuffer):
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
            return piece if 2 * n >= len(piece.obj) else piece.tobytes()  # type: ignore[arg-type]
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
        parts = self._parts
        first = parts[0]
        fields = _FRAME_HEADER.unpack_from(first if len(first) >= 9 else self._peek(9))
        high, low, kind, flags, raw_id = fields
        length = high << 8 | low
        # Checked before the body arrives, so a peer cannot make us buffer a huge frame.
        self._validate_frame_length(length)
        end = 9 + length
        if self._size < end:
            raise StopIteration
        body: Buffer
        if len(first) >= end:  # the whole frame in the first chunk: the usual case
            self._size -= end
            if len(first) == end:
                parts.popleft()
            else:
                parts[0] = first[end:]
            piece = first[9:end]
            # As in _take: a view only for at least half of its read.
            body = piece if 2 * length >= len(piece.obj) else piece.tobytes()  # type: ignore[arg-type]
        else:
            self._take(9)
            body = self._take(length)
        stream_id = raw_id & 0x7FFFFFFF
        frame: Frame
        if kind == _DATA and stream_id and not flags & _PADDED:
            # A view is fine as the payload: h2 only takes its len().
            frame = _received(QuietDataFrame, stream_id, flags & _END_STREAM, body, length)
        elif kind == _HEADERS and stream_id and not flags & (_PADDED | _PRIORITY):
            frame = _received(QuietHeadersFrame, stream_id, flags, bytes(body), length)
        else:
            frame = self._parse(_FRAME_HEADER.pack(*fields), body)
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
            frame.__class__ = QuietDataFrame
        else:
            frame.__class__ = _QUIET.get(frame.__class__, frame.__class__)
        return frame


# ---------------------------------------------------------------------- HPACK without the search
#
# Every pair opens two streams whose request headers differ only in ``streamtype`` and
# ``requestid``. hpack 4.2 encodes each field from scratch (a table search, a debug log
# call, Huffman coding of literals) and decodes each from scratch (memoryview slices, a
# HeaderTuple, a debug log call): 22 us to encode and 22 us to decode a pair's request
# on this machine, a fifth of all the protocol work of a pair with 100 KiB each way.
#
# * MemoEncoder remembers the bytes of each field whose encoding left the dynamic table
#   as it was (an indexed field, or a literal without indexing). Those bytes depend on
#   the table alone, so they stay right until the table changes (_CountingTable counts
#   entries added and sizes set; the memo is dropped at every change). Never-indexed
#   fields (the requestid, new in every request) are encoded each time, as literals
#   without Huffman coding: a fresh short id gains nothing from it (digits take 5-6 bits),
#   and hpack's Huffman coder cost 9 us a field.
# * FastDecoder decodes a block made only of such fields (indexed fields with a 1-byte
#   index, literals without indexing or never indexed, 1-byte string lengths) without
#   hpack's per-field machinery. Those fields leave the table as it was, so on anything
#   else (a field that adds to the table, a size update, an error of any kind) it gives
#   the block to hpack's own decoder from its start, which then decodes (or refuses) it
#   exactly as before.
#
# tests/unit/test_h2pair.py checks both against hpack's encoder and decoder.


class _CountingTable(HeaderTable):
    """hpack's header table, counting the changes an encoding depends on."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class MemoEncoder(Encoder):
    """hpack's encoder, remembering the encoding of fields that left the table as it was."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = self._table = _CountingTable()
        self._memo: dict[tuple[bytes, bytes], bytes] = {}
        # Names the table does not hold -> the start of their never-indexed literal.
        self._names: dict[bytes, bytes] = {}
        self._memo_at = 0

    def encode(self, headers: object, huffman: bool = True) -> bytes:
        table = self._table
        if table.resized or not isinstance(headers, list):
            return super().encode(headers, huffman)  # type: ignore[arg-type]  # a size update first
        memo = self._memo
        if table.changes != self._memo_at:
            self._forget()
        parts = []
        for header in headers:
            if type(header) is tuple and len(header) == 2:
                encoded = memo.get(header)
                if encoded is None:
                    encoded = super().encode([header], huffman)
                    if table.changes == self._memo_at:
                        memo[header] = encoded
                    else:
                        self._forget()
            elif isinstance(header, NeverIndexedHeaderTuple):
                encoded = self._never_indexed(header)
            else:
                encoded = super().encode([header], huffman)
                if table.changes != self._memo_at:
                    self._forget()
            parts.append(encoded)
        return b"".join(parts)

    def _forget(self) -> None:
        """The table changed: what was remembered may be wrong now."""
        self._memo.clear()
        self._names.clear()
        self._memo_at = self._table.changes

    def _never_indexed(self, header: NeverIndexedHeaderTuple) -> bytes:
        """A never-indexed literal without Huffman coding. A name the table does not hold
        (our requestid) is always sent literally: its bytes are remembered like the
        fields' (hpack's add() searched the table and logged twice for each)."""
        name, value = (h if isinstance(h, bytes) else str(h).encode() for h in header)
        head = self._names.get(name)
        if head is None:
            if len(name) >= 0x7F or self._table.search(name, value) is not None:
                return self.add((name, value), True, huffman=False)
            head = self._names[name] = bytes((0x10, len(name))) + name
        if len(value) >= 0x7F:
            return self.add((name, value), True, huffman=False)
        return head + bytes((len(value),)) + value


class FastDecoder(Decoder):
    """hpack's decoder, with a fast path for blocks that leave the table as it was."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = self._table = _CountingTable()
        self.max_allowed_table_size = self._table.maxsize
        self._indexed: dict[int, HeaderTuple] = {}
        self._indexed_at = 0

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        if raw and type(data) is bytes:
            headers = self._decode_unchanging(data)
            if headers is not None:
                return headers
        return cast(list[HeaderTuple], super().decode(data, raw))

    def _decode_unchanging(self, data: bytes) -> list[HeaderTuple] | None:
        """The fields of ``data``, or None when hpack must decode it (see above)."""
        table = self._table
        if table.changes != self._indexed_at:
            self._indexed.clear()
            self._indexed_at = table.changes
        indexed = self._indexed
        headers: list[HeaderTuple] = []
        size = 0
        limit = self.max_header_list_size
        end = len(data)
        i = 0
        try:
            while i < end:
                first = data[i]
                if first & 0x80:  # indexed field
                    header = indexed.get(first)
                    if header is None:
                        if first in (0x80, 0xFF):
                            return None  # index 0 (an error) or a multi-byte index
                        header = HeaderTuple(*table.get_by_index(first & 0x7F))
                        indexed[first] = header
                    i += 1
                elif first & 0xE0 == 0:  # literal without indexing (0000) or never (0001)
                    name_index = first & 0x0F
                    i += 1
                    if name_index == 0x0F:
                        return None
                    if name_index:
                        name = table.get_by_index(name_index)[0]
                    else:
                        name, i = _string(data, i)
                    value, i = _string(data, i)
                    header = (NeverIndexedHeaderTuple if first & 0x10 else HeaderTuple)(name, value)
                else:
                    return None  # adds to the table, or a size update
                headers.append(header)
                size += 32 + len(header[0]) + len(header[1])
                if size > limit:
                    return None
            self._assert_valid_table_size()
        except (HPACKError, _Unusual):
            return None
        return headers


class _Unusual(Exception):
    """A string FastDecoder leaves to hpack."""


def _string(data: bytes, i: int) -> tuple[bytes, int]:
    """An HPACK string literal with a 1-byte length at ``data[i]``, and where it ends."""
    if i >= len(data):
        raise _Unusual
    length = data[i] & 0x7F
    start = i + 1
    end = start + length
    if length == 0x7F or end > len(data):
        raise _Unusual
    text = data[start:end]
    return (decode_huffman(text) if data[i] & 0x80 else text), end


# ---------------------------------------------------------------------- HEADERS, lighter
#
# Sending: h2 4.4.1's send_headers builds frame objects, copies the header list (utf-8
# encoding it), looks for an informational status, builds validation flags (for checks
# that are off on our connections) and serialises, about 25 us a block. Connection's
# send_headers takes a shorter way for what pair endpoints send (a list of bytes fields,
# no priority, not an informational response): the same checks, state machine inputs and
# stream fields in h2's order, the same HPACK encoder, and the same bytes (HEADERS, then
# CONTINUATION past the peer's frame size), queued after h2's own output.
#
# Receiving: the agent checks every request with h2's validation pipeline, seven
# generators over the fields (25 us a request). PairStream first asks _plain_request,
# which recognises a request that surely passes them all: :method (not CONNECT),
# :scheme, :authority and a non-empty :path first and in this order, then regular fields
# with names of lowercase token characters, none connection-specific, no te, host or
# cookie, and every value free of NUL/CR/LF and of surrounding whitespace. For those
# h2's pipeline returns the fields as they are; any other block goes through the
# pipeline as before. Whether one field passes depends on that field alone, so the
# fields found clean are remembered (a bounded set; not the never-indexed ones, new in
# every request): a pair's request is then checked in 1-2 us.

_REQUEST_FLAGS: Final = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_REQUEST_PSEUDO: Final = (b":method", b":scheme", b":authority", b":path")
# Lowercase token characters of a regular field name (RFC 9113 §8.2.1: not 0x00-0x20,
# 0x41-0x5a, 0x7f-0xff, and no colon).
_NAME_CHARS: Final = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_NOT_PLAIN: Final = CONNECTION_HEADERS | {b"te", b"host", b"cookie"}
_UNSAFE_VALUE: Final = re.compile(rb"[\x00\n\r]|\A[ \t]|[ \t]\Z")
_CLEAN_LIMIT: Final = 4096
_clean_fields: set[tuple[bytes, bytes]] = set()  # regular fields that passed, pseudo ones


def _plain_request(fields: list[Header]) -> bool:
    """Whether h2's inbound validation surely accepts these request fields as they are
    (and no cookie needs joining): see above. False only means "ask h2"."""
    if len(fields) < 4 or fields[0][1] == b"CONNECT" or not fields[3][1]:
        return False
    clean = _clean_fields
    for index, field in enumerate(fields):
        if field in clean:
            if index < 4 and field[0] != _REQUEST_PSEUDO[index]:
                return False
            if index >= 4 and field[0][:1] == b":":
                return False
            continue
        name, value = field
        if _UNSAFE_VALUE.search(value):
            return False
        if index < 4:
            if name != _REQUEST_PSEUDO[index]:
                return False
        elif not name or name.translate(None, _NAME_CHARS) or name in _NOT_PLAIN:
            return False
        if not isinstance(field, NeverIndexedHeaderTuple):
            if len(clean) >= _CLEAN_LIMIT:
                clean.clear()
            clean.add(field)
    return True


# ---------------------------------------------------------------------- state machines
#
# h2's state machines look their transition up in a dict keyed by (state, input), two Enum
# members; an Enum member's __hash__ is a Python function, so each of the ~25 inputs a
# pair's frames feed the machines cost two Python calls for hashing alone (1.2 us an
# input with the rest). These subclasses look the same tables up by the members'
# identities (they are singletons) and do what h2's process_input does with the entry;
# an input the table does not hold (an invalid one, or not an input at all) goes to h2's
# own process_input, which raises as before. tests/unit/test_h2pair.py runs every
# (state, input) through both.


class PairConnectionStateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, its table looked up by identity."""

    _by_id: Final = {
        (id(state), id(event)): entry
        for (state, event), entry in H2ConnectionStateMachine._transitions.items()
    }

    def process_input(self, input_: ConnectionInputs) -> list[H2Event]:
        entry = self._by_id.get((id(self.state), id(input_)))
        if entry is None:
            return super().process_input(input_)
        func, self.state = entry
        return func() if func is not None else []


class PairStreamStateMachine(H2StreamStateMachine):
    """h2's stream state machine, its table looked up by identity."""

    _by_id: Final = {
        (id(state), id(event)): entry for (state, event), entry in _stream_transitions.items()
    }

    def process_input(self, input_: StreamInputs) -> list[H2Event]:
        entry = self._by_id.get((id(self.state), id(input_)))
        if entry is None:
            return super().process_input(input_)
        func, target = entry
        previous, self.state = self.state, target
        if func is None:
            return []
        try:
            return func(self, previous)
        except H2ProtocolError:
            self.state = StreamState.CLOSED
            raise
        except AssertionError as err:  # as h2 does
            self.state = StreamState.CLOSED
            raise H2ProtocolError(err) from err


class PairStream(H2Stream):
    """h2's stream, with received requests checked by _plain_request first (see above)."""

    def receive_headers(
        self, headers: Iterable[Header], end_stream: bool, header_encoding: bool | str | None
    ) -> tuple[list[Frame], list[H2Event]]:
        """h2 4.4.1's, telling a request from a response by its event before it builds
        validation flags: a plain request (see above), or a response on a connection that
        does not validate responses and with no cookie to join, is taken as it is, as h2's
        pipeline would return it; any other block goes through that pipeline."""
        if type(headers) is not list or is_informational_response(headers):
            return super().receive_headers(headers, end_stream, header_encoding)
        machine = self.state_machine
        events = machine.process_input(StreamInputs.RECV_HEADERS)
        first = events[0]
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            first.stream_ended = ended[0]  # type: ignore[attr-defined]
            events += ended
        self._initialize_content_length(headers)
        kind = type(first)
        if kind is TrailersReceived and not end_stream:
            raise H2ProtocolError("Trailers must have END_STREAM set")
        config = self.config
        if not header_encoding and (
            (
                kind is RequestReceived
                and config.validate_inbound_headers
                and _plain_request(headers)
            )
            or (
                kind is ResponseReceived
                and not config.validate_inbound_headers
                and not (
                    config.normalize_inbound_headers and any(f[0] == b"cookie" for f in headers)
                )
            )
        ):
            first.headers = headers  # type: ignore[attr-defined]
        else:
            flags = self._build_hdr_validation_flags(events)
            processed = self._process_received_headers(headers, flags, header_encoding)
            first.headers = processed  # type: ignore[attr-defined]
        return [], events

    def _process_received_headers(
        self,
        headers: Iterable[Header],
        header_validation_flags: HeaderValidationFlags,
        header_encoding: bool | str | None,
    ) -> list[Header]:
        if (
            header_validation_flags == _REQUEST_FLAGS
            and not header_encoding
            and self.config.validate_inbound_headers
            and type(headers) is list
            and _plain_request(headers)
        ):
            return headers
        return super()._process_received_headers(headers, header_validation_flags, header_encoding)


class Connection(H2Connection):
    """h2's connection, with received DATA frames made cheap to repr and DATA payloads
    neither copied when sent nor when received, header blocks coded by MemoEncoder and
    FastDecoder (see above), streams opened in amortised O(1) and a graceful GOAWAY that
    lets a client's streams finish."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.state_machine = PairConnectionStateMachine()
        self.incoming_buffer = FrameBufferOverChunks(server=not config.client_side)
        # Replaced before any header block (h2 sets their limits from the settings later).
        decoder = FastDecoder()
        decoder.max_header_list_size = self.decoder.max_header_list_size
        self.encoder, self.decoder = MemoEncoder(), decoder
        table = self._frame_dispatch_table
        table[QuietDataFrame] = table[DataFrame]
        for cls, quiet in _QUIET.items():
            table[quiet] = table[cls]
        # Output queued before whatever is in h2's own buffer (_data_to_send), in order.
        self._out: list[Buffer] = []
        # len(self.streams) at which the next exact count (and cull) runs; see _open_streams.
        self._recount_at = 0
        #: Set by a graceful GOAWAY: no new stream may be opened, those up to it finish.
        self.goaway_last_stream_id: int | None = None
        # The configuration, read once (each h2 option is a descriptor call).
        self._client_side = bool(config.client_side)
        self._outbound_ids = AllowedStreamIDs(self._client_side)
        self._inbound_ids = AllowedStreamIDs(not self._client_side)
        self._header_encoding = config.header_encoding
        self._plain_outbound = not (
            config.validate_outbound_headers or config.normalize_outbound_headers
        )

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
        outbound = remainder == int(self._client_side)
        settings = self.remote_settings if outbound else self.local_settings
        if size < self._recount_at and size + 2 <= settings.max_concurrent_streams:
            return size
        count = super()._open_streams(remainder)
        self._recount_at = 2 * len(self.streams) + 64
        return count

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[H2Event]]:
        """h2 4.4.1's (without PRIORITY: h2's own), the stream looked up once and the
        side read once (h2 builds an AllowedStreamIDs enum per frame)."""
        if "PRIORITY" in frame.flags:
            return super()._receive_headers_frame(frame)
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            limit = self.local_settings.max_concurrent_streams
            count = self.open_inbound_streams
            if count + 1 > limit:
                raise TooManyStreamsError(f"Max inbound streams is {limit}, {count} open")
        headers = _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        if stream is None:
            stream = self._begin_new_stream(frame.stream_id, self._inbound_ids)
        frames, stream_events = stream.receive_headers(
            headers, "END_STREAM" in frame.flags, self._header_encoding
        )
        return frames, events + stream_events

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        """h2 4.4.1's, making a PairStream, without its three debug calls (a no-op logger)
        and with the side read once."""
        outbound = (stream_id % 2) == int(self._client_side)
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise StreamIDTooLowError(stream_id, highest)
        if (stream_id % 2) != int(allowed_ids):
            raise H2ProtocolError("Invalid stream ID for peer.")
        stream = PairStream(
            stream_id,
            config=self.config,
            inbound_window_size=self.local_settings.initial_window_size,
            outbound_window_size=self.remote_settings.initial_window_size,
        )
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        stream.state_machine.__class__ = PairStreamStateMachine
        self.streams[stream_id] = stream
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[HeaderWeaklyTyped],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's send_headers, by a shorter way for a list of bytes fields without
        priority that is not an informational response (see above)."""
        if (
            priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or not self._plain_outbound
            or type(headers) is not list
            or not headers
        ):
            return super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
        method = authority = None
        for name, value in headers:
            if type(name) is not bytes or type(value) is not bytes:
                return super().send_headers(stream_id, headers, end_stream)
            if name == b":method" and method is None:
                method = value
            elif name == b":authority" and authority is None:
                authority = value
            elif name == b":status" and value[:1] == b"1" and not self._client_side:
                return super().send_headers(stream_id, headers, end_stream)  # informational
        if stream_id not in self.streams:
            limit = self.remote_settings.max_concurrent_streams
            count = self.open_outbound_streams
            if count + 1 > limit:
                raise TooManyStreamsError(f"Max outbound streams is {limit}, {count} open")
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._get_or_create_stream(stream_id, self._outbound_ids)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if machine.trailers_sent and not end_stream:
            raise H2ProtocolError("Trailers must have END_STREAM set.")
        if machine.client and stream._authority is None:
            stream._authority = authority
        stream.request_method = method
        step = stream.max_outbound_frame_size or len(block)
        out = self._data_to_send
        kind, flags = _HEADERS, _END_STREAM if end_stream else 0
        for start in range(0, len(block), step):
            piece = block[start : start + step]
            if start + step >= len(block):
                flags |= _END_HEADERS
            n = len(piece)
            out += _FRAME_HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id)
            out += piece
            kind, flags = _CONTINUATION, 0
        return None

    def end_stream(self, stream_id: int) -> None:
        """h2's end_stream (an empty DATA frame with END_STREAM), without frame objects."""
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = self._get_stream_by_id(stream_id)
        stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        self._data_to_send += _FRAME_HEADER.pack(0, 0, _DATA, _END_STREAM, stream_id)

    def release(self, *stream_ids: int) -> None:
        """Forget these streams now if they are closed, as h2 does when it next counts
        the open streams (which it may not do for a long while: see _open_streams).
        Meanwhile every closed H2Stream (a dozen objects with its state machine and window
        managers) stays in ``streams``, for every collection of the garbage collector's
        oldest generation to walk."""
        streams = self.streams
        for stream_id in stream_ids:
            stream = streams.get(stream_id)
            if stream is not None and stream.state_machine.state is StreamState.CLOSED:
                del streams[stream_id]
                self._closed_streams[stream_id] = stream.closed_by

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

    def can_send(self, stream_id: int) -> bool:
        """Whether our side of ``stream_id`` is still open."""
        stream = self.streams.get(stream_id)
        return stream is not None and stream.state_machine.state in _SENDABLE

    def take_output(self) -> list[Buffer]:
        """Every queued frame, in order, as buffers for ``writelines``."""
        out = self._out
        if self._data_to_send:
            out.append(super().data_to_send())
        self._out = []
        return out
