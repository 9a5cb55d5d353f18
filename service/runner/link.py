"""The client side of one upgraded SPDY connection and the local TCP connections it carries.

Every accepted local connection becomes a `StreamPair` (protocols.md §1.5): SYN_STREAM
for the error stream and, without waiting for its reply, for the data stream. Local
bytes are read only once the data stream's SYN_REPLY has arrived (spdystream drops DATA
that comes earlier). Text on the error stream closes that one local connection and is
counted; the link and every other pair stay up (unlike client-go, which ends the session).

Back-pressure is per direction and bounded: when the upstream socket cannot take more,
every local socket stops being read; when a local socket's write buffer is full, the
upstream socket stops being read (the only back-pressure SPDY gives us, §1.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from service.aio.readbuffer import SharedBufferReader, shared_read_buffer
from service.protocols.spdy import (
    ConnectionTerminated,
    DataReceived,
    HeaderBlock,
    PingAcknowledged,
    ProtocolError,
    RstStatus,
    SpdyConnection,
    StreamEnded,
    StreamRejected,
    StreamReplied,
    StreamReset,
    encode_header_block,
)
from service.runner.keepalive import Keepalive
from service.runner.tunnel import TunnelPipe, TunnelTransport
from service.upstream import UpgradedConnection, WebSocketConnection, set_nodelay

log = logging.getLogger("podgate.runner")

LOCAL_WRITE_HIGH_WATER = 1024 * 1024
UPSTREAM_WRITE_HIGH_WATER = 4 * 1024 * 1024
MAX_ERROR_TEXT = 64 * 1024
DATA_FRAME_SIZE = 256 * 1024
GATED_READ = 4096  # what one read takes from a connection whose pair is not open yet


@dataclass(slots=True)
class TrafficCounters:
    """The numbers of one port mapping (a session's are their sum); plain ints, cheap on
    the data path. Each local connection holds its mapping's counters."""

    connections_total: int = 0
    connections_active: int = 0
    connection_errors: int = 0
    bytes_in: int = 0  # from the pod to local clients
    bytes_out: int = 0  # from local clients to the pod


_U32 = struct.Struct(">I")
REPLY_SWEEP_INTERVAL = 1.0


@functools.cache
def _pair_header_prefixes(port: int) -> tuple[bytes, bytes]:
    """The error and data blocks of a port up to the requestid value (it comes last)."""
    prefixes = []
    for kind in ("error", "data"):
        raw = encode_header_block([("streamtype", kind), ("port", str(port)), ("requestid", "")])
        prefixes.append(raw[:-4])  # drop the empty value's length; added per request
    return prefixes[0], prefixes[1]


def pair_header_blocks(port: int, request_id: int) -> tuple[HeaderBlock, HeaderBlock]:
    """Uncompressed blocks for one pair (the zlib context is per connection, so only
    these are cached), byte-identical to encoding the three headers each time."""
    error_prefix, data_prefix = _pair_header_prefixes(port)
    rid = str(request_id).encode()
    tail = _U32.pack(len(rid)) + rid
    return HeaderBlock(error_prefix + tail), HeaderBlock(data_prefix + tail)


_NODELAY_BY_LOOP: dict[type, bool] = {}


def _loop_sets_nodelay(loop: asyncio.AbstractEventLoop) -> bool:
    """asyncio's selector loop and uvloop already set TCP_NODELAY on every TCP transport."""
    kind = type(loop)
    known = _NODELAY_BY_LOOP.get(kind)
    if known is None:
        known = isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or (
            kind.__module__.startswith("uvloop")
        )
        _NODELAY_BY_LOOP[kind] = known
    return known


class LocalConnection(asyncio.BufferedProtocol):
    """One accepted local TCP connection; it is read only once its pair is open.

    Buffered, into `shared_read_buffer()`, so that a connection still waiting for its pair
    reads a few bytes, not 256 KiB: uvloop starts reading right after connection_made
    (a pause there is undone), so one read happens before the gate can pause it, and
    1000 connections opened at once held 24-31 MiB that way.
    """

    def __init__(
        self,
        local_port: int,
        position: int,
        on_accept: Callable[[LocalConnection], None],
        counters: TrafficCounters | None = None,
        on_close: Callable[[LocalConnection], None] | None = None,
    ) -> None:
        self.local_port = local_port
        self.position = position  # which port mapping of the session accepted it
        self.remote_port = 0  # the pod port, set by the session when the pair is opened
        self.counters = counters if counters is not None else TrafficCounters()
        self._on_accept = on_accept
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        # Set by whichever link carries it (SpdyLink, H2Link or ChannelForwarder), which
        # also gets the callbacks below: local_data, local_eof, local_lost, *_upstream_reads.
        self.pair: Any = None
        self.link: Any = None
        self.closed = False
        # Until its stream is accepted upstream, a connection is held unread. uvloop ignores
        # pause_reading() in connection_made, so bytes that still arrive wait here.
        self.gated = True
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        # Why: the per-connection socket object and setsockopt cost µs on the conn/s path,
        # and the loops we run on have set TCP_NODELAY already.
        if not _loop_sets_nodelay(asyncio.get_running_loop()):
            set_nodelay(transport)
        self.transport.set_write_buffer_limits(high=LOCAL_WRITE_HIGH_WATER)
        self.transport.pause_reading()
        self._on_accept(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = shared_read_buffer()
        return buffer[:GATED_READ] if self.gated else buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the buffer is shared, and the bytes may wait in a transport's queue.
        self.data_received(bytes(shared_read_buffer()[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.gated:
            self._early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.link.local_data(self.pair, data)

    def eof_received(self) -> bool:
        if self.gated:
            self._early_eof = True
            return True
        self.link.local_eof(self.pair)
        return True  # half-close: keep writing what the pod sends

    def open_gate(self) -> None:
        """The upstream accepted this connection's stream: deliver what waited, read on."""
        if not self.gated or self.closed or self.link is None:
            return
        self.gated = False
        early, self._early = self._early, []
        for chunk in early:
            self.link.local_data(self.pair, chunk)
        if self._early_eof:
            self.link.local_eof(self.pair)
        elif self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.link is not None and self.pair is not None:
            self.link.local_lost(self.pair)
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        if self.link is not None:
            self.link.block_upstream_reads(self)

    def resume_writing(self) -> None:
        if self.link is not None:
            self.link.unblock_upstream_reads(self)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def reset(self) -> None:
        """Abort with a TCP RST, so that a client sees its transfer was cut, not ended."""
        if self.transport is not None and not self.closed:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()


@dataclass(eq=False, slots=True)
class StreamPair:
    request_id: int
    error_sid: int
    data_sid: int
    local: LocalConnection
    data_replied: bool = False
    local_fin: bool = False  # we sent FIN on the data stream
    remote_fin: bool = False  # the pod side sent FIN on the data stream
    error_text: bytearray = field(default_factory=bytearray)
    done: bool = False


class SpdyLink(SharedBufferReader):
    """One upgraded connection toward the cluster, multiplexing many `StreamPair`s.

    Buffered: the socket is read into `shared_read_buffer()` (see there why); inside a
    WebSocket tunnel, `TunnelPipe` reads and calls `data_received` instead.
    """

    def __init__(
        self,
        *,
        on_lost: Callable[[SpdyLink, str], None],
        on_connection_error: Callable[[LocalConnection, str], None],
        ping_interval: float = 5.0,
        reply_timeout: float = 30.0,
    ) -> None:
        self._on_lost = on_lost
        self._on_connection_error = on_connection_error
        self.reply_timeout = reply_timeout
        # Why merge_data: one event (and one local write) per stream run per upstream read.
        self.conn = SpdyConnection(
            client_side=True, max_data_frame=DATA_FRAME_SIZE, merge_data=True
        )
        # Payloads held back during one upstream read, so each local connection gets one
        # write per read even when streams interleave; written before any other event.
        self._held: dict[StreamPair, list[bytes]] = {}
        self.transport: asyncio.Transport | None = None
        self.pairs: dict[int, StreamPair] = {}  # by error and by data stream id
        self._next_request_id = 0
        self._write_paused = False
        self._read_blockers: set[object] = set()
        self.keepalive = Keepalive(
            ping_interval,
            send_ping=self._send_ping,
            on_dead=lambda: self._lose("upstream stopped answering pings"),
            held=lambda: bool(self._read_blockers),
        )
        # Why: one periodic sweep instead of a call_later per pair (conn/s path). Pairs
        # waiting for SYN_REPLY, in deadline order (one timeout, so insertion order).
        self._awaiting: dict[StreamPair, float] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._flush_pending = False
        self._unflushed = 0  # local payload bytes queued since the last flush
        self.closed = False
        self.lost_reason = ""

    # ------------------------------------------------------------------ setup

    def attach(self, upgraded: UpgradedConnection) -> None:
        """Take over an upgraded connection (bytes past the 101, EOF or loss replayed)."""
        self._adopt(upgraded.transport)
        upgraded.attach(self)

    def attach_tunnel(self, ws: WebSocketConnection) -> None:
        """Take over a WebSocket tunnel: SPDY frames ride in binary messages (§3)."""
        pipe = TunnelPipe(ws.client, self)
        self._adopt(TunnelTransport(ws.transport, ws.client))
        pipe.raw = ws.transport
        ws.attach(pipe)
        pipe.process(ws.events)

    def _adopt(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.transport.set_write_buffer_limits(high=UPSTREAM_WRITE_HIGH_WATER)
        set_nodelay(self.transport)
        self.keepalive.start()

    @property
    def usable(self) -> bool:
        return not self.closed and not self.conn.terminated and not self.conn.goaway_sent

    # -------------------------------------------------------------- keepalive

    def _send_ping(self) -> None:
        self.conn.ping()
        self._flush()

    # ------------------------------------------------------------ local side

    def open_pair(self, local: LocalConnection) -> None:
        """Open the error and data streams for a new local connection."""
        assert self.transport is not None
        request_id = self._next_request_id
        self._next_request_id += 1
        # Why: cached uncompressed blocks skip encoding and validating headers per pair.
        error_block, data_block = pair_header_blocks(local.remote_port, request_id)
        try:
            error_sid = self.conn.open_stream(error_block)
            data_sid = self.conn.open_stream(data_block)
        except ProtocolError as exc:
            log.info("cannot open streams: %s", exc)
            local.abort()
            return
        pair = StreamPair(request_id, error_sid, data_sid, local)
        self.pairs[error_sid] = pair
        self.pairs[data_sid] = pair
        local.pair = pair
        local.link = self
        local.counters.connections_total += 1
        local.counters.connections_active += 1
        loop = asyncio.get_running_loop()
        self._awaiting[pair] = loop.time() + self.reply_timeout
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._sweep_interval(), self._sweep)
        self._flush_soon()

    def local_data(self, pair: StreamPair, data: bytes) -> None:
        if pair.done or pair.local_fin:
            return
        if not self.conn.can_send(pair.data_sid):
            # Fix: one read can carry the data stream's SYN_REPLY *and* its RST (a refused
            # pod port). The connection has then already forgotten the stream when
            # StreamReplied is handled and open_gate() delivers the early bytes; sending
            # raised StreamStateError out of data_received and tore the whole link down.
            # Drop them: the StreamReset event that follows finishes this pair.
            return
        pair.local.counters.bytes_out += len(data)
        self.conn.send_data(pair.data_sid, data)
        self._unflushed += len(data)
        # Bulk data goes out at once: libuv reads a socket up to 32 times per poll, and
        # holding it all (8 MiB) would bypass the write buffer's back-pressure.
        if self._unflushed >= DATA_FRAME_SIZE:
            self._flush()
        else:
            self._flush_soon()

    def local_eof(self, pair: StreamPair) -> None:
        if pair.done or pair.local_fin:
            return
        pair.local_fin = True
        if self.conn.can_send(pair.data_sid):  # Fix: see local_data (reset in the same read)
            self.conn.end_stream(pair.data_sid)
        self._flush_soon()
        self._maybe_finish(pair)

    def local_lost(self, pair: StreamPair) -> None:
        self.unblock_upstream_reads(pair.local)
        if not pair.done:
            self._finish(pair)
            self._flush_soon()

    def block_upstream_reads(self, reason: object) -> None:
        if not self._read_blockers and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._read_blockers.add(reason)

    def unblock_upstream_reads(self, reason: object) -> None:
        if reason not in self._read_blockers:
            return
        self._read_blockers.discard(reason)
        if not self._read_blockers and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # --------------------------------------------------------- upstream side

    def data_received(self, data: bytes | memoryview) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._flush()
            self._lose(f"protocol error from upstream: {exc}")
            return
        for event in events:
            if type(event) is DataReceived:
                self._data(event)
                continue
            if self._held:
                self._write_held()  # keep order: data reaches the local side before FIN/RST
            if isinstance(event, StreamReplied):
                self._replied(event.stream_id)
            elif isinstance(event, StreamEnded):
                self._ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._reset(event.stream_id)
            elif isinstance(event, PingAcknowledged):
                self.keepalive.answered()
            elif isinstance(event, StreamRejected):
                log.info("upstream stream %d rejected: %s", event.stream_id, event.error)
                self._reset(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self._lose("upstream sent GOAWAY")
                return
        if self._held:
            self._write_held()
        self._flush()

    def _write_held(self) -> None:
        held, self._held = self._held, {}
        for pair, chunks in held.items():
            local = pair.local
            if pair.done or local.transport is None or local.closed:
                continue
            # bytes objects only: the transport may keep references after we return.
            if len(chunks) == 1:
                local.transport.write(chunks[0])
            else:
                local.transport.writelines(chunks)

    def eof_received(self) -> bool:
        self._lose("upstream closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"upstream connection lost: {exc}" if exc else "upstream closed the connection")

    def pause_writing(self) -> None:
        self._write_paused = True
        for pair in set(self.pairs.values()):
            if pair.data_replied and pair.local.transport is not None:
                pair.local.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        for pair in set(self.pairs.values()):
            if pair.data_replied and not pair.local_fin and pair.local.transport is not None:
                pair.local.transport.resume_reading()

    def _replied(self, sid: int) -> None:
        pair = self.pairs.get(sid)
        if pair is None or pair.done:
            return
        if sid == pair.error_sid:
            # kubectl's order: the error stream is half-closed once it is accepted.
            if self.conn.can_send(sid):
                self.conn.end_stream(sid)
            return
        pair.data_replied = True
        self._awaiting.pop(pair, None)
        pair.local.open_gate()
        if self._write_paused and pair.local.transport is not None:
            pair.local.transport.pause_reading()

    def _data(self, event: DataReceived) -> None:
        pair = self.pairs.get(event.stream_id)
        if pair is None or pair.done:
            return
        if event.stream_id == pair.error_sid:
            room = MAX_ERROR_TEXT - len(pair.error_text)
            if room > 0:
                pair.error_text += event.data[:room]
            return
        local = pair.local
        if local.transport is not None and not local.closed:
            local.counters.bytes_in += len(event.data)
            chunks = self._held.get(pair)
            if chunks is None:
                self._held[pair] = [event.data]
            else:
                chunks.append(event.data)

    def _ended(self, sid: int) -> None:
        pair = self.pairs.get(sid)
        if pair is None or pair.done:
            return
        if sid == pair.error_sid:
            self._error_stream_done(pair)
            return
        pair.remote_fin = True
        local = pair.local
        if local.transport is not None and not local.closed and local.transport.can_write_eof():
            local.transport.write_eof()
        self._maybe_finish(pair)

    def _reset(self, sid: int) -> None:
        pair = self.pairs.get(sid)
        if pair is None or pair.done:
            return
        if sid == pair.error_sid:
            self._error_stream_done(pair)  # the text (if any) arrived before the RST
            return
        # The pod side aborted the data stream; any error text came before the RST.
        if pair.error_text:
            self._error_stream_done(pair)
        else:
            self._finish(pair, abort_local=True)

    def _error_stream_done(self, pair: StreamPair) -> None:
        if pair.error_text:
            text = pair.error_text.decode("utf-8", "replace")
            pair.local.counters.connection_errors += 1
            self._on_connection_error(pair.local, text)
            self._finish(pair, abort_local=True)
        elif pair.remote_fin and (pair.local_fin or pair.local.closed):
            self._finish(pair)

    def _sweep_interval(self) -> float:
        return min(REPLY_SWEEP_INTERVAL, self.reply_timeout)

    def _sweep(self) -> None:
        self._sweep_handle = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired = []
        for pair, deadline in self._awaiting.items():
            if deadline > now:
                break
            expired.append(pair)
        for pair in expired:
            self._reply_timed_out(pair)
        if self._awaiting:
            self._sweep_handle = loop.call_later(self._sweep_interval(), self._sweep)

    def _reply_timed_out(self, pair: StreamPair) -> None:
        self._awaiting.pop(pair, None)
        if pair.done or pair.data_replied:
            return
        pair.local.counters.connection_errors += 1
        self._on_connection_error(
            pair.local, "timed out waiting for the upstream to accept the stream pair"
        )
        self._finish(pair, abort_local=True)
        self._flush()

    # ---------------------------------------------------------------- endings

    def _maybe_finish(self, pair: StreamPair) -> None:
        if pair.local_fin and pair.remote_fin:
            local = pair.local
            if local.transport is not None and not local.closed:
                local.transport.close()

    def _finish(self, pair: StreamPair, *, abort_local: bool = False) -> None:
        if pair.done:
            return
        pair.done = True
        self._awaiting.pop(pair, None)
        # client-go resets the data stream unless it already sent FIN or got an RST.
        for sid in (pair.data_sid, pair.error_sid):
            if self.conn.can_send(sid) and not (sid == pair.data_sid and pair.local_fin):
                with contextlib.suppress(ProtocolError):
                    self.conn.reset_stream(sid, RstStatus.CANCEL)
            self.pairs.pop(sid, None)
        pair.local.counters.connections_active -= 1
        self.unblock_upstream_reads(pair.local)
        local = pair.local
        if not local.closed and local.transport is not None:
            if abort_local:
                local.transport.abort()
            else:
                local.transport.close()

    def _flush_soon(self) -> None:
        """Flush once the loop has run every callback of this I/O poll.

        Why: connections' events that arrive together (a SYN pair, DATA, FIN) then go out in
        one write, which costs us and the peer one syscall and one wake-up instead of many.
        """
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._unflushed = 0
        if self.transport is None or self.closed:
            return
        chunks = self.conn.chunks_to_send()
        if chunks:
            self.transport.writelines(chunks)

    def _lose(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.lost_reason = reason
        self.keepalive.stop()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        for pair in list(set(self.pairs.values())):
            pair.local.reset()  # data may be missing: a reset, not a clean end
            self._finish(pair, abort_local=True)
        if self.transport is not None:
            self.transport.abort()
        self._on_lost(self, reason)

    def fail(self, reason: str) -> None:
        """Declare the link dead (e.g. its pod is gone): every connection is reset."""
        self._lose(reason)

    def close(self) -> None:
        """Graceful end (client-go's Close): RST every open stream, GOAWAY, close TCP."""
        if self.closed:
            return
        for pair in list(set(self.pairs.values())):
            self._finish(pair, abort_local=True)
        with contextlib.suppress(ProtocolError):
            self.conn.goaway()
        self._flush()
        self.closed = True
        self.keepalive.stop()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        if self.transport is not None:
            self.transport.close()
