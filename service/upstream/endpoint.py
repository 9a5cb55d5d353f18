"""Pieces every dial needs, shared by the SPDY upgrade and the WebSocket dials: the URL,
the TLS context and the auth header, built from a kubernetes_asyncio Configuration
exactly as its REST client does (protocols.md §6), the connection itself, and the
protocol that waits for the upgrade's answer (``DialProtocol``)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote, urlsplit

from service.aio.sockets import set_nodelay

from .errors import UpstreamError

__all__ = [
    "Endpoint",
    "auth_headers",
    "build_ssl_context",
    "describe_connect_error",
    "open_transport",
    "portforward_url",
]

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_TLS_SCHEMES = frozenset({"https", "wss"})


def portforward_url(server: str, namespace: str, pod: str) -> str:
    """``{server}/api/v1/namespaces/{ns}/pods/{pod}/portforward``, keeping any path prefix."""
    ns = quote(namespace, safe="")
    name = quote(pod, safe="")
    return f"{server.rstrip('/')}/api/v1/namespaces/{ns}/pods/{name}/portforward"


@dataclass(frozen=True)
class Endpoint:
    """Where to connect for one URL, and what to put in the request line and Host header."""

    url: str
    host: str  # no brackets for IPv6
    port: int
    tls: bool
    host_header: str  # host[:port] as written in the URL
    target: str  # path + query for the request line

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise UpstreamError(
                f"unsupported URL scheme in {url!r} (expected http or https)", retryable=False
            )
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
        except ValueError:
            raise UpstreamError(f"invalid port in {url!r}", retryable=False) from None
        if not parts.hostname:
            raise UpstreamError(f"no host in {url!r}", retryable=False)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(
            url=url,
            host=parts.hostname,
            port=port,
            tls=scheme in _TLS_SCHEMES,
            host_header=parts.netloc.rpartition("@")[2],
            target=target,
        )


async def open_transport(
    endpoint: Endpoint,
    factory: Callable[[], asyncio.BaseProtocol],
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    deadline: float,
) -> asyncio.Transport:
    """Connect to ``endpoint`` (TLS for https and wss, its handshake bounded by ``deadline``
    in ``loop.time()`` terms) with a protocol from ``factory``; errors propagate."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(
        factory,
        endpoint.host,
        endpoint.port,
        ssl=ssl_context if endpoint.tls else None,
        server_hostname=(server_hostname or endpoint.host) if endpoint.tls else None,
        ssl_handshake_timeout=max(deadline - loop.time(), 0.001) if endpoint.tls else None,
    )
    return transport


T = TypeVar("T")


class DialProtocol(asyncio.Protocol, Generic[T]):
    """A dial's protocol until its upgrade is answered: sends ``_request()`` once
    connected, resolves ``outcome`` or fails it (closing the transport), and records an
    EOF or a loss that comes after the outcome, before the caller takes over."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.eof = False  # EOF seen after the outcome, before the hand-over
        self.lost = False
        self.lost_exc: Exception | None = None

    def _request(self) -> bytes:
        """What to send once connected."""
        raise NotImplementedError

    def _closed_early(self) -> UpstreamError:
        """The error for a peer that closed the connection before the outcome."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        self.transport.write(self._request())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.lost_exc = True, exc
        if not self.outcome.done():
            if exc is not None and not isinstance(exc, ConnectionResetError | BrokenPipeError):
                self._fail(describe_connect_error(exc, self.endpoint.url))
            else:
                self._fail(self._closed_early())

    def _fail(self, error: UpstreamError) -> None:
        if not self.outcome.done():
            self.outcome.set_exception(error)
        if self.transport is not None:
            self.transport.close()


def build_ssl_context(cfg: Any, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """The TLS context kubernetes_asyncio's REST client builds, offering only ``alpn``.

    Never offer h2: an HTTP/1.1 upgrade cannot run over HTTP/2 (protocols.md §1.1).
    """
    try:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamError(
            f"cannot load TLS files from the cluster configuration: {exc}", retryable=False
        ) from exc
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if getattr(cfg, "disable_strict_ssl_verification", False):
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


async def auth_headers(cfg: Any) -> list[tuple[str, str]]:
    """The auth header(s) for one request, read fresh (runs the token refresh hook).

    The stored value already carries its scheme (``Bearer …`` or ``Basic …``). Client
    certificates travel in the TLS context instead.
    """
    headers: list[tuple[str, str]] = []
    settings: dict[str, dict[str, Any]] = await cfg.auth_settings()
    for setting in settings.values():
        value = setting.get("value")
        if setting.get("in") == "header" and value:
            name = str(setting.get("key", "authorization"))
            headers.append(("Authorization" if name.lower() == "authorization" else name, value))
    return headers


def describe_connect_error(exc: BaseException, url: str) -> UpstreamError:
    """A connection-level failure (TCP, DNS, TLS) as an UpstreamError a person can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return UpstreamError(
            f"TLS certificate verification failed for {url}: {detail} "
            "(check certificate-authority in the kubeconfig)",
            retryable=True,
        )
    if isinstance(exc, ssl.SSLError):
        return UpstreamError(f"TLS handshake with {url} failed: {exc}", retryable=True)
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamError(f"cannot connect to {url}: connection refused", retryable=True)
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or type(exc).__name__
        return UpstreamError(f"cannot connect to {url}: {detail}", retryable=True)
    return UpstreamError(f"cannot connect to {url}: {exc!r}", retryable=True)
