"""The `ws-channel` link: one v4.channel.k8s.io WebSocket per local connection (§2).

There is no shared upstream connection: every accepted local connection dials its own
WebSocket (`ports=<pod port>`), strips the port prefixes and copies channel 0 both ways.
Error-channel text closes that one connection and is counted, like the SPDY pairs.

The protocol has no half-close. When the local client half-closes, the WebSocket stays
open while the pod still sends, and is closed (code 1000) once the pod has been quiet for
the session's linger time (socat's `-t`): a kubelet closes the pod connection as soon as
it gets our Close, so closing at once would cut off the tail of the answer. After our
Close the server's last bytes and its Close are still read, for a bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.aio.tasks import TaskSet
from service.model import Transport
from service.protocols.websocket import (
    CLOSE_NORMAL,
    ChannelClient,
    ConnectionTerminated,
    DataReceived,
    ErrorTextReceived,
    WebSocketError,
)
from service.runner.links.base import LinkHooks, RetiringLink
from service.runner.local import LocalConnection
from service.upstream import Cluster, UpstreamError

log = logging.getLogger("podgate.runner")

MAX_ERROR_TEXT = 64 * 1024
#: After our Close, how long the server may take to send its last bytes and its Close.
CLOSE_GRACE = 10.0


class ChannelConnection(asyncio.Protocol):
    """The WebSocket of one local connection (and its `PairEnd`)."""

    def __init__(self, link: ChannelLink, local: LocalConnection) -> None:
        self.link = link
        self.local = local
        self.client: ChannelClient | None = None
        self.raw: asyncio.Transport | None = None
        self.error_text = ""
        self.broken = False  # the WebSocket itself failed: the local client gets a reset
        self.done = False
        self.local_eof_seen = False
        self.close_sent = False
        self._timer: asyncio.TimerHandle | None = None  # linger, then the close grace

    def process(self, events: list[object]) -> None:
        local = self.local
        for event in events:
            if isinstance(event, DataReceived):
                if event.data and not local.closed:
                    local.counters.bytes_in += len(event.data)
                    local.write(event.data)
                    if self.local_eof_seen and not self.close_sent:
                        self._linger()  # the pod is still answering
            elif isinstance(event, ErrorTextReceived):
                self.error_text = (self.error_text + event.text)[:MAX_ERROR_TEXT]
            elif isinstance(event, ConnectionTerminated):
                if event.error_code != CLOSE_NORMAL and not self.close_sent:
                    self._broken(f"WebSocket closed with code {event.error_code} {event.reason}")
                self._write_replies()  # our Close in answer, before the socket is closed
                self.link.finished(self)
                return
        self._write_replies()

    def _write_replies(self) -> None:
        if self.client is not None and self.raw is not None and not self.raw.is_closing():
            replies = self.client.data_to_send()
            if replies:
                self.raw.write(replies)

    def _broken(self, reason: str) -> None:
        """The WebSocket failed (a protocol error, a Close other than 1000, or none before
        our own): bytes may be missing, so the connection ends in an error."""
        self.broken = True
        self.error_text = self.error_text or reason.strip()

    # asyncio.Protocol: the WebSocket's socket ------------------------------------------

    def data_received(self, data: bytes) -> None:
        assert self.client is not None
        try:
            events: list[object] = list(self.client.receive_data(data))
        except WebSocketError as exc:
            self._broken(f"WebSocket protocol error: {exc}")
            self.link.finished(self)
            return
        self.process(events)

    def eof_received(self) -> bool:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        if not self.done and not self.close_sent:  # no Close came first
            lost = f"connection lost: {exc}" if exc else "closed the connection"
            self._broken(f"upstream {lost} without a WebSocket Close")
        self.link.finished(self)

    def pause_writing(self) -> None:
        self.local.pause_reading()

    def resume_writing(self) -> None:
        self.local.resume_reading()

    # PairEnd: what the local connection calls -----------------------------------------

    def local_data(self, data: bytes) -> None:
        if self.done or self.client is None or self.raw is None:
            return
        self.local.counters.bytes_out += len(data)
        self.raw.write(self.client.send_data(0, data))

    def local_eof(self) -> None:
        if self.done or self.local_eof_seen:
            return
        self.local_eof_seen = True
        self._linger()

    def local_lost(self) -> None:
        self.link.finished(self)

    def block_upstream(self) -> None:
        if self.raw is not None:
            self.raw.pause_reading()

    def unblock_upstream(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(RuntimeError):
                self.raw.resume_reading()

    # endings ---------------------------------------------------------------------------

    def _linger(self) -> None:
        """(Re)start the quiet period after the local EOF; Close once it passes."""
        self._cancel_timer()
        linger = self.link.hooks.linger
        if linger <= 0:
            self._send_close()
            return
        self._timer = asyncio.get_running_loop().call_later(linger, self._send_close)

    def _send_close(self) -> None:
        """Close 1000, then keep reading: the server's last bytes may be on their way."""
        self._cancel_timer()
        if self.done or self.close_sent:
            return
        if self.client is None or self.raw is None or self.raw.is_closing():
            return
        self.close_sent = True
        with contextlib.suppress(WebSocketError):
            self.raw.write(self.client.close())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(CLOSE_GRACE, self.link.finished, self)  # bounded wait

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._cancel_timer()
        if self.raw is not None and not self.raw.is_closing():
            if self.client is not None and not self.close_sent:
                with contextlib.suppress(WebSocketError):
                    self.raw.write(self.client.close())
            self.raw.close()


class ChannelLink(RetiringLink):
    """A `Link` that opens a WebSocket per local connection."""

    kind = Transport.WS_CHANNEL

    def __init__(self, cluster: Cluster, namespace: str, pod: str, hooks: LinkHooks) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.pod = pod
        self.hooks = hooks
        self.connections: set[ChannelConnection] = set()
        self._dials = TaskSet()
        self.closed = False
        self.retiring = False  # no new connections; closed once the open ones end
        self.lost_reason = ""

    def _carrying(self) -> bool:
        return bool(self.connections)

    def open_pair(self, local: LocalConnection) -> None:
        conn = ChannelConnection(self, local)
        local.pair = conn
        self.connections.add(conn)
        local.counters.connections_total += 1
        local.counters.connections_active += 1
        self._dials.start(self._dial(conn), name=f"ws-channel dial {self.pod}:{local.remote_port}")

    async def _dial(self, conn: ChannelConnection) -> None:
        local = conn.local
        try:
            ws = await self.cluster.open_channel(self.namespace, self.pod, [local.remote_port])
        except UpstreamError as exc:
            conn.error_text = str(exc)
            self.finished(conn)
            if exc.status in (401, 403, 404):
                # What every next connection would get too: the session re-dials (and
                # re-resolves its target) instead of failing each connection alone.
                self.fail(str(exc))
            return
        conn.client = ws.client
        conn.raw = ws.transport
        if conn.done or local.closed:
            conn.done = False
            self.finished(conn)
            return
        ws.attach(conn)
        conn.process(list(ws.events))
        if not conn.done:
            local.open_gate()

    def finished(self, conn: ChannelConnection) -> None:
        if conn.done:
            return
        conn.done = True
        self.connections.discard(conn)
        local = conn.local
        local.counters.connections_active -= 1
        if conn.error_text:
            local.counters.connection_errors += 1
            self.hooks.on_connection_error(local, conn.error_text)
            if conn.broken:
                local.reset()  # bytes may be missing: not a clean end (as a lost SPDY link)
            else:
                local.abort()
        else:
            local.close()
        conn.close()
        self._close_if_retired()

    def fail(self, reason: str) -> None:
        """Give up on this pod (it is gone, or refused us): close every connection."""
        if not self.closed:
            self.lost_reason = reason
            self.close()
            self.hooks.on_lost(self, reason)

    def close(self) -> None:
        self.closed = True
        self.retiring = False
        self._dials.cancel()
        for conn in list(self.connections):
            conn.error_text = ""
            self.finished(conn)


async def dial(cluster: Cluster, namespace: str, pod: str, hooks: LinkHooks) -> ChannelLink:
    """No connection is made until a local client comes: ask now whether one may be (the
    API server authorizes ``GET …/portforward`` before it asks for an upgrade)."""
    await cluster.check_portforward(namespace, pod)
    return ChannelLink(cluster, namespace, pod, hooks)
