"""The `ws-channel` transport: one v4.channel.k8s.io WebSocket per local connection (§2).

There is no shared upstream connection: every accepted local connection dials its own
WebSocket (`ports=<pod port>`), strips the port prefixes and copies channel 0 both ways.
The protocol has no half-close: when the local client half-closes we close the
WebSocket (code 1000), which the server turns into closing the pod connection.
Error-channel text closes that one connection and is counted, like the SPDY pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.protocols.wschannel import (
    ChannelClient,
    ChannelClosed,
    ChannelData,
    ChannelErrorText,
)
from service.protocols.wstunnel import WebSocketError
from service.runner.link import LocalConnection
from service.upstream import UpstreamError

if TYPE_CHECKING:
    from service.upstream import Cluster

log = logging.getLogger("podgate.runner")

MAX_ERROR_TEXT = 64 * 1024
#: After our Close, how long the server may take to send its last bytes and its Close.
CLOSE_GRACE = 10.0


class ChannelConnection(asyncio.Protocol):
    """The WebSocket of one local connection."""

    def __init__(self, forwarder: ChannelForwarder, local: LocalConnection) -> None:
        self.forwarder = forwarder
        self.local = local
        self.client: ChannelClient | None = None
        self.raw: asyncio.Transport | None = None
        self.error_text = ""
        self.done = False
        self.close_sent = False

    def process(self, events: list[object]) -> None:
        local = self.local
        for event in events:
            if isinstance(event, ChannelData):
                if event.data and local.transport is not None and not local.closed:
                    local.counters.bytes_in += len(event.data)
                    local.transport.write(event.data)
            elif isinstance(event, ChannelErrorText):
                self.error_text = (self.error_text + event.text)[:MAX_ERROR_TEXT]
            elif isinstance(event, ChannelClosed):
                self.forwarder.finished(self)
                return
        if self.client is not None and self.raw is not None and not self.raw.is_closing():
            replies = self.client.data_to_send()
            if replies:
                self.raw.write(replies)

    def data_received(self, data: bytes) -> None:
        assert self.client is not None
        try:
            events: list[object] = list(self.client.receive_data(data))
        except WebSocketError as exc:
            self.error_text = self.error_text or f"WebSocket protocol error: {exc}"
            self.forwarder.finished(self)
            return
        self.process(events)

    def eof_received(self) -> bool:
        self.forwarder.finished(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.forwarder.finished(self)

    def pause_writing(self) -> None:
        if self.local.transport is not None and not self.local.closed:
            self.local.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.local.transport is not None and not self.local.closed:
            self.local.transport.resume_reading()

    def close(self) -> None:
        if self.raw is not None and not self.raw.is_closing():
            if self.client is not None and not self.close_sent:
                with contextlib.suppress(WebSocketError):
                    self.raw.write(self.client.close())
            self.raw.close()

    def half_close(self) -> None:
        """Send Close 1000 but keep reading: the pod's last bytes may still be on their way
        (a podgate agent relays them before its Close; a kubelet closes at once)."""
        if self.close_sent or self.client is None or self.raw is None or self.raw.is_closing():
            return
        self.close_sent = True
        with contextlib.suppress(WebSocketError):
            self.raw.write(self.client.close())
        loop = asyncio.get_running_loop()
        loop.call_later(CLOSE_GRACE, self.forwarder.finished, self)  # bounded wait


class ChannelForwarder:
    """Link-like object for `ForwardSession`: opens a WebSocket per local connection."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        pod: str,
        *,
        on_lost: Callable[[ChannelForwarder, str], None],
        on_connection_error: Callable[[LocalConnection, str], None],
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.pod = pod
        self._on_lost = on_lost
        self._on_connection_error = on_connection_error
        self.connections: set[ChannelConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.lost_reason = ""

    @property
    def usable(self) -> bool:
        return not self.closed

    def open_pair(self, local: LocalConnection) -> None:
        conn = ChannelConnection(self, local)
        local.link = self
        local.pair = conn
        self.connections.add(conn)
        local.counters.connections_total += 1
        local.counters.connections_active += 1
        task = asyncio.get_running_loop().create_task(self._dial(conn), name="ws-channel dial")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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

    # LocalConnection callbacks ---------------------------------------------------

    def local_data(self, conn: ChannelConnection, data: bytes) -> None:
        if conn.done or conn.client is None or conn.raw is None:
            return
        conn.local.counters.bytes_out += len(data)
        conn.raw.write(conn.client.send_data(0, data))

    def local_eof(self, conn: ChannelConnection) -> None:
        # No half-close in v4: Close the WebSocket; the server ends the pod connection.
        conn.half_close()

    def local_lost(self, conn: ChannelConnection) -> None:
        self.finished(conn)

    def block_upstream_reads(self, local: LocalConnection) -> None:
        conn = local.pair
        if isinstance(conn, ChannelConnection) and conn.raw is not None:
            conn.raw.pause_reading()

    def unblock_upstream_reads(self, local: LocalConnection) -> None:
        conn = local.pair
        if isinstance(conn, ChannelConnection) and conn.raw is not None:
            with contextlib.suppress(RuntimeError):
                conn.raw.resume_reading()

    # endings --------------------------------------------------------------------------

    def finished(self, conn: ChannelConnection) -> None:
        if conn.done:
            return
        conn.done = True
        self.connections.discard(conn)
        local = conn.local
        local.counters.connections_active -= 1
        if conn.error_text:
            local.counters.connection_errors += 1
            self._on_connection_error(local, conn.error_text)
            local.abort()
        elif local.transport is not None and not local.closed:
            local.transport.close()
        conn.close()

    def fail(self, reason: str) -> None:
        """Give up on this pod (it is gone, or refused us): close every connection."""
        if not self.closed:
            self.lost_reason = reason
            self.close()
            self._on_lost(self, reason)

    def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.error_text = ""
            self.finished(conn)
