"""Dialling the WebSocket transports: the SPDY tunnel (§3) and v4 channels (§2), and raw
connections for HTTP/2 (§5.2).

The handshake is done by the sans-IO clients of `service.protocols`; this module only
moves their bytes. After a successful handshake reading is paused, and the events that
arrived together with the 101 are handed over with the transport, so nothing is lost
when the caller installs its own protocol.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from service.aio.sockets import set_nodelay
from service.protocols.websocket import (
    ChannelClient,
    HandshakeAccepted,
    HandshakeRejected,
    TunnelClient,
    WebSocketError,
)

from .endpoint import DialProtocol, Endpoint, describe_connect_error, open_transport
from .errors import UpstreamError, describe_http_error

__all__ = [
    "TunnelRefused",
    "WebSocketConnection",
    "WsClient",
    "connect_raw",
    "dial_websocket",
    "set_nodelay",
]

WsClient = TunnelClient | ChannelClient


class TunnelRefused(UpstreamError):
    """The server did not accept the WebSocket upgrade (any non-101, or a 101 without the
    offered subprotocol): kubectl falls back to plain SPDY on exactly this."""


@dataclass
class WebSocketConnection:
    """A WebSocket after its 101; reading is paused until `attach`."""

    transport: asyncio.Transport
    client: Any  # TunnelClient | ChannelClient, past its handshake
    events: list[Any]  # events decoded together with the 101 (data already, possibly)
    _dialer: _HandshakeProtocol | None = field(default=None, repr=False)

    def attach(self, protocol: asyncio.Protocol | asyncio.BufferedProtocol) -> None:
        """Install `protocol`; replay an EOF or loss seen before the hand-over; resume."""
        self.transport.set_protocol(protocol)
        dialer = self._dialer
        if dialer is not None and dialer.lost:
            protocol.connection_lost(dialer.lost_exc)
        elif dialer is not None and dialer.eof:
            protocol.eof_received()
        else:
            self.transport.resume_reading()


class _HandshakeProtocol(DialProtocol[WebSocketConnection]):
    def __init__(self, endpoint: Endpoint, client: WsClient) -> None:
        super().__init__(endpoint)
        self.client = client
        self.answered = False  # some bytes of the answer arrived

    def _request(self) -> bytes:
        return self.client.initiate()

    def data_received(self, data: bytes) -> None:
        if not self.outcome.done():
            self._feed(data)

    def eof_received(self) -> bool:
        if self.outcome.done():
            self.eof = True
            return False
        self._feed(b"", at_eof=True)  # EOF may end a refusal whose body runs to the close
        if not self.outcome.done():
            self._fail(self._closed_early())
        return False

    def _closed_early(self) -> UpstreamError:
        when = "before finishing its answer to" if self.answered else "before answering"
        return UpstreamError(
            f"{self.endpoint.url} closed the connection {when} the WebSocket upgrade",
            retryable=True,
        )

    def _feed(self, data: bytes, *, at_eof: bool = False) -> None:
        assert self.transport is not None
        self.answered = self.answered or bool(data)
        try:
            events = self.client.receive_data(data)
        except WebSocketError as exc:
            if at_eof:  # the client only says, in h11's words, that the answer is incomplete
                self._fail(self._closed_early())
            else:
                self._fail(UpstreamError(f"WebSocket error from {self.endpoint.url}: {exc}"))
            return
        for index, event in enumerate(events):
            if isinstance(event, HandshakeRejected):
                text = describe_http_error(event.status, event.reason, bytes(event.body))
                self._fail(
                    TunnelRefused(
                        f"WebSocket upgrade to {self.endpoint.url} refused: {text}",
                        status=event.status,
                    )
                )
                return
            if isinstance(event, HandshakeAccepted):
                self.transport.pause_reading()  # later bytes belong to the caller's protocol
                pending = self.client.data_to_send()
                if pending:
                    self.transport.write(pending)
                self.outcome.set_result(
                    WebSocketConnection(self.transport, self.client, events[index + 1 :], self)
                )
                return


async def _connect(
    endpoint: Endpoint,
    factory: Callable[[], asyncio.Protocol],
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    deadline: float,
) -> asyncio.Transport:
    try:
        async with asyncio.timeout_at(deadline):
            transport = await open_transport(
                endpoint,
                factory,
                ssl_context=ssl_context,
                server_hostname=server_hostname,
                deadline=deadline,
            )
    except TimeoutError:
        raise UpstreamError(f"timed out connecting to {endpoint.url}", retryable=True) from None
    except (OSError, ssl.SSLError) as exc:
        raise describe_connect_error(exc, endpoint.url) from exc
    return transport


async def dial_websocket(
    url: str,
    make_client: Callable[[Endpoint], WsClient],
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    deadline: float,
) -> WebSocketConnection:
    """Connect to `url` and run the client's WebSocket handshake (bounded by `deadline`).

    Raises TunnelRefused when the server answered but did not accept, UpstreamError else.
    """
    endpoint = Endpoint.parse(url)
    client = make_client(endpoint)
    dialer: _HandshakeProtocol | None = None

    def factory() -> _HandshakeProtocol:
        nonlocal dialer
        dialer = _HandshakeProtocol(endpoint, client)
        return dialer

    transport = await _connect(
        endpoint,
        factory,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        deadline=deadline,
    )
    assert dialer is not None
    try:
        async with asyncio.timeout_at(deadline):
            return await dialer.outcome
    except TimeoutError:
        transport.close()
        raise UpstreamError(
            f"timed out waiting for the WebSocket upgrade response from {url}", retryable=True
        ) from None
    except BaseException:
        transport.close()
        raise


class _Paused(asyncio.Protocol):
    """Holds a fresh connection, unread, until the caller installs its protocol."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        self.transport.pause_reading()


async def connect_raw(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    deadline: float,
) -> asyncio.Transport:
    """A connected (TLS) transport to `url`'s host, reading paused (for HTTP/2)."""
    endpoint = Endpoint.parse(url)
    transport = await _connect(
        endpoint,
        _Paused,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        deadline=deadline,
    )
    if endpoint.tls:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if chosen != "h2":
            transport.close()
            raise UpstreamError(
                f"{url} did not negotiate HTTP/2 with ALPN (got {chosen!r})", retryable=False
            )
    return transport
