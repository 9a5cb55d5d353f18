"""The `websocket` link: a `SpdyLink` inside a WebSocket (`SPDY/3.1+portforward.k8s.io`,
protocols.md §3), what kubectl 1.31+ tries first.

`TunnelPipe` is the protocol on the real socket: it unwraps binary messages into the SPDY
byte stream for the link. `TunnelTransport` is what the link writes to: every flush of
SPDY frames becomes one binary WebSocket message (one or more whole frames), written as
its header and masked chunks without joining them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

from service.aio.readbuffer import SharedBufferReader
from service.model import Transport
from service.protocols.websocket import (
    ConnectionTerminated,
    DataReceived,
    TunnelClient,
    WebSocketError,
)
from service.runner.links.base import LinkHooks
from service.runner.links.spdy import SpdyLink
from service.upstream import Cluster


class TunnelTransport(asyncio.Transport):
    """The transport a `SpdyLink` sees: writes are wrapped in WebSocket messages."""

    def __init__(self, raw: asyncio.Transport, client: TunnelClient) -> None:
        super().__init__()
        self.raw = raw
        self.client = client

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.raw.writelines(self.client.send_pieces((data,)))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        # Why: header and masked chunks go out as they are (uvloop writes them with one
        # writev); joining them first was a full copy of every message.
        chunks = list_of_data if isinstance(list_of_data, list) else list(list_of_data)
        if chunks:
            self.raw.writelines(self.client.send_pieces(chunks))

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def close(self) -> None:
        if not self.raw.is_closing():
            with contextlib.suppress(WebSocketError):
                self.raw.write(self.client.close())  # code 1000: a clean EOF for the peer
            self.raw.close()

    def abort(self) -> None:
        self.raw.abort()


class TunnelLink(Protocol):
    """What the pipe feeds: the stream-protocol callbacks of the link inside."""

    def data_received(self, data: bytes | memoryview) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class TunnelPipe(SharedBufferReader):
    """Protocol of the real socket: WebSocket in, SPDY bytes out to `link`.

    Buffered: the socket is read into `shared_read_buffer()` (see there why).
    """

    def __init__(self, client: TunnelClient, link: TunnelLink) -> None:
        self.client = client
        self.link = link
        self.raw: asyncio.Transport | None = None

    def process(self, events: Iterable[object]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                if event.data:
                    self.link.data_received(event.data)
            elif isinstance(event, ConnectionTerminated):
                self._write_replies()  # our Close in answer, before the link drops the socket
                if event.error_code == 1000:
                    self.link.eof_received()
                else:
                    self.link.connection_lost(
                        ConnectionError(
                            f"WebSocket closed with code {event.error_code} {event.reason}"
                        )
                    )
        self._write_replies()

    def _write_replies(self) -> None:
        replies = self.client.data_to_send()  # pongs, the Close echo
        if replies and self.raw is not None and not self.raw.is_closing():
            self.raw.write(replies)

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            events = self.client.receive_data(data)
        except WebSocketError as exc:
            self.link.connection_lost(ConnectionError(f"WebSocket protocol error: {exc}"))
            if self.raw is not None:
                self.raw.abort()
            return
        self.process(events)

    def eof_received(self) -> bool:
        self.link.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.connection_lost(exc)

    def pause_writing(self) -> None:
        self.link.pause_writing()

    def resume_writing(self) -> None:
        self.link.resume_writing()


async def dial(cluster: Cluster, namespace: str, pod: str, hooks: LinkHooks) -> SpdyLink:
    """``GET …/portforward`` as a WebSocket offering the tunnel; ``TunnelRefused`` when the
    server answers anything else (``auto`` then falls back to SPDY)."""
    ws = await cluster.upgrade_tunnel(namespace, pod)
    link = SpdyLink(hooks, kind=Transport.WEBSOCKET)
    pipe = TunnelPipe(ws.client, link)
    link.adopt(TunnelTransport(ws.transport, ws.client))
    pipe.raw = ws.transport
    ws.attach(pipe)
    pipe.process(ws.events)
    return link
