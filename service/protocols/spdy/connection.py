"""Sans-IO SPDY/3.1 connection state machine, client or server role (protocols.md §1).

Feed received bytes to ``receive_data`` and act on the returned events; call the
``send_*`` methods and write out ``data_to_send()`` (or ``chunks_to_send()``).

Zero-copy writes: ``send_data`` queues a ``bytes`` payload by reference (slices of it
as memoryviews when it is split), next to an 8-byte header from ``data_frame_header``.
An IO layer that calls ``chunks_to_send()`` and hands the list to
``transport.writelines`` therefore never copies the payload in this module, and stream
state stays right because every frame goes through ``send_data``. Other buffer types
(bytearray, memoryview) are copied, since their owner may reuse them.

Flow control is not enforced (spdystream never sends WINDOW_UPDATE, §1.8): incoming
SETTINGS and WINDOW_UPDATE are parsed and ignored, and they are never sent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from .errors import ConnectionStateError, HeaderError, ProtocolError, StreamStateError
from .events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    HeadersReceived,
    PingAcknowledged,
    PingReceived,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReplied,
    StreamReset,
)
from .frames import (
    FLAG_FIN,
    MAX_FRAME_LENGTH,
    MAX_STREAM_ID,
    DataFrame,
    Frame,
    GoAwayFrame,
    GoAwayStatus,
    HeadersFrame,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    SynReplyFrame,
    SynStreamFrame,
    parse_frame,
)
from .headers import (
    FORBIDDEN_IN_SYN_REPLY,
    FORBIDDEN_IN_SYN_STREAM,
    MAX_BLOCK_SIZE,
    HeaderBlock,
    HeaderCompressor,
    HeaderDecompressor,
    decode_header_block,
    encode_header_block,
)

__all__ = ["HeaderInput", "SpdyConnection"]

HeaderInput = Sequence[tuple[str, str]] | HeaderBlock

_DATA_HDR = struct.Struct(">II")
_unpack_header = _DATA_HDR.unpack_from
_FIN_BITS: Final = FLAG_FIN << 24
_MAX_PING_ID: Final = 0x7FFFFFFF


def _joined(stream_id: int, parts: list[bytes | memoryview], fin: bool) -> DataReceived:
    """One event for a run of DATA payloads; ``bytes`` owns its memory (no view leaks)."""
    if len(parts) == 1:
        part = parts[0]
        return DataReceived(stream_id, part if type(part) is bytes else bytes(part), fin)
    return DataReceived(stream_id, b"".join(parts), fin)


class _Stream:
    """Per-stream flags; a stream is forgotten once both sides closed or either reset."""

    __slots__ = ("local_closed", "remote_closed", "replied")

    def __init__(self, local_closed: bool, remote_closed: bool = False) -> None:
        self.local_closed = local_closed
        self.remote_closed = remote_closed
        # Our streams: SYN_REPLY received. Peer streams: SYN_REPLY sent.
        self.replied = False


class SpdyConnection:
    """One SPDY/3.1 session. ``client_side`` picks id parity: client odd, server even."""

    def __init__(
        self,
        client_side: bool,
        max_data_frame: int = 256 * 1024,
        *,
        max_header_block: int = MAX_BLOCK_SIZE,
        compression_level: int = 9,
        merge_data: bool = False,
    ) -> None:
        if not 0 < max_data_frame <= MAX_FRAME_LENGTH:
            raise ValueError(f"max_data_frame must be in 1..{MAX_FRAME_LENGTH}")
        self.client_side = client_side
        self.max_data_frame = max_data_frame
        # Why: one DataReceived per stream run per read (not per 32 KiB frame) means one
        # local write instead of ~8. Off by default: one DataReceived per DATA frame.
        self.merge_data = merge_data
        self._parity = 1 if client_side else 0
        self._next_stream_id = 1 if client_side else 2
        self._next_ping_id = 1 if client_side else 2
        self._last_peer_id = 0  # highest peer SYN_STREAM id that passed the ordering check
        self._last_accepted_id = 0  # highest peer stream we accepted: GOAWAY last-good
        self._streams: dict[int, _Stream] = {}
        self._compressor = HeaderCompressor(compression_level)
        self._decompressor = HeaderDecompressor(max_header_block)
        self._inbuf = bytearray()  # always a strict prefix of one frame
        self._out: list[bytes | memoryview] = []
        self._goaway_sent = False
        self._terminated = False
        self._error: ProtocolError | None = None

    # ------------------------------------------------------------------ inspection

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    @property
    def stream_count(self) -> int:
        """Streams still tracked (not yet closed both ways or reset)."""
        return len(self._streams)

    @property
    def last_peer_stream_id(self) -> int:
        """Highest peer-initiated stream id accepted (the GOAWAY last-good id)."""
        return self._last_accepted_id

    @property
    def goaway_sent(self) -> bool:
        return self._goaway_sent

    @property
    def terminated(self) -> bool:
        """True once the peer's GOAWAY was received."""
        return self._terminated

    @property
    def error(self) -> ProtocolError | None:
        """The connection-level error that ended this session, if any."""
        return self._error

    def can_send(self, stream_id: int) -> bool:
        """Whether DATA may still be sent on ``stream_id``."""
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.local_closed

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Drain every queued frame as one bytes object."""
        out = self._out
        if not out:
            return b""
        self._out = []
        if len(out) == 1 and type(out[0]) is bytes:
            return out[0]
        return b"".join(out)

    def chunks_to_send(self) -> list[bytes | memoryview]:
        """Drain the queued pieces without joining them (for ``writelines``)."""
        out = self._out
        self._out = []
        return out

    # ------------------------------------------------------------------ sending

    def open_stream(self, headers: HeaderInput, fin: bool = False) -> int:
        """Allocate the next stream id of our parity and queue its SYN_STREAM."""
        if self._error is not None:
            raise ConnectionStateError(f"connection failed: {self._error.message}")
        if self._goaway_sent or self._terminated:
            raise ConnectionStateError("connection is going away; open a new one")
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise ConnectionStateError("stream ids exhausted; open a new connection")
        if isinstance(headers, HeaderBlock):
            if headers.has_host:
                raise ValueError("header 'host' is not allowed in SYN_STREAM")
            raw = headers.raw
        else:
            raw = encode_header_block(headers, forbidden=FORBIDDEN_IN_SYN_STREAM)
        # Compress only once nothing can fail: the zlib context must match the wire.
        block = self._compressor.compress(raw)
        self._next_stream_id = stream_id + 2
        self._out.append(SynStreamFrame(stream_id, block, fin).serialize())
        self._streams[stream_id] = _Stream(local_closed=fin)
        return stream_id

    def send_reply(self, stream_id: int, headers: HeaderInput = (), fin: bool = False) -> None:
        """Queue SYN_REPLY for a stream the peer opened."""
        stream = self._sendable(stream_id)
        if stream_id & 1 == self._parity:
            raise StreamStateError(
                f"stream {stream_id} is ours; only the peer replies to it", stream_id=stream_id
            )
        if stream.replied:
            raise StreamStateError(
                f"stream {stream_id} was already replied to",
                error_code=RstStatus.STREAM_IN_USE,
                stream_id=stream_id,
            )
        if isinstance(headers, HeaderBlock):
            raw = headers.raw
        else:
            raw = encode_header_block(headers, forbidden=FORBIDDEN_IN_SYN_REPLY)
        block = self._compressor.compress(raw)
        self._out.append(SynReplyFrame(stream_id, block, fin).serialize())
        stream.replied = True
        if fin:
            self._local_fin(stream_id, stream)

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, fin: bool = False
    ) -> None:
        """Queue ``data`` as DATA frames of at most ``max_data_frame`` bytes.

        Empty ``data`` with ``fin`` sends the half-close frame; without ``fin`` it is a
        no-op. A ``bytes`` payload is referenced, not copied, until it is drained.
        """
        stream = self._sendable(stream_id)
        size = len(data)
        out = self._out
        limit = self.max_data_frame
        if size <= limit:
            if size or fin:
                out.append(_DATA_HDR.pack(stream_id, (_FIN_BITS if fin else 0) | size))
                if size:
                    out.append(data if type(data) is bytes else bytes(data))
        else:
            view = memoryview(data)
            shared = type(data) is bytes  # immutable: safe to reference
            pack = _DATA_HDR.pack
            for start in range(0, size, limit):
                chunk = view[start : start + limit]
                n = len(chunk)
                last = start + n == size
                out.append(pack(stream_id, (_FIN_BITS if fin and last else 0) | n))
                out.append(chunk if shared else chunk.tobytes())
        if fin:
            self._local_fin(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        """Half-close: an empty DATA frame with FIN."""
        self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, error_code: int = RstStatus.CANCEL) -> None:
        """Queue RST_STREAM and forget the stream. A no-op if it is already closed."""
        if self._streams.pop(stream_id, None) is None:
            if self._was_opened(stream_id):
                return
            raise StreamStateError(
                f"stream {stream_id} was never opened",
                error_code=RstStatus.INVALID_STREAM,
                stream_id=stream_id,
            )
        self._out.append(RstStreamFrame(stream_id, int(error_code)).serialize())

    def ping(self) -> int:
        """Queue a PING with the next id of our parity and return that id."""
        ping_id = self._next_ping_id
        nxt = ping_id + 2
        self._next_ping_id = nxt if nxt <= _MAX_PING_ID else (1 if self.client_side else 2)
        self._out.append(PingFrame(ping_id).serialize())
        return ping_id

    def goaway(self, error_code: int = GoAwayStatus.OK) -> None:
        """Queue GOAWAY once; afterwards no stream can be opened by either side."""
        if self._goaway_sent:
            return
        self._goaway_sent = True
        self._out.append(GoAwayFrame(self._last_accepted_id, int(error_code)).serialize())

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse received bytes into events; incomplete frames are kept for later.

        A connection-level error queues GOAWAY(PROTOCOL_ERROR) and raises
        ``ProtocolError`` (``stream_id is None``), now and on every later call; events
        parsed earlier in the same call are dropped with it, as the session is over.
        Stream-level errors never raise: they queue RST_STREAM and yield StreamRejected.
        """
        if self._error is not None:
            raise self._error
        events: list[Event] = []
        if self._terminated:
            return events
        try:
            with memoryview(data) as view:
                pos = self._complete_pending(view, events) if self._inbuf else 0
                size = len(view)
                streams = self._streams
                merge = self.merge_data
                # A run of consecutive DATA payloads of one stream, emitted as one event.
                run_sid = 0
                run: list[bytes | memoryview] = []
                if merge and events:
                    last = events[-1]
                    if type(last) is DataReceived and not last.fin:
                        events.pop()
                        run_sid = last.stream_id
                        run.append(last.data)
                while pos < size and not self._terminated:
                    # Fast path: a complete DATA frame on a stream that is open for reading.
                    if size - pos >= 8:
                        w0, w1 = _unpack_header(view, pos)
                        end = pos + 8 + (w1 & 0xFFFFFF)
                        if w0 < 0x80000000 and end <= size:
                            stream = streams.get(w0)
                            if stream is not None and not stream.remote_closed:
                                fin = (w1 >> 24) & FLAG_FIN
                                if merge:
                                    if run and run_sid != w0:
                                        events.append(_joined(run_sid, run, False))
                                        run = []
                                    run_sid = w0
                                    run.append(view[pos + 8 : end])
                                    pos = end
                                    if fin:
                                        events.append(_joined(w0, run, True))
                                        run = []
                                        self._remote_fin(w0, stream, events)
                                    continue
                                events.append(
                                    DataReceived(w0, view[pos + 8 : end].tobytes(), fin == 1)
                                )
                                pos = end
                                if fin:
                                    self._remote_fin(w0, stream, events)
                                continue
                    if run:
                        events.append(_joined(run_sid, run, False))
                        run = []
                    parsed = parse_frame(view, pos)
                    if parsed is None:
                        self._inbuf += view[pos:]
                        break
                    frame, pos = parsed
                    self._dispatch(frame, events)
                if run:
                    events.append(_joined(run_sid, run, False))
                    run = []
        except ProtocolError as exc:
            self._fail(exc)
            raise
        if self._terminated:
            self._inbuf = bytearray()
        return events

    def _complete_pending(self, view: memoryview, events: list[Event]) -> int:
        """Top up the buffered partial frame from ``view``; return how much was used.

        Only the straddling frame is copied into the buffer; the rest of ``view`` is
        parsed in place by the caller.
        """
        buf = self._inbuf
        size = len(view)
        pos = 0
        if len(buf) < 8:
            pos = min(8 - len(buf), size)
            buf += view[:pos]
            if len(buf) < 8:
                return size
        need = 8 + int.from_bytes(buf[5:8], "big") - len(buf)
        take = min(need, size - pos)
        buf += view[pos : pos + take]
        pos += take
        with memoryview(buf) as whole:
            parsed = parse_frame(whole)  # also validates a control header early
        if parsed is None:
            return size
        self._inbuf = bytearray()
        self._dispatch(parsed[0], events)
        return pos

    def _fail(self, exc: ProtocolError) -> None:
        self._error = exc
        self._inbuf = bytearray()
        if not self._goaway_sent:
            self._goaway_sent = True
            status = exc.error_code if exc.error_code in (0, 1, 2) else 1
            self._out.append(GoAwayFrame(self._last_accepted_id, status).serialize())

    def _dispatch(self, frame: Frame, events: list[Event]) -> None:
        if isinstance(frame, DataFrame):
            self._on_data(frame, events)
        elif isinstance(frame, SynStreamFrame):
            self._on_syn_stream(frame, events)
        elif isinstance(frame, SynReplyFrame):
            self._on_syn_reply(frame, events)
        elif isinstance(frame, RstStreamFrame):
            if self._streams.pop(frame.stream_id, None) is not None:
                events.append(StreamReset(frame.stream_id, frame.status))
        elif isinstance(frame, PingFrame):
            if frame.ping_id & 1 == self._parity:
                events.append(PingAcknowledged(frame.ping_id))
            else:
                self._out.append(frame.serialize())
                events.append(PingReceived(frame.ping_id))
        elif isinstance(frame, HeadersFrame):
            self._on_headers(frame, events)
        elif isinstance(frame, GoAwayFrame):
            self._terminated = True
            events.append(ConnectionTerminated(frame.status, frame.last_good_stream_id))
        # SETTINGS and WINDOW_UPDATE: parsed (so validated) and ignored, §1.8.

    def _on_data(self, frame: DataFrame, events: list[Event]) -> None:
        stream_id = frame.stream_id
        stream = self._readable_stream(stream_id, "DATA", events)
        if stream is None:
            return
        events.append(DataReceived(stream_id, frame.data, frame.fin))
        if frame.fin:
            self._remote_fin(stream_id, stream, events)

    def _on_syn_stream(self, frame: SynStreamFrame, events: list[Event]) -> None:
        # Inflate first: the shared zlib context must see every block, even refused ones.
        block = self._decompressor.decompress(frame.header_block)
        stream_id = frame.stream_id
        if self._goaway_sent:
            # New streams after our GOAWAY are ignored, and so are their later frames.
            if stream_id & 1 != self._parity:
                self._last_peer_id = max(self._last_peer_id, stream_id)
            return
        if stream_id & 1 == self._parity:
            self._reject(
                ProtocolError(f"peer opened stream {stream_id} with our id parity"),
                stream_id,
                events,
            )
            return
        if stream_id <= self._last_peer_id:
            self._reject(
                ProtocolError(
                    f"stream id {stream_id} is not above the previous {self._last_peer_id}"
                ),
                stream_id,
                events,
            )
            return
        self._last_peer_id = stream_id
        headers = self._decode(block, FORBIDDEN_IN_SYN_STREAM, stream_id, events)
        if headers is None:
            return
        self._last_accepted_id = stream_id
        if not (frame.fin and frame.unidirectional):
            self._streams[stream_id] = _Stream(frame.unidirectional, frame.fin)
        events.append(StreamOpened(stream_id, headers, frame.fin, frame.unidirectional))
        if frame.fin:
            events.append(StreamEnded(stream_id))

    def _on_syn_reply(self, frame: SynReplyFrame, events: list[Event]) -> None:
        block = self._decompressor.decompress(frame.header_block)
        stream_id = frame.stream_id
        stream = self._peer_stream(stream_id, "SYN_REPLY", events)
        if stream is None:
            return
        if stream_id & 1 != self._parity:
            self._reject(
                ProtocolError(f"SYN_REPLY for stream {stream_id}, which the peer opened"),
                stream_id,
                events,
            )
            return
        if stream.replied:
            self._reject(
                ProtocolError(
                    f"second SYN_REPLY for stream {stream_id}",
                    error_code=RstStatus.STREAM_IN_USE,
                ),
                stream_id,
                events,
            )
            return
        if stream.remote_closed:
            self._reject_after_fin(stream_id, "SYN_REPLY", events)
            return
        headers = self._decode(block, FORBIDDEN_IN_SYN_REPLY, stream_id, events)
        if headers is None:
            return
        stream.replied = True
        events.append(StreamReplied(stream_id, headers, frame.fin))
        if frame.fin:
            self._remote_fin(stream_id, stream, events)

    def _on_headers(self, frame: HeadersFrame, events: list[Event]) -> None:
        block = self._decompressor.decompress(frame.header_block)
        stream_id = frame.stream_id
        stream = self._readable_stream(stream_id, "HEADERS", events)
        if stream is None:
            return
        # spdystream: request rules on even (server) streams, response rules on odd ones.
        forbidden = FORBIDDEN_IN_SYN_STREAM if stream_id & 1 == 0 else FORBIDDEN_IN_SYN_REPLY
        headers = self._decode(block, forbidden, stream_id, events)
        if headers is None:
            return
        events.append(HeadersReceived(stream_id, headers, frame.fin))
        if frame.fin:
            self._remote_fin(stream_id, stream, events)

    # ------------------------------------------------------------------ helpers

    def _sendable(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._was_opened(stream_id):
                raise StreamStateError(
                    f"stream {stream_id} is closed or reset",
                    error_code=RstStatus.STREAM_ALREADY_CLOSED,
                    stream_id=stream_id,
                )
            raise StreamStateError(
                f"stream {stream_id} was never opened",
                error_code=RstStatus.INVALID_STREAM,
                stream_id=stream_id,
            )
        if stream.local_closed:
            raise StreamStateError(
                f"stream {stream_id} is closed for sending (FIN sent or unidirectional)",
                error_code=RstStatus.STREAM_ALREADY_CLOSED,
                stream_id=stream_id,
            )
        return stream

    def _peer_stream(self, stream_id: int, what: str, events: list[Event]) -> _Stream | None:
        """The stream a peer's frame (``what``) is for; None when it is gone (the frame was
        in flight when we closed or reset it: dropped) or was never opened (rejected)."""
        stream = self._streams.get(stream_id)
        if stream is None and not self._was_opened(stream_id):
            self._reject_unopened(stream_id, what, events)
        return stream

    def _readable_stream(self, stream_id: int, what: str, events: list[Event]) -> _Stream | None:
        """``_peer_stream``, and None too (rejected) if the peer already sent its FIN."""
        stream = self._peer_stream(stream_id, what, events)
        if stream is not None and stream.remote_closed:
            self._reject_after_fin(stream_id, what, events)
            return None
        return stream

    def _decode(
        self, block: bytes, forbidden: frozenset[str], stream_id: int, events: list[Event]
    ) -> dict[str, str] | None:
        """The peer's header block for ``stream_id``; None when it breaks a rule (the
        stream is then rejected)."""
        try:
            return decode_header_block(block, forbidden)
        except HeaderError as exc:
            self._reject(exc.for_stream(stream_id), stream_id, events)
            return None

    def _was_opened(self, stream_id: int) -> bool:
        """Whether ``stream_id`` was ever in use (ids only grow, so closed ones are below)."""
        if stream_id & 1 == self._parity:
            return 0 < stream_id < self._next_stream_id
        return 0 < stream_id <= self._last_peer_id

    def _local_fin(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self._streams[stream_id]

    def _remote_fin(self, stream_id: int, stream: _Stream, events: list[Event]) -> None:
        stream.remote_closed = True
        events.append(StreamEnded(stream_id))
        if stream.local_closed:
            del self._streams[stream_id]

    def _reject(self, error: ProtocolError, stream_id: int, events: list[Event]) -> None:
        if error.stream_id != stream_id:
            error = error.for_stream(stream_id)
        self._streams.pop(stream_id, None)
        self._out.append(RstStreamFrame(stream_id, error.error_code).serialize())
        events.append(StreamRejected(stream_id, error))

    def _reject_unopened(self, stream_id: int, what: str, events: list[Event]) -> None:
        self._reject(
            ProtocolError(
                f"{what} on stream {stream_id}, which was never opened",
                error_code=RstStatus.INVALID_STREAM,
            ),
            stream_id,
            events,
        )

    def _reject_after_fin(self, stream_id: int, what: str, events: list[Event]) -> None:
        self._reject(
            ProtocolError(
                f"{what} on stream {stream_id} after the peer's FIN",
                error_code=RstStatus.STREAM_ALREADY_CLOSED,
            ),
            stream_id,
            events,
        )
