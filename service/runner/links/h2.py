"""The `h2` link: podgate's own HTTP/2 link to a podgate agent (protocols.md §5.2).

One HTTP/2 stream per half of a pair. Unlike SPDY, flow control is real and per stream:
data received for a local connection is acknowledged (the window handed back) only once
it is written to the local socket, so one slow local reader stalls its own stream only.
Local bytes are sent as the peer's windows allow; the rest waits for `WindowOpened`
with that local socket's reading paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from service.aio.sockets import set_nodelay
from service.model import Transport
from service.protocols.h2 import (
    AGENT_PATH,
    ConnectionTerminated,
    DataReceived,
    H2PairClient,
    PairLimitReached,
    PairProtocolError,
    PairStateError,
    PingAcknowledged,
    StreamEnded,
    StreamReplied,
    StreamReset,
    WindowOpened,
    agent_identity,
)
from service.runner.keepalive import Keepalive
from service.runner.links.base import LinkHooks, LinkPair, MultiplexedLink
from service.runner.local import LocalConnection
from service.upstream import (
    DEFAULT_TIMEOUT,
    Cluster,
    Endpoint,
    UpstreamError,
    describe_http_error,
)

log = logging.getLogger("podgate.runner")

MAX_ERROR_TEXT = 64 * 1024
MAX_HANDSHAKE_BODY = 64 * 1024
BULK = 256 * 1024  # queued local payload that is written at once, not at the loop turn's end
UPSTREAM_WRITE_HIGH_WATER = 4 * 1024 * 1024


@dataclass(eq=False, slots=True)
class H2Pair(LinkPair):
    """The error and data streams of one local connection."""

    link: H2Link
    error_sid: int
    data_sid: int
    local: LocalConnection
    # Local bytes waiting for window, as read (send_data queues them without a copy).
    backlog: deque[bytes | memoryview] = field(default_factory=deque)
    local_ended: bool = False  # the local client half-closed (END_STREAM once backlog is out)
    remote_fin: bool = False
    unacked: int = 0  # received and written while the local socket was above high water
    held: int = 0  # flow-controlled bytes of this upstream read, written at its end
    local_blocked: bool = False
    status: int = 0
    error_text: str = ""
    done: bool = False

    # PairEnd: what the local connection calls (data, EOF, loss: LinkPair)
    def block_upstream(self) -> None:
        self.local_blocked = True  # stop crediting this stream only

    def unblock_upstream(self) -> None:
        self.link.unblock(self)


@dataclass(slots=True)
class AgentHandshake:
    """The answer to ``GET /v1/agent`` (the h2 link is used only once it proved to be a
    podgate agent's)."""

    stream_id: int
    status: int = 0
    body: bytearray = field(default_factory=bytearray)


class H2Link(MultiplexedLink, asyncio.Protocol):
    """One HTTP/2 connection multiplexing many pairs."""

    kind = Transport.H2

    def __init__(self, namespace: str, pod: str, hooks: LinkHooks) -> None:
        self.namespace = namespace
        self.pod = pod
        self._hooks = hooks
        self.client: H2PairClient | None = None
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[str, str]] = []
        self.pairs: dict[int, H2Pair] = {}
        self._waiting: deque[LocalConnection] = deque()  # accepted at the stream limit
        # Pairs whose local bytes wait for window (an ordered set): what a connection-wide
        # WINDOW_UPDATE may unblock, without walking every pair.
        self._stalled: dict[H2Pair, None] = {}
        # Payloads of one upstream read, per pair: each local socket gets one write (and
        # each stream one acknowledgement) per read, not one per DATA frame.
        self._held: dict[H2Pair, list[bytes | memoryview]] = {}
        self._next_request_id = 0
        self._write_paused = False
        self._flush_pending = False
        self._unflushed = 0  # local payload bytes queued since the last flush
        self.keepalive = Keepalive(
            hooks.keepalive,
            send_ping=self._send_ping,
            on_dead=lambda: self._lose("upstream stopped answering HTTP/2 pings"),
        )
        self.closed = False
        self.retiring = False  # no new pairs; closed once the open ones end
        self.lost_reason = ""
        self._handshake: AgentHandshake | None = None
        self._verified: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # Why: a link lost before anyone awaited the handshake must not log "never retrieved".
        self._verified.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._server = ""

    def attach(
        self,
        transport: asyncio.Transport,
        *,
        authority: str,
        scheme: str,
        headers: list[tuple[str, str]],
    ) -> None:
        self.transport = transport
        self.headers = [(k.lower(), v) for k, v in headers]
        self.client = H2PairClient(authority, scheme)
        self._server = f"{scheme}://{authority}"
        transport.set_protocol(self)
        transport.set_write_buffer_limits(high=UPSTREAM_WRITE_HIGH_WATER)
        set_nodelay(transport)
        preface = self.client.initiate()
        self._handshake = AgentHandshake(self.client.query_agent(self.headers))
        transport.writelines([preface, *self.client.buffers_to_send()])
        transport.resume_reading()
        self.keepalive.start()

    async def verified(self, timeout: float) -> str:
        """Wait for the agent handshake; return the agent's version. Raises UpstreamError
        (not retryable) when the server is not a podgate agent, retryable ones when the
        connection is lost or the answer does not come within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._verified)
        except TimeoutError:
            raise UpstreamError(
                f"{self._server} did not answer the podgate agent handshake "
                f"(GET {AGENT_PATH}) within {timeout:g} s"
            ) from None

    def _handshake_event(self, event: object) -> bool:
        """Consume an event of the handshake stream; True when it was one."""
        hello = self._handshake
        if hello is None or getattr(event, "stream_id", None) != hello.stream_id:
            return False
        assert self.client is not None
        if isinstance(event, StreamReplied):
            hello.status = event.status
        elif isinstance(event, DataReceived):
            self.client.acknowledge(hello.stream_id, event.flow_controlled_length)
            room = MAX_HANDSHAKE_BODY - len(hello.body)
            hello.body += bytes(event.data[:room])
        elif isinstance(event, StreamEnded | StreamReset):
            self._handshake = None
            self._judge_handshake(hello, reset=isinstance(event, StreamReset))
        return True

    def _judge_handshake(self, hello: AgentHandshake, *, reset: bool) -> None:
        if self._verified.done():
            return
        version = None if reset else agent_identity(hello.status, bytes(hello.body))
        if version is not None:
            self._verified.set_result(version)
            return
        if reset and not hello.status:
            answer = "reset the handshake stream"
        else:
            answer = "answered " + describe_http_error(hello.status, "", bytes(hello.body), 300)
        self._verified.set_exception(
            UpstreamError(
                f"{self._server} is not a podgate agent: GET {AGENT_PATH} {answer} "
                "(the h2 transport needs `podgate agent` as the server)",
                retryable=False,
            )
        )

    def retire(self, reason: str) -> None:
        if not (self.retiring or self.closed):
            self._abort_waiting()  # never sent upstream; they would wait for a link that ends
        super().retire(reason)

    def _abort_waiting(self) -> None:
        while self._waiting:
            self._waiting.popleft().abort()

    def _drain(self) -> None:
        """The agent sent a graceful GOAWAY (it is shutting down): the pairs it accepted
        finish here, new connections go to the session's next link; then this one closes."""
        if self.retiring or self.closed:
            return
        open_pairs = len(set(self.pairs.values()))
        reason = f"upstream sent GOAWAY; draining {open_pairs} connection(s)"
        self.retire(reason)
        self._hooks.on_lost(self, reason)

    # keepalive ------------------------------------------------------------------------

    def _send_ping(self) -> None:
        if self.client is not None:
            self.client.ping()
            self._flush()

    # local side -----------------------------------------------------------------------

    def open_pair(self, local: LocalConnection) -> None:
        assert self.client is not None
        request_id = self._next_request_id
        try:
            error_sid, data_sid = self.client.open_pair(
                self.namespace, self.pod, local.remote_port, request_id, self.headers
            )
        except PairLimitReached:
            # At the agent's stream limit: the connection waits, unread, for pairs to end.
            self._waiting.append(local)
            return
        except (PairStateError, PairProtocolError, ValueError) as exc:
            log.info("cannot open HTTP/2 streams: %s", exc)
            local.abort()
            return
        self._next_request_id += 1
        pair = H2Pair(self, error_sid, data_sid, local)
        self.pairs[error_sid] = pair
        self.pairs[data_sid] = pair
        local.pair = pair
        local.counters.connections_total += 1
        local.counters.connections_active += 1
        self._flush_soon()
        local.open_gate()  # data may flow at once: the agent credits it only once written
        if self._write_paused:
            local.pause_reading()

    def local_data(self, pair: H2Pair, data: bytes) -> None:
        if pair.done:
            return
        pair.local.counters.bytes_out += len(data)
        pair.backlog.append(data)
        if not self._send_backlog(pair):
            pair.local.pause_reading()  # bounded: wait for the peer's window
        self._unflushed += len(data)
        # Bulk data goes out at once (the write buffer's back-pressure must see it).
        if self._unflushed >= BULK:
            self._flush()
        else:
            self._flush_soon()

    def _send_backlog(self, pair: H2Pair) -> bool:
        """Send queued local bytes as the windows allow; True once all are out."""
        assert self.client is not None
        backlog = pair.backlog
        while backlog:
            chunk = backlog[0]
            try:
                sent = self.client.send_data(pair.data_sid, chunk)
            except PairStateError:
                sent = len(chunk)  # the stream is gone; its end is reported by events
            if sent < len(chunk):
                backlog[0] = memoryview(chunk)[sent:]
                self._stalled[pair] = None
                return False
            backlog.popleft()
        self._stalled.pop(pair, None)
        return True

    def local_eof(self, pair: H2Pair) -> None:
        if pair.done or pair.local_ended:
            return
        pair.local_ended = True
        self._end_if_drained(pair)
        self._flush_soon()

    def _end_if_drained(self, pair: H2Pair) -> None:
        assert self.client is not None
        if pair.local_ended and not pair.backlog and self.client.can_send(pair.data_sid):
            with contextlib.suppress(PairStateError):
                self.client.end_stream(pair.data_sid)
            self._maybe_finish(pair)

    def local_lost(self, pair: H2Pair) -> None:
        if not pair.done:
            self._finish(pair, abort_local=False)
            self._flush_soon()

    def unblock(self, pair: H2Pair) -> None:
        """The local socket drained: credit what it was written meanwhile."""
        if pair.local_blocked:
            pair.local_blocked = False
            if pair.unacked and self.client is not None:
                self.client.acknowledge(pair.data_sid, pair.unacked)
                pair.unacked = 0
                self._flush_soon()

    # upstream side --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed or self.client is None:
            return
        try:
            events = self.client.receive_data(data)
        except PairProtocolError as exc:
            self._flush()
            self._lose(f"HTTP/2 protocol error from upstream: {exc}")
            return
        for event in events:
            if self._handshake is not None and self._handshake_event(event):
                continue
            if type(event) is DataReceived:
                self._data(event)
                continue
            if self._held:
                self._write_held()  # keep order: data reaches the local side before FIN/RST
            if isinstance(event, StreamReplied):
                self._response(event)
            elif isinstance(event, StreamEnded):
                self._ended(event.stream_id)
            elif isinstance(event, StreamReset):
                self._reset(event.stream_id)
            elif isinstance(event, WindowOpened):
                self._window_opened(event.stream_id)
            elif isinstance(event, PingAcknowledged):
                self.keepalive.answered()
            elif isinstance(event, ConnectionTerminated):
                if event.error_code:
                    self._lose(f"upstream sent GOAWAY (code {event.error_code})")
                    return
                self._drain()
        if self._held:
            self._write_held()
        if self._waiting:
            self._open_waiting()
        self._flush()

    def _open_waiting(self) -> None:
        """Streams may have closed: open pairs for connections queued at the limit."""
        assert self.client is not None
        while self._waiting and self.client.can_open_pair():
            local = self._waiting.popleft()
            if not local.closed:
                self.open_pair(local)

    def _data(self, event: DataReceived) -> None:
        assert self.client is not None
        pair = self.pairs.get(event.stream_id)
        if pair is None or pair.done:
            self.client.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        if event.stream_id == pair.error_sid:
            text = bytes(event.data).decode("utf-8", "replace")
            pair.error_text = (pair.error_text + text)[:MAX_ERROR_TEXT]
            self.client.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        local = pair.local
        if local.closed:
            self.client.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        local.counters.bytes_in += len(event.data)
        chunks = self._held.get(pair)
        if chunks is None:
            chunks = self._held[pair] = []
        if event.data:
            chunks.append(event.data)
        pair.held += event.flow_controlled_length

    def _write_held(self) -> None:
        """Write what this read brought for each pair, then acknowledge it: at once, or
        once the local socket drains if it is above its high water mark."""
        assert self.client is not None
        held, self._held = self._held, {}
        for pair, chunks in held.items():
            flow, pair.held = pair.held, 0
            local = pair.local
            if pair.done or local.closed:
                self.client.acknowledge(pair.data_sid, flow)  # dropped, still credited
                continue
            if len(chunks) == 1:
                local.write(chunks[0])
            elif chunks:
                local.writelines(chunks)
            if pair.local_blocked:
                pair.unacked += flow  # credited once the socket drains
            else:
                self.client.acknowledge(pair.data_sid, flow)

    def _response(self, event: StreamReplied) -> None:
        pair = self.pairs.get(event.stream_id)
        if pair is not None and event.stream_id == pair.data_sid:
            pair.status = event.status

    def _ended(self, sid: int) -> None:
        pair = self.pairs.get(sid)
        if pair is None or pair.done:
            return
        if sid == pair.error_sid:
            if pair.error_text:
                self._failed(pair)
            return
        if pair.status != 200:
            return  # a refused data stream; the reason comes on the error stream
        pair.remote_fin = True
        pair.local.write_eof()
        self._maybe_finish(pair)

    def _reset(self, sid: int) -> None:
        pair = self.pairs.get(sid)
        if pair is None or pair.done:
            return
        if pair.error_text:
            self._failed(pair)
        else:
            self._finish(pair, abort_local=True)

    def _failed(self, pair: H2Pair) -> None:
        pair.local.counters.connection_errors += 1
        self._hooks.on_connection_error(pair.local, pair.error_text)
        self._finish(pair, abort_local=True)

    def _window_opened(self, sid: int) -> None:
        assert self.client is not None
        targets = list(self._stalled) if sid == 0 else [self.pairs.get(sid)]
        for pair in targets:
            if sid == 0 and self.client.connection_window() <= 0:
                break  # the rest wait for the next one
            if pair is None or pair.done or not pair.backlog:
                continue
            if self._send_backlog(pair):
                if not pair.local_ended:
                    pair.local.resume_reading()
                self._end_if_drained(pair)

    # endings --------------------------------------------------------------------------

    def _maybe_finish(self, pair: H2Pair) -> None:
        if pair.remote_fin and pair.local_ended and not pair.backlog:
            pair.local.close()

    def _finish(self, pair: H2Pair, *, abort_local: bool) -> None:
        if pair.done:
            return
        pair.done = True
        self._stalled.pop(pair, None)
        assert self.client is not None
        for sid in (pair.data_sid, pair.error_sid):
            if self.client.can_send(sid):
                with contextlib.suppress(PairStateError):
                    self.client.reset_stream(sid)
            self.pairs.pop(sid, None)
        if pair.unacked:
            self.client.acknowledge(pair.data_sid, pair.unacked)
        self.client.release(pair.data_sid, pair.error_sid)
        pair.local.counters.connections_active -= 1
        if abort_local:
            pair.local.abort()
        else:
            pair.local.close()
        if self._waiting:
            self._open_waiting()
        self._close_if_retired()

    def _flush(self) -> None:
        self._flush_pending = False
        self._unflushed = 0
        if self.transport is None or self.client is None or self.closed:
            return
        data = self.client.buffers_to_send()
        if data:
            self.transport.writelines(data)

    def pause_writing(self) -> None:
        self._write_paused = True
        for pair in set(self.pairs.values()):
            pair.local.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        for pair in set(self.pairs.values()):
            if not pair.backlog and not pair.local_ended:
                pair.local.resume_reading()

    def _drop_pairs(self) -> None:
        # No stream is reset: the connection they were on is gone.
        for pair in self._open_pairs():
            pair.done = True
            pair.local.counters.connections_active -= 1
            pair.local.reset()  # data may be missing: a reset, not a clean end
        self.pairs.clear()
        self._stalled.clear()
        self._abort_waiting()

    def _goodbye(self) -> None:
        self._abort_waiting()
        if self.client is not None:
            with contextlib.suppress(PairStateError, PairProtocolError):
                self.client.close()

    def _stopped(self, lost: str | None) -> None:
        if self._verified.done():
            return
        if lost is None:
            self._verified.cancel()
        else:
            self._verified.set_exception(UpstreamError(lost))


async def dial(cluster: Cluster, namespace: str, pod: str, hooks: LinkHooks) -> H2Link:
    """h2c with prior knowledge on http://, ALPN h2 on https://; usable only once the
    server proved to be a podgate agent (``GET /v1/agent``)."""
    transport, headers = await cluster.connect_h2()
    endpoint = Endpoint.parse(cluster.server)
    link = H2Link(namespace, pod, hooks)
    link.attach(
        transport,
        authority=endpoint.host_header,
        scheme="https" if endpoint.tls else "http",
        headers=headers,
    )
    try:
        await link.verified(DEFAULT_TIMEOUT)
    except BaseException:
        link.close()
        raise
    return link
