"""`podgate agent`: the node-side server (the kubelet's role in port-forward).

A plain asyncio server rather than FastAPI, because uvicorn cannot hand over a
non-WebSocket upgrade (protocols.md §1.10). This module holds the listener, the HTTP/1.1
front (parsed with h11: discovery, GET pod, the upgrade checks) and the dispatch; after a
101 the same connection object feeds its bytes to the session it switched to
(``sessions/``, one module per transport). One listener serves:

* SPDY/3.1 (``Upgrade: SPDY/3.1``, protocols.md §1) → ``sessions.spdy``;
* a WebSocket offering ``SPDY/3.1+portforward.k8s.io`` (§3) → ``sessions.wstunnel``,
  unless the tunnel is switched off; then the request is treated as a v4 channel
  request, which (having no ``ports``) gets the kubelet's 400 and makes kubectl fall back;
* any other WebSocket (§2: v4, v4.base64 or no subprotocol) → ``sessions.wschannel``;
* HTTP/2 (§5.2): the prior-knowledge preface as the first bytes of a connection, or
  ALPN ``h2`` when serving TLS → ``sessions.h2``, before h11 sees anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import h11

from service.agent import kubeapi
from service.agent.dialer import PodDialer
from service.agent.registry import PodEntry, PodRegistry
from service.agent.sessions import (
    ClientSession,
    H2Session,
    SpdyPortForwardSession,
    WsChannelSession,
    WsTunnelSession,
)
from service.aio.fds import near_limit
from service.aio.sockets import loop_sets_nodelay, set_nodelay
from service.aio.timer import Timer
from service.protocols.h2 import MAX_CONCURRENT_STREAMS
from service.protocols.websocket import (
    SPDY_TUNNEL_PROTOCOL,
    ChannelServer,
    HandshakeError,
    parse_upgrade_request,
)
from service.tokens import TokenFile, bearer_token

log = logging.getLogger("podgate.agent")

PORTFORWARD_PROTOCOL = "portforward.k8s.io"
MAX_BODY = 64 * 1024
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_NAME = r"[^/?]+"
_PORTFORWARD_ROUTES = [
    re.compile(rf"^/portForward/(?P<ns>{_NAME})/(?P<pod>{_NAME})(?:/(?P<uid>{_NAME}))?$"),
    re.compile(
        rf"^/proxy/nodes/{_NAME}/portForward/(?P<ns>{_NAME})/(?P<pod>{_NAME})(?:/(?P<uid>{_NAME}))?$"
    ),
    re.compile(
        rf"^/api/v1/nodes/{_NAME}/proxy/portForward/(?P<ns>{_NAME})/(?P<pod>{_NAME})"
        rf"(?:/(?P<uid>{_NAME}))?$"
    ),
    re.compile(rf"^/api/v1/namespaces/(?P<ns>{_NAME})/pods/(?P<pod>{_NAME})/portforward$"),
]
_POD_ROUTE = re.compile(rf"^/api/v1/namespaces/(?P<ns>{_NAME})/pods/(?P<pod>{_NAME})$")
_DISCOVERY = {
    "/version": kubeapi.version,
    "/api": kubeapi.api_versions,
    "/apis": kubeapi.api_group_list,
    "/api/v1": kubeapi.core_v1_resources,
}


#: A connection whose request (head and body), TLS handshake or, over HTTP/2, first stream
#: has not arrived within this long is closed (slowloris).
HEADER_TIMEOUT = 30.0
#: An idle keep-alive connection between two requests is closed after this long.
KEEPALIVE_TIMEOUT = 90.0
#: An upgraded connection without a forwarded connection and without a byte from its
#: client for this long is closed (the kubelet's --streaming-connection-idle-timeout).
STREAMING_IDLE_TIMEOUT = 4 * 3600.0
#: On shutdown, once the pairs have drained: how long clients get to close their
#: connections before the agent closes them (a lingering close, see `Agent.shutdown`).
CLOSE_LINGER = 2.0


@dataclass(frozen=True, slots=True)
class AgentAuth:
    """Who may use the agent: clients with a certificate the TLS context verified
    (``--client-ca``), or with a bearer token of ``--token-file``; nobody checked when
    neither is configured (then the agent listens on loopback only, cli.py)."""

    tokens: TokenFile | None = None
    client_certs: bool = False

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self.client_certs

    def token_ok(self, authorization: str) -> bool:
        token = bearer_token(authorization)
        return bool(token) and self.tokens is not None and self.tokens.lookup(token) is not None


_UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, body: Any, headers: Iterable[tuple[str, str]] = ()) -> HttpReply:
        return cls(status, json.dumps(body).encode(), "application/json", tuple(headers))

    @classmethod
    def text(cls, status: int, body: str, headers: Iterable[tuple[str, str]] = ()) -> HttpReply:
        return cls(status, body.encode(), "text/plain; charset=utf-8", tuple(headers))


def _loopback_name(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_origin(origin: str) -> bool:
    """Whether a browser's ``Origin`` is a page served from this machine's loopback
    ("null", a sandboxed frame or a file, is not)."""
    try:
        return _loopback_name(urlsplit(origin).hostname)
    except ValueError:
        return False


def _loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names loopback (any port): not a DNS-rebound name."""
    try:
        return _loopback_name(urlsplit(f"//{host}").hostname)
    except ValueError:
        return False


def _header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """All comma-separated values of a (possibly repeated) header, stripped."""
    out: list[str] = []
    for key, value in headers:
        if key == name:
            out.extend(v.strip() for v in value.decode("latin-1").split(",") if v.strip())
    return out


def _web_page_refusal(request: h11.Request) -> str | None:
    """Why a request to an agent without authentication comes from a web page, if it
    does. Without authentication whoever reaches loopback gets in, and a browser on this
    machine does: any page may open a WebSocket here (there is no CORS for those), and a
    page whose name was rebound to 127.0.0.1 may read the answers. Its Origin or its
    Host gives it away."""
    headers = list(request.headers)
    for origin in _header_values(headers, b"origin"):
        if not _loopback_origin(origin):
            return f"a request from {origin}"
    for host in _header_values(headers, b"host"):
        if not _loopback_host(host):
            return f"a request for host {host}"
    return None


class AgentConnection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests until an upgrade, or HTTP/2 from the start."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.transport: asyncio.Transport | None = None
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        self.request: h11.Request | None = None
        self.body_size = 0
        self.session: ClientSession | None = None
        # The first bytes, while they may still be the HTTP/2 preface (None: decided).
        self._preface: bytes | None = b""
        self.certified = False  # the client presented a certificate the TLS layer verified
        # One deadline at a time: the request, the keep-alive idle, the streaming idle.
        self._deadline = Timer(self._deadline_passed)
        self._in_request = True  # a request has begun and is not complete: its deadline runs
        self._streaming_started = False  # from now on only the streaming idle timeout applies
        self._last_activity = 0.0
        # Paused reading ourselves: a client that does not read its responses gets no more.
        self._http_write_paused = False

    # asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and near_limit(sock.fileno()):
            log.warning("refusing a connection: file descriptors run out")
            self.transport.abort()  # the reserve stays for the connections already open
            return
        # The loops we run on set TCP_NODELAY on every TCP transport already.
        if not loop_sets_nodelay(asyncio.get_running_loop()):
            set_nodelay(transport)
        self.agent.connections.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        self.certified = ssl_object is not None and bool(ssl_object.getpeercert())
        self._arm(self.agent.header_timeout)  # the first request, or HTTP/2's first stream
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._start_h2(b"", "TLS, ALPN h2")

    def authorized(self, authorization: str) -> bool:
        """Whether a request with this Authorization header may go on."""
        auth = self.agent.auth
        return not auth.enabled or self.certified or auth.token_ok(authorization)

    def _h2_stream_authorized(self, authorization: str) -> bool:
        """`authorized` for an HTTP/2 stream: the first stream that passes makes the
        connection a streaming one; until then the request deadline holds it, so that a
        client without credentials cannot keep a connection by sending only the preface."""
        ok = self.authorized(authorization)
        if ok and not self._streaming_started:
            self._streaming()
        return ok

    # deadlines ----------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._deadline.start(seconds)

    def _deadline_passed(self) -> None:
        if self.transport is None:
            return
        if not self._streaming_started:
            # No request in time, idle between requests, or an HTTP/2 connection without
            # an authorized stream: nothing is lost.
            if self.session is not None:
                self.session.close()
            if self.transport.get_write_buffer_size():
                # Answers it does not read: close() would wait for them forever.
                self.transport.abort()
            else:
                self.transport.close()
            return
        if self.session is None or self.transport.is_closing():
            return
        idle_for = asyncio.get_running_loop().time() - self._last_activity
        timeout = self.agent.streaming_idle_timeout
        if self.session.busy or idle_for < timeout:
            self._arm(timeout - idle_for if not self.session.busy else timeout)
            return
        log.info("closing a streaming connection idle for %g s", idle_for)
        self.session.close()

    def _streaming(self) -> None:
        """Switched to a session: from now on only the streaming idle timeout applies."""
        self._streaming_started = True
        self._in_request = False
        self._last_activity = asyncio.get_running_loop().time()
        self._arm(self.agent.streaming_idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self._last_activity = asyncio.get_running_loop().time()
            self.session.receive(data)
            return
        if not self._in_request:
            self._in_request = True  # a new request begins: it has a deadline
            self._arm(self.agent.header_timeout)
        if self._preface is not None:
            # HTTP/2 with prior knowledge is recognised before h11 sees a byte.
            head = self._preface + data
            if head[: len(H2_PREFACE)] == H2_PREFACE[: len(head)]:
                if len(head) < len(H2_PREFACE):
                    self._preface = head
                    return
                self._preface = None
                self._start_h2(head, "h2c prior knowledge")
                return
            self._preface = None
            data = head
        self.http.receive_data(data)
        self._drive_http()

    def eof_received(self) -> bool | None:
        if self.session is not None:
            self.session.client_eof()
            return None
        if self._preface:
            self.http.receive_data(self._preface)
        self._preface = None
        self.http.receive_data(b"")
        self._drive_http()
        return None

    def _start_h2(self, head: bytes, how: str) -> None:
        assert self.transport is not None
        self._preface = None
        session = H2Session(
            self.transport,
            self.agent.registry,
            self.agent.dialer,
            stream_creation_timeout=self.agent.stream_creation_timeout,
            max_concurrent_streams=self.agent.h2_max_streams,
            authorized=self._h2_stream_authorized,
        )
        self.session = session
        # Still the request deadline: the first authorized stream makes it streaming.
        session.start(how)
        if head:
            session.receive(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        self.agent.connection_closed(self)
        if self.session is not None:
            self.session.close()

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_writing()
            return
        # HTTP/1.1: a client pipelining requests without reading the answers would have
        # them buffered here without bound; read (and answer) nothing more until it reads.
        self._http_write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._http_write_paused:
            self._http_write_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
            if self.session is None:
                self._drive_http()
                return
        if self.session is not None:
            self.session.resume_writing()

    # HTTP -------------------------------------------------------------------

    def _drive_http(self) -> None:
        assert self.transport is not None
        while (
            self.session is None and not self.transport.is_closing() and not self._http_write_paused
        ):
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                self._send_error_and_close(exc.error_status_hint, f"bad request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                # The deadline runs on until the body has arrived too.
                self.request = event
                self.body_size = 0
            elif isinstance(event, h11.Data):
                self.body_size += len(event.data)
                if self.body_size > MAX_BODY:
                    self._send_error_and_close(413, "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                request, self.request = self.request, None
                assert request is not None
                self._in_request = False
                self._deadline.cancel()
                try:
                    self._handle(request)
                except Exception:
                    log.exception("error handling %r", request.target)
                    self._send_error_and_close(500, "internal error")
                    return
                if self.session is None:
                    self._next_cycle()
                else:
                    self._streaming()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _next_cycle(self) -> None:
        assert self.transport is not None
        if self.http.our_state is h11.MUST_CLOSE or self.http.their_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        try:
            self.http.start_next_cycle()
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self._arm(self.agent.keepalive_timeout)  # idle until the next request begins

    def _send(self, reply: HttpReply) -> None:
        assert self.transport is not None
        headers = [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            *reply.headers,
        ]
        out = self.http.send(h11.Response(status_code=reply.status, headers=headers))
        out += self.http.send(h11.Data(data=reply.body)) or b""
        out += self.http.send(h11.EndOfMessage()) or b""
        self.transport.write(out)

    def _send_error_and_close(self, status: int, message: str) -> None:
        assert self.transport is not None
        with contextlib.suppress(h11.LocalProtocolError):
            self._send(HttpReply.text(status, message))
        self.transport.close()

    def _handle(self, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0]
        authorization = " ".join(_header_values(list(request.headers), b"authorization"))
        if not self.authorized(authorization):
            challenge = [("WWW-Authenticate", 'Bearer realm="podgate-agent"')]
            self._send(HttpReply.json(401, _UNAUTHORIZED, challenge))
            return
        if not self.agent.auth.enabled:
            refusal = _web_page_refusal(request)
            if refusal is not None:
                log.warning("refused a request from a web page: %s", refusal)
                message = (
                    f"{refusal} refused: an agent without --client-ca or --token-file "
                    "serves the clients of this machine only"
                )
                self._send(HttpReply.json(403, kubeapi.status(403, "Forbidden", message)))
                return
        for route in _PORTFORWARD_ROUTES:
            match = route.match(path)
            if match:
                if method not in ("GET", "POST"):
                    self._send(HttpReply.text(405, f"method {method} not allowed"))
                    return
                reply = self._port_forward(
                    request, match["ns"], match["pod"], match.groupdict().get("uid")
                )
                if reply is not None:
                    self._send(reply)
                return
        if method != "GET":
            self._send(
                HttpReply.json(
                    405,
                    kubeapi.status(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                    ),
                )
            )
            return
        if path in _DISCOVERY:
            self._send(HttpReply.json(200, _DISCOVERY[path]()))
            return
        match = _POD_ROUTE.match(path)
        if match:
            pod = self.agent.registry.get(match["ns"], match["pod"])
            if pod is None:
                self._send(HttpReply.json(404, kubeapi.pod_not_found(match["ns"], match["pod"])))
            else:
                self._send(HttpReply.json(200, kubeapi.pod(pod)))
            return
        answer = kubeapi.answer_get(self.agent.registry, path, target.partition("?")[2])
        if answer is not None:
            self._send(HttpReply.json(*answer))
            return
        self._send(
            HttpReply.json(
                404,
                kubeapi.status(404, "NotFound", "the server could not find the requested resource"),
            )
        )

    def _port_forward(
        self, request: h11.Request, namespace: str, name: str, uid: str | None
    ) -> HttpReply | None:
        """Validate and accept a port-forward upgrade; a reply means it was refused."""
        pod = self.agent.registry.get(namespace, name)
        if pod is None or (uid is not None and uid != pod.uid):
            return HttpReply.json(404, kubeapi.pod_not_found(namespace, name))
        headers = list(request.headers)
        upgrade = " ".join(_header_values(headers, b"upgrade")).lower()
        connection = " ".join(_header_values(headers, b"connection")).lower()
        if not upgrade:
            return HttpReply.json(
                400, kubeapi.status(400, "BadRequest", "Upgrade request required")
            )
        if "websocket" in upgrade:
            return self._websocket(request, pod)
        offered = _header_values(headers, b"x-stream-protocol-version")
        if not offered:
            return HttpReply.text(
                400,
                "unable to upgrade: header X-Stream-Protocol-Version does not exist in request "
                f"with {len(headers)} headers",
            )
        if PORTFORWARD_PROTOCOL not in offered:
            return HttpReply.text(
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts [{PORTFORWARD_PROTOCOL}]",
                headers=[("X-Accepted-Stream-Protocol-Versions", PORTFORWARD_PROTOCOL)],
            )
        if "upgrade" not in connection or "spdy/3.1" not in upgrade:
            return HttpReply.text(
                400,
                "unable to upgrade: missing upgrade headers in request: "
                f"Connection={connection!r} Upgrade={upgrade!r}",
            )
        self._accept_spdy(pod)
        return None

    def _websocket(self, request: h11.Request, pod: PodEntry) -> HttpReply | None:
        """A WebSocket upgrade: the SPDY tunnel (§3) or v4 channels (§2)."""
        assert self.transport is not None
        try:
            ws_request = parse_upgrade_request(request.method, request.target, request.headers)
        except HandshakeError as exc:
            return HttpReply.text(exc.error_code, exc.message, exc.headers)
        leftover = bytes(self.http.trailing_data[0])
        session: WsTunnelSession | WsChannelSession
        if self.agent.websocket_tunnel and SPDY_TUNNEL_PROTOCOL in ws_request.subprotocols:
            session = WsTunnelSession(
                self.transport,
                ws_request,
                pod,
                self.agent.dialer,
                trailing_data=leftover,
                stream_creation_timeout=self.agent.stream_creation_timeout,
            )
        else:
            # With the tunnel off, a tunnel request lands here like at an older kubelet:
            # no `ports` (400) or no v4 subprotocol (403), and kubectl falls back to SPDY.
            try:
                server = ChannelServer.from_request(ws_request)
            except HandshakeError as exc:
                return HttpReply.text(exc.error_code, exc.message, exc.headers)
            session = WsChannelSession(
                self.transport, server, pod, self.agent.dialer, trailing_data=leftover
            )
        self.session = session
        session.start()
        return None

    def _accept_spdy(self, pod: PodEntry) -> None:
        assert self.transport is not None
        log.info(
            "pod %s/%s: SPDY/3.1 upgrade (%s) from %s",
            pod.namespace,
            pod.name,
            PORTFORWARD_PROTOCOL,
            self.transport.get_extra_info("peername"),
        )
        out = self.http.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    ("Connection", "Upgrade"),
                    ("Upgrade", "SPDY/3.1"),
                    ("X-Stream-Protocol-Version", PORTFORWARD_PROTOCOL),
                ],
            )
        )
        self.transport.write(out or b"")
        leftover, _ = self.http.trailing_data
        self.session = SpdyPortForwardSession(
            self.transport,
            pod,
            self.agent.dialer,
            stream_creation_timeout=self.agent.stream_creation_timeout,
        )
        if leftover:
            self.session.receive(bytes(leftover))


def tls_context(
    cert_file: str,
    key_file: str,
    *,
    client_ca: str | None = None,
    client_cert_required: bool = True,
) -> ssl.SSLContext:
    """A server TLS context offering ALPN ``http/1.1`` and ``h2`` (→ HTTP/2 pairs); with
    ``client_ca``, client certificates are verified against it (the kubelet's
    ``--client-ca-file``), and required unless bearer tokens may stand in for them.

    The server's order decides, and ``http/1.1`` comes first: a client offering both
    (kubectl, any Go or curl client) gets HTTP/1.1, where discovery and GET pod are
    answered, and only a client offering ``h2`` alone (podgate's h2 transport) gets the
    pairs. kubectl sends a kubeconfig's token over TLS only, so this is its way in."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1", "h2"])
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_cert_required else ssl.CERT_OPTIONAL
    return ctx


class Agent:
    """Listens for port-forward upgrades and serves the pods in its registry."""

    def __init__(
        self,
        registry: PodRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 10250,
        dialer: PodDialer | None = None,
        stream_creation_timeout: float = 30.0,
        websocket_tunnel: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        h2_max_streams: int = MAX_CONCURRENT_STREAMS,
        auth: AgentAuth | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        streaming_idle_timeout: float = STREAMING_IDLE_TIMEOUT,
    ) -> None:
        self.registry = registry
        self.auth = auth or AgentAuth()
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.streaming_idle_timeout = streaming_idle_timeout
        self.host = host
        self.port = port
        self.dialer = dialer or PodDialer()
        self.stream_creation_timeout = stream_creation_timeout
        self.websocket_tunnel = websocket_tunnel
        self.ssl_context = ssl_context
        self.h2_max_streams = h2_max_streams
        self.connections: set[AgentConnection] = set()
        self._server: asyncio.Server | None = None
        self._clients_gone: asyncio.Future[None] | None = None  # set while lingering

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AgentConnection(self),
            self.host,
            self.port,
            reuse_address=True,
            ssl=self.ssl_context,
            # A TLS handshake is part of the first request: the same deadline.
            ssl_handshake_timeout=self.header_timeout if self.ssl_context is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, GOAWAY every session, let open pairs finish, give clients
        `CLOSE_LINGER` seconds to close their connections first, then close the rest."""
        if self._server is not None:
            self._server.close()
        sessions = [c.session for c in self.connections if c.session is not None]
        for session in sessions:
            session.goaway()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await asyncio.gather(*(s.wait_drained() for s in sessions))
        await self._linger(CLOSE_LINGER)
        for connection in list(self.connections):
            if connection.session is not None:
                connection.session.close()
            elif connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _linger(self, timeout: float) -> None:
        """Let clients close first: a client told GOAWAY closes its connection once its
        last pair has ended. Closed here first, with the client's last frames (WINDOW_UPDATE,
        PING) still unread, the kernel answers them with a TCP RST, and the client loses
        the pod's last bytes that it has not read yet."""
        if not self._streaming():
            return
        self._clients_gone = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._clients_gone

    def _streaming(self) -> bool:
        return any(c.session is not None for c in self.connections)

    def connection_closed(self, connection: AgentConnection) -> None:
        self.connections.discard(connection)
        gone = self._clients_gone
        if gone is not None and not gone.done() and not self._streaming():
            gone.set_result(None)
