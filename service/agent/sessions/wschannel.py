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

Back-pressure is ``pod.PodForwarder``'s, as in the SPDY session: each pod socket has a
bounded write buffer, and while one is over its bound (or a port still dialling holds
too much) the client connection is not read; while the client connection cannot take
more, no pod socket is read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass

from service.agent.dialer import PodDialer
from service.agent.pod import PodConnection, PodEnd, PodForwarder, cause_text
from service.agent.registry import PodEntry
from service.protocols.websocket import (
    CLOSE_NORMAL,
    MAX_MESSAGE_PAYLOAD,
    OPCODE_BINARY,
    OPCODE_TEXT,
    ChannelError,
    ChannelServer,
    ConnectionTerminated,
    DataReceived,
    WebSocketStateError,
    frame_header,
)

log = logging.getLogger("podgate.agent")

#: After the client's Close, how long the pods may take to finish what they send.
CLOSE_GRACE = 5.0


@dataclass(eq=False, slots=True, kw_only=True)
class ChannelPort(PodEnd):
    """One listed port: its channels are ``2 * index`` (data) and ``2 * index + 1`` (error)."""

    index: int


class WsChannelSession(PodForwarder[ChannelPort]):
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
        super().__init__(transport, dialer)
        self.transport: asyncio.Transport = transport
        self.server = server
        self.pod = pod
        self.ports = [ChannelPort(index=i, port=p) for i, p in enumerate(server.ports)]
        self._early = trailing_data
        self._client_closed = False
        self._close_reply = b""  # our answer to the client's Close, sent last
        self._grace: asyncio.TimerHandle | None = None

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
        for port in self.ports:
            self._start_dial(port, f"dial {self.pod.name}:{port.port}")
        early, self._early = self._early, b""
        if early:
            self.receive(early)

    def _ends(self) -> Collection[ChannelPort]:
        return self.ports

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
            if isinstance(event, DataReceived):
                self._client_data(self.ports[event.port_index], event.data)
            elif isinstance(event, ConnectionTerminated):
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
                if port.pod is not None:
                    port.pod.write_eof()
        self._grace = asyncio.get_running_loop().call_later(CLOSE_GRACE, self.close, True)

    def _client_data(self, port: ChannelPort, data: bytes) -> None:
        if port.done:
            return
        pod = port.pod
        if pod is not None:
            pod.transport.write(data)
            return
        self._hold(port, data)

    def client_eof(self) -> None:
        self.close(graceful=True)

    def _write_replies(self) -> None:
        out = self.server.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    # ------------------------------------------------------------ pod side

    def _new_pod(self, port: ChannelPort) -> PodConnection[ChannelPort]:
        # No half-close in v4: the pod's EOF finishes its port.
        return PodConnection(self, port, half_close=False, holds=self.client_reads)

    def _pod_entry(self, port: ChannelPort) -> PodEntry:
        return self.pod

    def _dial_failed(self, port: ChannelPort, exc: Exception) -> None:
        if port.done or self._closed:
            return
        message = (
            f"error forwarding port {port.port} to pod {self.pod.name}, uid {self.pod.uid}: "
            f"{cause_text(exc)}"
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

    def pod_eof(self, port: ChannelPort) -> None:
        self.port_finished(port)

    def pod_lost(self, port: ChannelPort, exc: Exception | None) -> None:
        if exc is not None and not port.done:
            log.info("port %d: pod connection lost: %s", port.port, exc)
        self.port_finished(port)

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
        self._forget(port)
        if port.pod is not None:
            port.pod.transport.close()  # what we already accepted still reaches the pod
        if not self._closed and all(p.done for p in self.ports):
            # Every port finished: Close 1000, then the connection (protocols.md §2).
            self.close(graceful=True)

    # ------------------------------------------------------------ lifecycle

    def goaway(self) -> None:
        """Nothing to announce in v4: the open ports finish or the drain timeout ends them."""

    def close(self, graceful: bool = False) -> None:
        if self._closed:
            return
        self._stop(graceful=graceful)
        if self._grace is not None:
            self._grace.cancel()
        if not self.transport.is_closing():
            if self._close_reply:
                self.transport.write(self._close_reply)
            else:
                with contextlib.suppress(WebSocketStateError):
                    self.transport.write(self.server.close(CLOSE_NORMAL))
            self.transport.close()
        self._drained.set()
