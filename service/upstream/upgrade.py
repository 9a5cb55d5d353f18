"""The HTTP/1.1 ``Upgrade: SPDY/3.1`` dial (protocols.md §1.1), client side.

The request is written and the response parsed with h11 by a small asyncio protocol. On a
valid 101 that protocol pauses reading, so no byte can arrive before the caller installs
its own protocol; whatever was read past the 101 is handed over as ``leftover``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

from .endpoint import DialProtocol, Endpoint, describe_connect_error, open_transport
from .errors import UpstreamError, describe_http_error

__all__ = [
    "MAX_ERROR_BODY",
    "PORTFORWARD_PROTOCOL",
    "SPDY_UPGRADE",
    "UpgradedConnection",
    "dial_spdy",
]

PORTFORWARD_PROTOCOL = "portforward.k8s.io"
SPDY_UPGRADE = "SPDY/3.1"
MAX_ERROR_BODY = 64 * 1024


@dataclass
class UpgradedConnection:
    """A connection that has switched to SPDY; reading is paused until it is handed over.

    Hand it to your protocol with :meth:`attach`, or by hand: ``transport.set_protocol(p)``,
    feed ``leftover`` to ``p.data_received`` (bytes already read past the 101: SPDY), then
    **call ``transport.resume_reading()``** — nothing more is read until you do. If
    ``transport.is_closing()`` is true at that point, the peer went away in between.
    """

    transport: asyncio.Transport
    leftover: bytes
    protocol: str
    _dialer: _UpgradeProtocol | None = field(default=None, repr=False, compare=False)

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Install ``protocol``, replay ``leftover`` and any EOF or loss that came before the
        hand-over, then resume reading."""
        self.transport.set_protocol(protocol)
        if self.leftover:
            _deliver(protocol, self.leftover)
        dialer = self._dialer
        eof = dialer is not None and dialer.eof
        lost = dialer is not None and dialer.lost
        if (
            eof
            and isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol)
            and not protocol.eof_received()
            and not lost
        ):
            self.transport.close()
        if lost:
            assert dialer is not None
            protocol.connection_lost(dialer.lost_exc)  # the transport told only us
        elif not eof:
            self.transport.resume_reading()


def _deliver(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
    else:
        raise TypeError(f"{type(protocol).__name__} cannot receive stream data")


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    """All values of one header joined with ", " (h11 gives lowercase names)."""
    return ", ".join(v.decode("latin-1") for k, v in headers if k == name)


class _UpgradeProtocol(DialProtocol[UpgradedConnection]):
    """Writes the upgrade request, parses the answer, resolves ``outcome``."""

    def __init__(
        self, endpoint: Endpoint, headers: Sequence[tuple[str, str]], max_body: int
    ) -> None:
        super().__init__(endpoint)
        self.max_body = max_body
        self.http = h11.Connection(h11.CLIENT)
        self.request = self._build_request(headers)
        self.response: h11.Response | None = None
        self.body = bytearray()

    def _build_request(self, headers: Sequence[tuple[str, str]]) -> bytes:
        """The request kubectl sends (protocols.md §1.1), plus ``headers``."""
        request = h11.Request(
            method="POST",
            target=self.endpoint.target,
            headers=[
                ("Host", self.endpoint.host_header),
                ("Connection", "Upgrade"),
                ("Upgrade", SPDY_UPGRADE),
                ("X-Stream-Protocol-Version", PORTFORWARD_PROTOCOL),
                ("Content-Length", "0"),
                *headers,
            ],
        )
        data = self.http.send(request) or b""
        return data + (self.http.send(h11.EndOfMessage()) or b"")

    def _request(self) -> bytes:
        return self.request

    # -- asyncio callbacks ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.outcome.done():
            return  # not reached: reading is paused once the outcome is known
        self.http.receive_data(data)
        self._drive()

    def eof_received(self) -> bool:
        if self.outcome.done():
            # Only TLS delivers this while reading is paused (close_notify read together
            # with the 101), and it ignores the return value; attach() replays the EOF.
            self.eof = True
            return False
        self.http.receive_data(b"")
        self._drive()
        return False

    # -- response handling ---------------------------------------------------

    def _drive(self) -> None:
        try:
            while not self.outcome.done():
                event = self.http.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        self._switched(event.headers)
                    # else 100/103: keep reading for the real answer
                elif isinstance(event, h11.Response):
                    self.response = event
                elif isinstance(event, h11.Data):
                    room = self.max_body - len(self.body)
                    self.body += event.data[:room]
                    if len(self.body) >= self.max_body:
                        self._fail(self.http_error())
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    if self.response is not None:
                        self._fail(self.http_error())
                    else:
                        self._fail(self._closed_early())
        except h11.RemoteProtocolError as exc:
            if self.response is not None:  # e.g. the body was cut short: report the status
                self._fail(self.http_error())
                return
            self._fail(
                UpstreamError(
                    f"invalid HTTP response to the upgrade request {self.endpoint.url}: {exc}",
                    retryable=True,
                )
            )

    def _switched(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        assert self.transport is not None
        # Stop reading first: later bytes must go to the caller's protocol, not here.
        self.transport.pause_reading()
        leftover, _ = self.http.trailing_data
        connection = _header(headers, b"connection").lower()
        upgrade = _header(headers, b"upgrade").lower()
        negotiated = _header(headers, b"x-stream-protocol-version")
        url = self.endpoint.url
        if "upgrade" not in connection or "spdy/3.1" not in upgrade:
            self._fail(
                UpstreamError(
                    f"unable to negotiate protocol with {url}: the 101 response has "
                    f"Connection {connection!r} and Upgrade {upgrade!r}, expected Upgrade "
                    f"and {SPDY_UPGRADE}",
                    status=101,
                    retryable=False,
                )
            )
            return
        if negotiated != PORTFORWARD_PROTOCOL:
            self._fail(
                UpstreamError(
                    f"unable to negotiate protocol with {url}: client supports "
                    f'"{PORTFORWARD_PROTOCOL}", server returned "{negotiated}"',
                    status=101,
                    retryable=False,
                )
            )
            return
        self.outcome.set_result(
            UpgradedConnection(self.transport, bytes(leftover), negotiated, self)
        )

    def http_error(self) -> UpstreamError:
        """The error for a final (non-101) answer, from what was read of it."""
        assert self.response is not None
        status = self.response.status_code
        reason = self.response.reason.decode("latin-1")
        text = describe_http_error(status, reason, bytes(self.body))
        accepted = _header(self.response.headers, b"x-accepted-stream-protocol-versions")
        hint = f" (server accepts stream protocols: {accepted})" if accepted else ""
        return UpstreamError(
            f"unable to upgrade connection to {self.endpoint.url}: {text}{hint}", status=status
        )

    def _closed_early(self) -> UpstreamError:
        return UpstreamError(
            f"{self.endpoint.url} closed the connection before answering the upgrade request",
            retryable=True,
        )


async def dial_spdy(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 15.0,
    deadline: float | None = None,
    max_error_body: int = MAX_ERROR_BODY,
) -> UpgradedConnection:
    """POST ``url`` with the SPDY/3.1 upgrade headers and return the switched connection.

    ``headers`` are added to the request (User-Agent, Authorization). Connecting, the TLS
    handshake and the response together must finish within ``timeout`` seconds (or by
    ``deadline``, in ``loop.time()`` terms, when the caller already spent part of the
    budget). Every failure raises :class:`UpstreamError` naming the URL.
    """
    endpoint = Endpoint.parse(url)
    if endpoint.tls and ssl_context is None:
        raise UpstreamError(f"{url} needs a TLS context", retryable=False)
    loop = asyncio.get_running_loop()
    dialer: _UpgradeProtocol | None = None

    def factory() -> _UpgradeProtocol:
        nonlocal dialer
        dialer = _UpgradeProtocol(endpoint, headers, max_error_body)
        return dialer

    stage = "connecting to"
    try:
        if deadline is None:
            deadline = loop.time() + timeout
        async with asyncio.timeout_at(deadline):
            await open_transport(
                endpoint,
                factory,
                ssl_context=ssl_context,
                server_hostname=server_hostname,
                deadline=deadline,
            )
            assert dialer is not None
            stage = "waiting for the upgrade response from"
            return await dialer.outcome
    except TimeoutError:
        _abandon(dialer)
        if dialer is not None and dialer.response is not None:
            raise dialer.http_error() from None  # the status came; the body never ended
        message = f"timed out after {timeout:g} s {stage} {url}"
        raise UpstreamError(message, retryable=True) from None
    except UpstreamError:
        raise
    except (OSError, ssl.SSLError) as exc:
        _abandon(dialer)
        raise describe_connect_error(exc, url) from exc
    except BaseException:  # cancelled: do not leak the connection
        _abandon(dialer)
        raise


def _abandon(dialer: _UpgradeProtocol | None) -> None:
    if dialer is not None and dialer.transport is not None:
        dialer.transport.close()
