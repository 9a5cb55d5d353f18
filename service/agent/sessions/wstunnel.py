"""SPDY/3.1 port-forward tunnelled inside a WebSocket (protocols.md §3), agent side.

After the 101 selecting ``SPDY/3.1+portforward.k8s.io`` the concatenated payloads of the
client's binary messages are the SPDY byte stream; message boundaries mean nothing
(``protocols.websocket.TunnelServer`` reassembles them). The SPDY session of
``sessions/spdy.py`` runs unchanged on top: it is fed the unwrapped bytes, and each flush
of its queued frames goes out as one binary message (``TunnelServer.send_pieces``), so a
frame is never split across messages.

A text message, a bad frame (e.g. an unmasked client frame) or a Close other than 1000
ends the session (our Close frame is sent first); Close 1000 is the client's EOF.
Back-pressure is the SPDY session's: it pauses reading the client connection when a
pod socket is full, and stops reading the pods while the client connection is paused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from service.agent.dialer import PodDialer
from service.agent.registry import PodEntry
from service.agent.sessions.spdy import SpdyPortForwardSession
from service.protocols.websocket import (
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    SPDY_TUNNEL_PROTOCOL,
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    TunnelError,
    TunnelServer,
    WebSocketStateError,
)

log = logging.getLogger("podgate.agent")


class WsTunnelSession:
    """One upgraded client connection carrying tunnelled SPDY.

    It is also the SPDY session's ``ClientLink``: writes become binary messages and
    ``close`` sends our Close frame before closing the connection.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        request: RequestReceived,
        pod: PodEntry,
        dialer: PodDialer,
        *,
        trailing_data: bytes = b"",
        stream_creation_timeout: float = 30.0,
    ) -> None:
        self.transport = transport
        self.pod = pod
        # Bytes that came behind the request are fed after accept(): TunnelServer would
        # only parse them on its next receive_data, and b"" there means EOF.
        self.tunnel = TunnelServer(request)
        self._early = trailing_data
        self.spdy = SpdyPortForwardSession(
            self,
            pod,
            dialer,
            stream_creation_timeout=stream_creation_timeout,
            frame_sink=self._send_frames,
        )
        self._closed = False

    def start(self) -> None:
        """Send the 101, then parse whatever the client sent behind its request."""
        self.transport.write(self.tunnel.accept(SPDY_TUNNEL_PROTOCOL))
        peer = self.transport.get_extra_info("peername")
        log.info(
            "pod %s/%s: websocket tunnel (%s) from %s",
            self.pod.namespace,
            self.pod.name,
            SPDY_TUNNEL_PROTOCOL,
            peer,
        )
        early, self._early = self._early, b""
        if early:
            self.receive(early)

    # ------------------------------------------------------------ from the client

    def receive(self, data: bytes) -> None:
        if self._closed:
            return
        if not data:
            return  # b"" would mean EOF to TunnelServer
        try:
            events = self.tunnel.receive_data(data)
        except TunnelError as exc:
            log.info("pod %s/%s: websocket tunnel: %s", self.pod.namespace, self.pod.name, exc)
            self._write_replies()
            self.spdy.close()
            return
        for event in events:
            if isinstance(event, DataReceived):
                self.spdy.receive(event.data)
            elif isinstance(event, ConnectionTerminated):
                self._write_replies()
                if not event.clean:
                    log.info(
                        "pod %s/%s: websocket tunnel closed with %d %s",
                        self.pod.namespace,
                        self.pod.name,
                        event.error_code,
                        event.reason,
                    )
                self.spdy.client_eof()
                return
            if self._closed:
                return
        self._write_replies()

    def client_eof(self) -> None:
        if not self._closed:
            self.spdy.client_eof()  # TCP EOF without a Close frame: the session ends

    def _write_replies(self) -> None:
        """Pongs, the echo of the client's Close, our Close after a violation."""
        out = self.tunnel.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    # ------------------------------------------------------------ ClientLink

    def _send_frames(self, chunks: Sequence[bytes | memoryview]) -> None:
        try:
            pieces = self.tunnel.send_pieces(chunks)
        except WebSocketStateError:
            return  # the WebSocket is closing: nothing more may be sent
        self.transport.writelines(pieces)  # header + SPDY's immutable chunks, unjoined

    def write(self, data: bytes) -> None:
        self._send_frames([data])

    def is_closing(self) -> bool:
        return self._closed or self.transport.is_closing()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def close(self) -> None:
        """Called by the SPDY session once it is done: Close frame, then the socket."""
        if self._closed:
            return
        self._closed = True
        if not self.transport.is_closing():
            code = CLOSE_PROTOCOL_ERROR if self.spdy.conn.error is not None else CLOSE_NORMAL
            self.transport.write(self.tunnel.close(code))
            self.transport.close()

    # ------------------------------------------------------------ agent plumbing

    def pause_writing(self) -> None:
        self.spdy.pause_writing()

    def resume_writing(self) -> None:
        self.spdy.resume_writing()

    def goaway(self) -> None:
        self.spdy.goaway()

    @property
    def busy(self) -> bool:
        return self.spdy.busy

    async def wait_drained(self) -> None:
        await self.spdy.wait_drained()
