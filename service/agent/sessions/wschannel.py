"""WebSocket v4 channel port-forward (protocols.md §2), agent side.

One WebSocket carries one pod connection per port of the ``ports`` query: right after
the 101 (and the port prefixes, which ``ChannelServer.accept`` sends) every listed port
is dialled at once. Channel ``2i`` carries data both ways, ``2i+1`` the error text of a
failed dial. A port whose pod connection ends sends nothing to the client; once every
port has finished the agent sends Close 1000 and closes the connection.

The protocol has no half-close, so the client's Close 1000 is taken as one for every
port at once: the pod sockets get ``shutdown(SHUT_WR)`` and what the pods still send is
relayed until each has ended (at most ``CLOSE_GRACE`` seconds), and only then does our
Close answer the client's (RFC 6455 §5.5.1 lets an endpoint send data until it has sent
its own Close). A client that closes its socket right after its Close loses that tail,
as it would with the kubelet, which closes the pod connections within about a second.

Back-pressure, as in the SPDY session: each pod socket has a bounded write buffer, and
while one is over its bound (or a port still dialling holds too much) the client
connection is not read; while the client connection cannot take more, no pod socket is
read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass, field
from typing import cast

from service.agent.dialer import DialError, PodDialer
from service.agent.registry import PodEntry
from service.protocols.wschannel import (
    MAX_MESSAGE_PAYLOAD,
    ChannelClosed,
    ChannelData,
    ChannelError,
    ChannelServer,
)
from service.protocols.wstunnel import (
    CLOSE_NORMAL,
    OPCODE_BINARY,
    OPCODE_TEXT,
    WebSocketStateError,
    frame_header,
)

log = logging.getLogger("podgate.agent")

POD_WRITE_HIGH_WATER = 1024 * 1024
PENDING_LIMIT = 1024 * 1024
#: After the client's Close, how long the pods may take to finish what they send.
CLOSE_GRACE = 5.0


@dataclass(eq=False, slots=True)
class ChannelPort:
    """One listed port: its pod connection and what is waiting for it."""

    index: int
    port: int
    pod: ChannelPodSide | None = None
    pending: list[bytes] = field(default_factory=list)
    pending_size: int = 0
    client_fin: bool = False  # the client sent Close: shutdown(SHUT_WR) once connected
    done: bool = False


class ChannelPodSide(asyncio.Protocol):
    """The pod end of one port: bytes from the pod go out on the port's data channel."""

    def __init__(self, session: WsChannelSession, port: ChannelPort) -> None:
        self.session = session
        self.port = port
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=POD_WRITE_HIGH_WATER)
        if self.session.client_write_paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.session.pod_data(self.port, data)

    def eof_received(self) -> bool:
        # No half-close in v4: the pod finished this port.
        self.session.port_finished(self.port)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.unblock_client_reads(self)
        if exc is not None and not self.port.done:
            log.info("port %d: pod connection lost: %s", self.port.port, exc)
        self.session.port_finished(self.port)

    def pause_writing(self) -> None:
        self.session.block_client_reads(self)

    def resume_writing(self) -> None:
        self.session.unblock_client_reads(self)


class WsChannelSession:
    """Everything that happens on one v4 port-forward WebSocket."""

    def __init__(
        self,
        transport: asyncio.Transport,
        server: ChannelServer,
        pod: PodEntry,
        dialer: PodDialer,
        *,
        trailing_data: bytes = b"",
    ) -> None:
        self.transport = transport
        self.server = server
        self.pod = pod
        self.dialer = dialer
        self.ports = [ChannelPort(i, p) for i, p in enumerate(server.ports)]
        self.client_write_paused = False
        self._early = trailing_data
        self._read_blockers: set[object] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._client_closed = False
        self._close_reply = b""  # our answer to the client's Close, sent last
        self._grace: asyncio.TimerHandle | None = None
        self._drained = asyncio.Event()

    def start(self) -> None:
        """The 101 and the port prefixes, then dial every port at once."""
        self.transport.write(self.server.accept())
        log.info(
            "pod %s/%s: websocket channels (%s) for ports %s",
            self.pod.namespace,
            self.pod.name,
            self.server.selected or "binary, no subprotocol",
            ",".join(str(p) for p in self.server.ports),
        )
        loop = asyncio.get_running_loop()
        for port in self.ports:
            task = loop.create_task(self._dial(port), name=f"dial {self.pod.name}:{port.port}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        early, self._early = self._early, b""
        if early:
            self.receive(early)

    # ------------------------------------------------------------ from the client

    def receive(self, data: bytes) -> None:
        if self._closed or not data:
            return
        try:
            events = self.server.receive_data(data)
        except ChannelError as exc:
            log.info("pod %s/%s: websocket channels: %s", self.pod.namespace, self.pod.name, exc)
            self._write_replies()
            self.close()
            return
        for event in events:
            if isinstance(event, ChannelData):
                self._client_data(self.ports[event.port_index], event.data)
            elif isinstance(event, ChannelClosed):
                if event.clean and not all(p.done for p in self.ports):
                    self._client_close()
                else:
                    self._write_replies()
                    self.close(graceful=True)
                return
        self._write_replies()

    def _client_close(self) -> None:
        """The client's Close 1000: a half-close of every port (see the module doc)."""
        self._client_closed = True
        self._close_reply = self.server.data_to_send()  # held until the pods are done
        for port in self.ports:
            if not port.done:
                port.client_fin = True
                self._pod_write_eof(port)
        self._grace = asyncio.get_running_loop().call_later(CLOSE_GRACE, self.close, True)

    def _pod_write_eof(self, port: ChannelPort) -> None:
        pod = port.pod
        if pod is None or pod.transport is None or not pod.transport.can_write_eof():
            return
        try:
            pod.transport.write_eof()
        except OSError:
            self.port_finished(port)

    def _client_data(self, port: ChannelPort, data: bytes) -> None:
        if port.done:
            return
        pod = port.pod
        if pod is not None and pod.transport is not None:
            pod.transport.write(data)
            return
        port.pending.append(data)
        port.pending_size += len(data)
        if port.pending_size > PENDING_LIMIT:
            self.block_client_reads(port)

    def client_eof(self) -> None:
        self.close(graceful=True)

    def _write_replies(self) -> None:
        out = self.server.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    # ------------------------------------------------------------ back-pressure

    def pause_writing(self) -> None:
        self.client_write_paused = True
        for port in self.ports:
            if port.pod is not None and port.pod.transport is not None:
                port.pod.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_write_paused = False
        for port in self.ports:
            if port.pod is not None and port.pod.transport is not None and not port.done:
                port.pod.transport.resume_reading()

    def block_client_reads(self, reason: object) -> None:
        if not self._read_blockers and not self.transport.is_closing():
            self.transport.pause_reading()
        self._read_blockers.add(reason)

    def unblock_client_reads(self, reason: object) -> None:
        if reason not in self._read_blockers:
            return
        self._read_blockers.discard(reason)
        if not self._read_blockers and not self.transport.is_closing():
            self.transport.resume_reading()

    # ------------------------------------------------------------ pod side

    async def _dial(self, port: ChannelPort) -> None:
        try:
            sock = await self.dialer.dial(self.pod, port.port)
        except DialError as exc:
            self._dial_failed(port, str(exc))
            return
        if port.done or self._closed:
            sock.close()
            return
        loop = asyncio.get_running_loop()
        try:
            _, pod = await loop.create_connection(lambda: ChannelPodSide(self, port), sock=sock)
        except OSError as exc:
            sock.close()
            self._dial_failed(port, str(exc))
            return
        assert pod.transport is not None
        if port.done or self._closed:
            pod.transport.abort()
            return
        port.pod = pod
        if port.pending:
            pod.transport.writelines(port.pending)
            port.pending.clear()
            port.pending_size = 0
            self.unblock_client_reads(port)
        if port.client_fin:
            self._pod_write_eof(port)

    def _dial_failed(self, port: ChannelPort, cause: str) -> None:
        if port.done or self._closed:
            return
        message = (
            f"error forwarding port {port.port} to pod {self.pod.name}, uid {self.pod.uid}: {cause}"
        )
        log.info(message)
        if self._client_closed:
            self.transport.write(self._late_message(2 * port.index + 1, message.encode()))
        else:
            with contextlib.suppress(WebSocketStateError):
                self.transport.write(self.server.send_error(port.index, message))
        self.port_finished(port)

    def pod_data(self, port: ChannelPort, data: bytes) -> None:
        if port.done or self._closed:
            return
        if self._client_closed:
            self.transport.write(self._late_message(2 * port.index, data))
            return
        try:
            self.transport.write(self.server.send_data(port.index, data))
        except WebSocketStateError:
            self.close()

    def _late_message(self, channel: int, data: bytes) -> bytes:
        """Channel messages after the client's Close, framed here: ``ChannelServer``
        refuses to send once a Close was received. Same framing as its ``send_data``."""
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        for start in range(0, len(data), MAX_MESSAGE_PAYLOAD):
            piece = view[start : start + MAX_MESSAGE_PAYLOAD]
            if self.server.base64:
                text = bytes((0x30 + channel,)) + base64.b64encode(piece)
                out += [frame_header(OPCODE_TEXT, len(text), 0), text]
            else:
                out += [frame_header(OPCODE_BINARY, 1 + len(piece), 0), bytes((channel,)), piece]
        return b"".join(out)

    def port_finished(self, port: ChannelPort) -> None:
        if port.done:
            return
        port.done = True
        port.pending.clear()
        self.unblock_client_reads(port)
        if port.pod is not None and port.pod.transport is not None:
            port.pod.transport.close()  # what we already accepted still reaches the pod
        if not self._closed and all(p.done for p in self.ports):
            # Every port finished: Close 1000, then the connection (protocols.md §2).
            self.close(graceful=True)

    # ------------------------------------------------------------ lifecycle

    def goaway(self) -> None:
        """Nothing to announce in v4: the open ports finish or the drain timeout ends them."""

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def close(self, graceful: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        for port in self.ports:
            port.done = True
            port.pending.clear()
            if port.pod is not None and port.pod.transport is not None:
                if graceful:
                    port.pod.transport.close()
                else:
                    port.pod.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._grace is not None:
            self._grace.cancel()
        self._read_blockers.clear()
        if not self.transport.is_closing():
            if self._close_reply:
                self.transport.write(self._close_reply)
            else:
                with contextlib.suppress(WebSocketStateError):
                    self.transport.write(self.server.close(CLOSE_NORMAL))
            self.transport.close()
        self._drained.set()
