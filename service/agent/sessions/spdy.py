"""The node side of SPDY/3.1 port-forward: pair streams, dial the pod, copy bytes.

This follows the kubelet/CRI server sequence (protocols.md §1.5): SYN_REPLY at once for
valid streams, pairing by `requestid`, a pair timeout, the pod dial once both halves
exist, and error text on the error stream (§1.6) when the dial fails. Unlike containerd,
a client half-close becomes shutdown(SHUT_WR) on the pod socket.

Back-pressure: each pod socket has a bounded write buffer; while any pod socket (or a
pair still dialling) is over its bound, we stop reading the client connection, which is
the only back-pressure a Go peer understands (§1.8). When the client connection cannot
take more, every pod socket stops being read.

The session writes to a ``ClientLink``: the client's asyncio transport for plain SPDY,
or a WebSocket tunnel (protocols.md §3, ``sessions/wstunnel.py``) that passes a ``frame_sink``
so that each flush of queued frames becomes one binary message. Bytes from the client
(already unwrapped, for the tunnel) are fed with ``receive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from service.agent.dialer import DialError, PodDialer
from service.agent.registry import PodEntry
from service.protocols.spdy import (
    ConnectionTerminated,
    DataReceived,
    ProtocolError,
    RstStatus,
    SpdyConnection,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
)

log = logging.getLogger("podgate.agent")

POD_WRITE_HIGH_WATER = 1024 * 1024
POD_READ_SIZE = 256 * 1024
PENDING_LIMIT = 1024 * 1024


class ClientLink(Protocol):
    """What the session needs of the client connection (an ``asyncio.Transport`` fits)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


#: Takes every frame queued by one flush (``SpdyConnection.chunks_to_send``).
FrameSink = Callable[[Sequence[bytes | memoryview]], None]


@dataclass(eq=False, slots=True)
class StreamPair:
    """One forwarded connection: an error stream and a data stream sharing a requestid."""

    request_id: str
    error_sid: int | None = None
    data_sid: int | None = None
    port: int = 0
    timer: asyncio.TimerHandle | None = None
    pod: PodSide | None = None
    pending: list[bytes] = field(default_factory=list)
    pending_size: int = 0
    client_fin: bool = False
    pod_eof: bool = False
    dialing: bool = False
    done: bool = False

    @property
    def complete(self) -> bool:
        return self.error_sid is not None and self.data_sid is not None


class PodSide(asyncio.Protocol):
    """The pod end of one pair: bytes from the pod become DATA on the pair's data stream."""

    def __init__(self, session: SpdyPortForwardSession, pair: StreamPair) -> None:
        self.session = session
        self.pair = pair
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=POD_WRITE_HIGH_WATER)
        if self.session.client_write_paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.session.pod_data(self.pair, data)

    def eof_received(self) -> bool:
        self.session.pod_eof(self.pair)
        return True  # keep our write side open: a real half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.pod_lost(self.pair, exc)

    def pause_writing(self) -> None:
        self.session.block_client_reads(self)

    def resume_writing(self) -> None:
        self.session.unblock_client_reads(self)


class SpdyPortForwardSession:
    """Everything that happens on one upgraded client connection."""

    def __init__(
        self,
        transport: ClientLink,
        pod: PodEntry,
        dialer: PodDialer,
        *,
        stream_creation_timeout: float = 30.0,
        on_closed: Callable[[SpdyPortForwardSession], None] | None = None,
        frame_sink: FrameSink | None = None,
    ) -> None:
        self.transport = transport
        self._frame_sink = frame_sink
        # An asyncio transport has writelines (a ClientLink need not): frames go out uncopied.
        self._writelines: Callable[[Sequence[bytes | memoryview]], None] | None = getattr(
            transport, "writelines", None
        )
        self.pod = pod
        self.dialer = dialer
        self.stream_creation_timeout = stream_creation_timeout
        self.conn = SpdyConnection(client_side=False)
        self.pairs: dict[str, StreamPair] = {}
        self.by_stream: dict[int, StreamPair] = {}
        self.client_write_paused = False
        self._read_blockers: set[object] = set()
        self._closed = False
        self._on_closed = on_closed
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- client side

    def receive(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            log.warning("pod %s/%s: closing connection: %s", self.pod.namespace, self.pod.name, exc)
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, StreamOpened):
                self._stream_opened(event)
            elif isinstance(event, DataReceived):
                self._data_received(event)
            elif isinstance(event, StreamEnded):
                self._stream_ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._stream_reset(event.stream_id)
            elif isinstance(event, StreamRejected):
                log.info("stream %d rejected: %s", event.stream_id, event.error)
                # The SPDY layer has already sent RST_STREAM and forgotten the stream
                # (e.g. DATA after the client's FIN). Treat it as a reset from the
                # client; otherwise the pair keeps sending on a dead stream and the
                # StreamStateError kills the pod transport from inside data_received.
                self._stream_reset(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.flush()
                self.close()
                return
        self.flush()

    def client_eof(self) -> None:
        self.close()

    def flush(self) -> None:
        if self._frame_sink is not None:
            if self.conn.has_data_to_send:
                chunks = self.conn.chunks_to_send()
                if not self.transport.is_closing():
                    self._frame_sink(chunks)
            return
        writelines = self._writelines
        if writelines is not None:
            # writelines, not data_to_send(): the join copied every 256 KiB payload once more.
            chunks = self.conn.chunks_to_send()
            if chunks and not self.transport.is_closing():
                writelines(chunks)
            return
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.client_write_paused = True
        for pair in self.pairs.values():
            if pair.pod is not None and pair.pod.transport is not None:
                pair.pod.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_write_paused = False
        for pair in self.pairs.values():
            if pair.pod is not None and pair.pod.transport is not None and not pair.pod_eof:
                pair.pod.transport.resume_reading()

    def block_client_reads(self, reason: object) -> None:
        if not self._read_blockers and not self.transport.is_closing():
            self.transport.pause_reading()
        self._read_blockers.add(reason)

    def unblock_client_reads(self, reason: object) -> None:
        self._read_blockers.discard(reason)
        if not self._read_blockers and not self.transport.is_closing():
            self.transport.resume_reading()

    def _stream_opened(self, event: StreamOpened) -> None:
        sid, headers = event.stream_id, event.headers
        stream_type = headers.get("streamtype", "")
        port_text = headers.get("port", "")
        # ASCII digits only, like Go's strconv.ParseUint: str.isdigit() also accepts
        # characters such as "²" that int() rejects (a ValueError here used to tear
        # down the whole connection) or reads as another digit (U+0661 is 1).
        valid = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        port = int(port_text) if valid else 0
        # A UNIDIRECTIONAL stream can never carry our bytes, and replying to it raises
        # StreamStateError (which used to tear down the whole connection): refuse it.
        if stream_type not in ("error", "data") or not 0 < port < 65536 or event.unidirectional:
            # The kubelet refuses such a stream with a bare RST; the reason is only logged.
            log.info(
                "stream %d refused: streamtype=%r port=%r unidirectional=%s",
                sid,
                stream_type,
                port_text,
                event.unidirectional,
            )
            self.conn.reset_stream(sid, RstStatus.CANCEL)
            return
        self.conn.send_reply(sid)
        request_id = headers.get("requestid")
        if request_id is None:  # pre-2016 clients: derive it as the kubelet does
            request_id = str(sid if stream_type == "error" else sid - 2)
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = StreamPair(request_id)
            self.pairs[request_id] = pair
            self._drained.clear()
            pair.timer = asyncio.get_running_loop().call_later(
                self.stream_creation_timeout, self._pair_timed_out, pair
            )
        if stream_type == "error":
            if pair.error_sid is not None:
                self._duplicate(pair, sid, "error")
                return
            pair.error_sid = sid
        else:
            if pair.data_sid is not None:
                self._duplicate(pair, sid, "data")
                return
            pair.data_sid = sid
            pair.port = port
        self.by_stream[sid] = pair
        if pair.complete and not pair.dialing:
            if pair.timer is not None:
                pair.timer.cancel()
                pair.timer = None
            pair.dialing = True
            task = asyncio.get_running_loop().create_task(
                self._dial(pair), name=f"dial {self.pod.name}:{pair.port} req={request_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _duplicate(self, pair: StreamPair, sid: int, kind: str) -> None:
        message = (
            f"error processing stream for request {pair.request_id}: {kind} stream already assigned"
        )
        log.info(message)
        self.conn.reset_stream(sid, RstStatus.CANCEL)
        if pair.error_sid is not None:
            self.conn.send_data(pair.error_sid, message.encode())

    def _pair_timed_out(self, pair: StreamPair) -> None:
        pair.timer = None
        if pair.complete or pair.done:
            return
        message = f"(conn={id(self):#x}, request={pair.request_id}) timed out waiting for streams"
        log.info(message)
        if pair.error_sid is not None:
            self.conn.send_data(pair.error_sid, message.encode())
        self._abort(pair)
        self.flush()

    def _data_received(self, event: DataReceived) -> None:
        pair = self.by_stream.get(event.stream_id)
        if pair is None or pair.done or event.stream_id != pair.data_sid or not event.data:
            return  # the error stream carries nothing from the client
        pod = pair.pod
        if pod is not None and pod.transport is not None:
            pod.transport.write(event.data)
            return
        pair.pending.append(event.data)
        pair.pending_size += len(event.data)
        if pair.pending_size > PENDING_LIMIT:
            self.block_client_reads(pair)

    def _stream_ended(self, sid: int) -> None:
        pair = self.by_stream.get(sid)
        if pair is None or pair.done or sid != pair.data_sid:
            return
        pair.client_fin = True
        self._pod_write_eof(pair)
        self._maybe_finish(pair)

    def _pod_write_eof(self, pair: StreamPair) -> None:
        """The client's half-close becomes shutdown(SHUT_WR) on the pod socket."""
        pod = pair.pod
        if pod is None or pod.transport is None or not pod.transport.can_write_eof():
            return
        try:
            pod.transport.write_eof()
        except OSError as exc:
            # The pod socket is already dead (the pod closed it and our last write drew
            # an RST): asyncio's write_eof raises ENOTCONN from shutdown(2). Raised from
            # here it escaped data_received and killed the whole *client* connection,
            # every pair on it, without a trace. It only concerns this pair.
            self.pod_lost(pair, exc)

    def _stream_reset(self, sid: int) -> None:
        pair = self.by_stream.get(sid)
        if pair is None or pair.done:
            return
        # client-go resets the data stream once it has what it wants: a normal end.
        self.by_stream.pop(sid, None)
        if sid == pair.data_sid:
            pair.data_sid = None
            self._finish(pair, end_error_stream=True)
        else:
            pair.error_sid = None
            self._abort(pair)

    # -------------------------------------------------------------------- pod side

    async def _dial(self, pair: StreamPair) -> None:
        try:
            sock = await self.dialer.dial(self.pod, pair.port)
        except DialError as exc:
            self._dial_failed(pair, str(exc))
            return
        if pair.done or self._closed:
            sock.close()
            return
        loop = asyncio.get_running_loop()
        try:
            _, pod = await loop.create_connection(lambda: PodSide(self, pair), sock=sock)
        except OSError as exc:
            sock.close()
            self._dial_failed(pair, str(exc))
            return
        pair.pod = pod
        assert pod.transport is not None
        if pair.done:
            pod.transport.abort()
            return
        if pair.pending:
            pod.transport.writelines(pair.pending)
            pair.pending.clear()
            pair.pending_size = 0
            self.unblock_client_reads(pair)
        if pair.client_fin:
            self._pod_write_eof(pair)

    def _dial_failed(self, pair: StreamPair, cause: str) -> None:
        if pair.done:
            return
        message = (
            f"error forwarding port {pair.port} to pod {self.pod.name}, uid {self.pod.uid}: {cause}"
        )
        log.info(message)
        if pair.error_sid is not None:
            self.conn.send_data(pair.error_sid, message.encode())
        self._abort(pair)
        self.flush()

    def _error_text(self, pair: StreamPair, cause: str) -> str:
        """The kubelet's wording (protocols.md §1.6), which clients show to users."""
        return (
            f"error forwarding port {pair.port} to pod {self.pod.name}, uid {self.pod.uid}: {cause}"
        )

    def pod_data(self, pair: StreamPair, data: bytes) -> None:
        if pair.done or pair.data_sid is None:
            return
        self.conn.send_data(pair.data_sid, data)
        self.flush()

    def pod_eof(self, pair: StreamPair) -> None:
        if pair.done or pair.pod_eof:
            return
        pair.pod_eof = True
        if pair.data_sid is not None:
            self.conn.end_stream(pair.data_sid)
        self._maybe_finish(pair)
        self.flush()

    def pod_lost(self, pair: StreamPair, exc: Exception | None) -> None:
        self.unblock_client_reads(pair.pod)
        if pair.done:
            return
        # Once the pod has sent EOF its reply is complete; a later EPIPE/ECONNRESET only
        # says that it closed its socket and takes no more input (e.g. a server that
        # closes after answering). That is a normal end, not a forwarding error: text
        # on the error stream makes client-go drop the whole session ("lost connection
        # to pod"), and containerd only logs such copy errors.
        if exc is not None and not pair.pod_eof:
            message = self._error_text(pair, f"read from pod: {exc}")
            if pair.error_sid is not None:
                self.conn.send_data(pair.error_sid, message.encode())
            self._abort(pair)
        else:
            if not pair.pod_eof:
                self.pod_eof(pair)
            self._finish(pair, end_error_stream=True)
        self.flush()

    # ------------------------------------------------------------------- endings

    def _maybe_finish(self, pair: StreamPair) -> None:
        if pair.client_fin and pair.pod_eof:
            self._finish(pair, end_error_stream=True)

    def _finish(self, pair: StreamPair, *, end_error_stream: bool) -> None:
        if pair.done:
            return
        if pair.data_sid is not None and not pair.pod_eof:
            # The client is gone from this pair before the pod finished: stop the pod.
            self.conn.reset_stream(pair.data_sid, RstStatus.CANCEL)
        if end_error_stream and pair.error_sid is not None:
            self.conn.end_stream(pair.error_sid)
        self._forget(pair)
        if pair.pod is not None and pair.pod.transport is not None:
            pair.pod.transport.close()

    def _abort(self, pair: StreamPair) -> None:
        if pair.done:
            return
        for sid in (pair.data_sid, pair.error_sid):
            if sid is not None:
                self.conn.reset_stream(sid, RstStatus.CANCEL)
        self._forget(pair)
        if pair.pod is not None and pair.pod.transport is not None:
            pair.pod.transport.abort()

    def _forget(self, pair: StreamPair) -> None:
        pair.done = True
        if pair.timer is not None:
            pair.timer.cancel()
            pair.timer = None
        self.unblock_client_reads(pair)
        pair.pending.clear()
        self.pairs.pop(pair.request_id, None)
        for sid in (pair.error_sid, pair.data_sid):
            if sid is not None:
                self.by_stream.pop(sid, None)
        if not self.pairs:
            self._drained.set()

    # ------------------------------------------------------------------ lifecycle

    def goaway(self) -> None:
        """Tell the client no new streams will be accepted (graceful shutdown)."""
        if not self._closed:
            with contextlib.suppress(ProtocolError):
                self.conn.goaway()
            self.flush()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pair in list(self.pairs.values()):
            self._forget(pair)
            if pair.pod is not None and pair.pod.transport is not None:
                pair.pod.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        self._read_blockers.clear()
        if not self.transport.is_closing():
            self.transport.close()
        if self._on_closed is not None:
            self._on_closed(self)
