"""`podgate agent`: the node-side server (the kubelet's role in port-forward).

A plain asyncio server rather than FastAPI, because uvicorn cannot hand over a
non-WebSocket upgrade (protocols.md §1.10). HTTP/1.1 is parsed with h11; after a 101 the
same connection object feeds bytes to the SPDY session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import h11

from service.agent import kubeapi
from service.agent.dialer import PodDialer
from service.agent.registry import PodEntry, PodRegistry
from service.agent.spdy_server import SpdyPortForwardSession, set_nodelay

log = logging.getLogger("podgate.agent")

PORTFORWARD_PROTOCOL = "portforward.k8s.io"
MAX_BODY = 64 * 1024

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


def _header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """All comma-separated values of a (possibly repeated) header, stripped."""
    out: list[str] = []
    for key, value in headers:
        if key == name:
            out.extend(v.strip() for v in value.decode("latin-1").split(",") if v.strip())
    return out


class AgentConnection(asyncio.Protocol):
    """One client TCP connection: HTTP/1.1 requests until an upgrade, then SPDY."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.transport: asyncio.Transport | None = None
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        self.request: h11.Request | None = None
        self.body_size = 0
        self.session: SpdyPortForwardSession | None = None

    # asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        self.agent.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.receive(data)
            return
        self.http.receive_data(data)
        self._drive_http()

    def eof_received(self) -> bool | None:
        if self.session is not None:
            self.session.client_eof()
            return None
        self.http.receive_data(b"")
        self._drive_http()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.agent.connections.discard(self)
        if self.session is not None:
            self.session.close()

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_writing()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_writing()

    # HTTP -------------------------------------------------------------------

    def _drive_http(self) -> None:
        assert self.transport is not None
        while self.session is None and not self.transport.is_closing():
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                self._send_error_and_close(exc.error_status_hint, f"bad request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
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
                try:
                    self._handle(request)
                except Exception:
                    log.exception("error handling %r", request.target)
                    self._send_error_and_close(500, "internal error")
                    return
                if self.session is None:
                    self._next_cycle()
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
            # No WebSocket transport yet: a non-101 answer makes kubectl fall back to SPDY
            # (protocols.md §3), exactly as an older kubelet does.
            return HttpReply.json(
                400,
                kubeapi.status(
                    400,
                    "BadRequest",
                    "unable to upgrade: WebSocket port-forward is not supported by this agent; "
                    "use SPDY/3.1",
                ),
            )
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

    def _accept_spdy(self, pod: PodEntry) -> None:
        assert self.transport is not None
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
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.dialer = dialer or PodDialer()
        self.stream_creation_timeout = stream_creation_timeout
        self.connections: set[AgentConnection] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AgentConnection(self), self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, GOAWAY every session, let open pairs finish, then close."""
        if self._server is not None:
            self._server.close()
        sessions = [c.session for c in self.connections if c.session is not None]
        for session in sessions:
            session.goaway()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await asyncio.gather(*(s.wait_drained() for s in sessions))
        for connection in list(self.connections):
            if connection.session is not None:
                connection.session.close()
            elif connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
