"""The `spdy` link: one upgraded SPDY/3.1 connection and the local connections it carries
(also the link inside the WebSocket tunnel, see `wstunnel.py`).

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
import struct
from dataclasses import dataclass, field

from service.aio.flow import ReadGate
from service.aio.readbuffer import SharedBufferReader
from service.aio.sockets import set_nodelay
from service.model import Transport
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
from service.runner.links.base import LinkHooks, LinkPair, MultiplexedLink
from service.runner.local import LocalConnection
from service.upstream import Cluster, UpgradedConnection

log = logging.getLogger("podgate.runner")

UPSTREAM_WRITE_HIGH_WATER = 4 * 1024 * 1024
MAX_ERROR_TEXT = 64 * 1024
DATA_FRAME_SIZE = 256 * 1024


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


@dataclass(eq=False, slots=True)
class StreamPair(LinkPair):
    """The error and data streams of one local connection (protocols.md §1.5)."""

    link: SpdyLink
    request_id: int
    error_sid: int
    data_sid: int
    local: LocalConnection
    data_replied: bool = False
    local_fin: bool = False  # we sent FIN on the data stream
    remote_fin: bool = False  # the pod side sent FIN on the data stream
    error_text: bytearray = field(default_factory=bytearray)
    done: bool = False

    # PairEnd: what the local connection calls (data, EOF, loss: LinkPair)
    def block_upstream(self) -> None:
        self.link.reads.block(self)

    def unblock_upstream(self) -> None:
        self.link.reads.unblock(self)


class SpdyLink(MultiplexedLink, SharedBufferReader):
    """One upgraded connection toward the cluster, multiplexing many `StreamPair`s.

    Buffered: the socket is read into `shared_read_buffer()` (see there why); inside a
    WebSocket tunnel, `TunnelPipe` reads and calls `data_received` instead.
    """

    def __init__(
        self, hooks: LinkHooks, *, kind: Transport = Transport.SPDY, reply_timeout: float = 30.0
    ) -> None:
        self.kind = kind
        self._hooks = hooks
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
        self.reads = ReadGate()  # held while a local socket cannot take more
        self.keepalive = Keepalive(
            hooks.keepalive,
            send_ping=self._send_ping,
            on_dead=lambda: self._lose("upstream stopped answering pings"),
            held=lambda: self.reads.blocked,
        )
        # Why: one periodic sweep instead of a call_later per pair (conn/s path). Pairs
        # waiting for SYN_REPLY, in deadline order (one timeout, so insertion order).
        self._awaiting: dict[StreamPair, float] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._flush_pending = False
        self._unflushed = 0  # local payload bytes queued since the last flush
        self.closed = False
        self.retiring = False  # no new pairs; closed once the open ones end
        self.lost_reason = ""

    # ------------------------------------------------------------------ setup

    def attach(self, upgraded: UpgradedConnection) -> None:
        """Take over an upgraded connection (bytes past the 101, EOF or loss replayed)."""
        self.adopt(upgraded.transport)
        upgraded.attach(self)

    def adopt(self, transport: asyncio.Transport) -> None:
        """Write to ``transport`` from now on (the socket, or the tunnel's wrapper)."""
        self.transport = transport
        self.reads.transport = transport
        self.transport.set_write_buffer_limits(high=UPSTREAM_WRITE_HIGH_WATER)
        set_nodelay(self.transport)
        self.keepalive.start()

    @property
    def usable(self) -> bool:
        return super().usable and not (self.conn.terminated or self.conn.goaway_sent)

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
        pair = StreamPair(self, request_id, error_sid, data_sid, local)
        self.pairs[error_sid] = pair
        self.pairs[data_sid] = pair
        local.pair = pair
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
            # One read can carry the data stream's SYN_REPLY *and* its RST (a refused pod
            # port): the stream is gone when the early bytes are delivered. They are
            # dropped; the StreamReset event that follows finishes the pair.
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
        if self.conn.can_send(pair.data_sid):  # see local_data: reset in the same read
            self.conn.end_stream(pair.data_sid)
        self._flush_soon()
        self._maybe_finish(pair)

    def local_lost(self, pair: StreamPair) -> None:
        self.reads.unblock(pair)
        if not pair.done:
            self._finish(pair)
            self._flush_soon()

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

    def pause_writing(self) -> None:
        self._write_paused = True
        for pair in set(self.pairs.values()):
            if pair.data_replied:
                pair.local.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        for pair in set(self.pairs.values()):
            if pair.data_replied and not pair.local_fin:
                pair.local.resume_reading()

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
        if self._write_paused:
            pair.local.pause_reading()

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
        pair.local.write_eof()
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
            self._hooks.on_connection_error(pair.local, text)
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
        self._hooks.on_connection_error(
            pair.local, "timed out waiting for the upstream to accept the stream pair"
        )
        self._finish(pair, abort_local=True)
        self._flush()

    # ---------------------------------------------------------------- endings

    def _maybe_finish(self, pair: StreamPair) -> None:
        if pair.local_fin and pair.remote_fin:
            pair.local.close()

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
        self.reads.unblock(pair)
        if abort_local:
            pair.local.abort()
        else:
            pair.local.close()
        self._close_if_retired()

    def _flush(self) -> None:
        self._flush_pending = False
        self._unflushed = 0
        if self.transport is None or self.closed:
            return
        chunks = self.conn.chunks_to_send()
        if chunks:
            self.transport.writelines(chunks)

    def _drop_pairs(self) -> None:
        for pair in self._open_pairs():
            pair.local.reset()  # data may be missing: a reset, not a clean end
            self._finish(pair, abort_local=True)

    def _goodbye(self) -> None:
        # client-go's Close: RST every open stream (done by then), GOAWAY, close TCP.
        with contextlib.suppress(ProtocolError):
            self.conn.goaway()

    def _stopped(self, lost: str | None) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()


async def dial(cluster: Cluster, namespace: str, pod: str, hooks: LinkHooks) -> SpdyLink:
    """``POST …/portforward`` with ``Upgrade: SPDY/3.1`` (protocols.md §1.1)."""
    upgraded = await cluster.upgrade_spdy(namespace, pod)
    link = SpdyLink(hooks)
    link.attach(upgraded)
    return link
