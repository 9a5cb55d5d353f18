"""`ForwardSession`: the listeners of one stored session and its link to the cluster.

The listeners are bound before anything else and stay bound for the session's life,
whatever happens upstream: local clients keep their port while the link is re-dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

from service.ports import PortMapping
from service.runner.channel import ChannelForwarder
from service.runner.h2link import H2Link
from service.runner.link import LocalConnection, SpdyLink, TrafficCounters
from service.runner.listeners import BoundMapping, bind_mappings
from service.upstream import Cluster, TunnelRefused, UpstreamError, resolve_target
from service.upstream.endpoint import Endpoint
from service.upstream.targets import parse_target

log = logging.getLogger("podgate.runner")

PENDING = "pending"
READY = "ready"
RECONNECTING = "reconnecting"
FAILED = "failed"
STOPPED = "stopped"

#: What carries a session's connections: one SPDY link (plain or tunnelled), one HTTP/2
#: link, or a WebSocket per connection.
Link = SpdyLink | H2Link | ChannelForwarder

#: Gives the cluster for a kubeconfig context (None: the default one).
ClusterSource = Callable[[str | None], Awaitable[Cluster]]


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a client asked for; immutable for the session's life."""

    id: str
    name: str
    namespace: str
    target: str  # as given: NAME, pod/NAME, svc/NAME, deploy/NAME, ...
    mappings: tuple[PortMapping, ...]
    addresses: tuple[str, ...]  # resolved IPs (localhost → 127.0.0.1, ::1)
    optional_addresses: tuple[str, ...]  # may fail to bind alone (kubectl's localhost rule)
    context: str | None
    transport: str
    created_at: datetime


def backoff_delays(base: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Capped exponential backoff with full jitter (never zero, never above `cap`)."""
    attempt = 0
    while True:
        ceiling = min(cap, base * (2**attempt))
        yield random.uniform(ceiling / 2, ceiling)
        attempt = min(attempt + 1, 30)


class ForwardSession:
    """Listeners + one multiplexed upstream link, re-dialled when it drops."""

    def __init__(
        self,
        spec: SessionSpec,
        cluster: ClusterSource,
        *,
        on_change: Callable[[ForwardSession], None],
        on_accept: Callable[[LocalConnection], None] | None = None,
        connect_wait: float = 30.0,
        ping_interval: float = 5.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.spec = spec
        self.target = parse_target(spec.target)
        self._cluster = cluster
        self._on_change = on_change
        self._on_accept = on_accept
        self.connect_wait = connect_wait
        self.ping_interval = ping_interval
        self.max_backoff = max_backoff
        self.status = PENDING
        self.last_error: str | None = None
        self.transport_name: str | None = None
        self.pod: str | None = None
        # The pod port of each mapping, from the last resolution (0: a name not resolved yet).
        self.remote_ports = [m.remote_port for m in spec.mappings]
        self.ready_since: datetime | None = None
        self.counters = TrafficCounters()
        self.bound: list[BoundMapping] = []
        self._servers: list[asyncio.Server] = []
        self._link: Link | None = None
        self._link_lost = asyncio.Event()
        self._waiting: dict[LocalConnection, asyncio.TimerHandle] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------- listeners

    def bind(self, local_ports: Sequence[int] | None = None) -> None:
        """Bind every mapping (on `local_ports` when restoring); all-or-nothing."""
        mappings = list(self.spec.mappings)
        if local_ports is not None:
            mappings = [
                replace(m, local_port=port or m.local_port)
                for m, port in zip(mappings, local_ports, strict=True)
            ]
        self.bound = bind_mappings(mappings, self.spec.addresses, self.spec.optional_addresses)

    @property
    def local_ports(self) -> list[int]:
        return [b.local_port for b in self.bound]

    async def start(self) -> None:
        """Serve the bound sockets and start dialling the cluster in the background."""
        loop = asyncio.get_running_loop()
        for position, bound in enumerate(self.bound):
            for sock in bound.sockets:
                server = await loop.create_server(
                    partial(LocalConnection, bound.local_port, position, self._accepted),
                    sock=sock,
                    backlog=1024,
                )
                self._servers.append(server)
        self._task = loop.create_task(self._run(), name=f"session {self.spec.name}")

    def close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for bound in self.bound:
            bound.close()

    # ------------------------------------------------------------- lifecycle

    def _set(self, status: str, error: str | None = None, *, keep_error: bool = False) -> None:
        changed = status != self.status or (not keep_error and error != self.last_error)
        self.status = status
        if not keep_error:
            self.last_error = error
        if status == READY:
            self.ready_since = datetime.now().astimezone()
        elif status != READY:
            self.ready_since = None
        if changed:
            self._on_change(self)

    async def _run(self) -> None:
        delays = backoff_delays(cap=self.max_backoff)
        while not self._stopping:
            try:
                await self._dial()
            except (UpstreamError, Exception) as exc:
                if isinstance(exc, UpstreamError) and not exc.retryable:
                    self._set(FAILED, str(exc))
                    self._drop_waiting()
                    return
                if not isinstance(exc, UpstreamError):
                    log.exception("session %s: unexpected error while dialling", self.spec.name)
                next_status = RECONNECTING if self.status in (READY, RECONNECTING) else PENDING
                self._set(next_status, str(exc) or type(exc).__name__)
                await asyncio.sleep(next(delays))
                continue
            delays = backoff_delays(cap=self.max_backoff)
            await self._link_lost.wait()
            if self._stopping:
                return
            assert self._link is not None
            self._set(RECONNECTING, self._link.lost_reason)

    async def _dial(self) -> None:
        cluster = await self._cluster(self.spec.context)
        # Resolved on every dial: a Service or Deployment may point at another pod by now.
        resolution = await resolve_target(
            cluster, self.spec.namespace, self.target, self.spec.mappings
        )
        pod = resolution.pod
        self.pod = pod.name
        self.remote_ports = [m.remote_port for m in resolution.mappings]
        self._link_lost.clear()
        link, transport_name = await self._connect(cluster, pod.name)
        if self._stopping:
            link.close()
            return
        if link.closed:  # lost while being attached
            raise UpstreamError(link.lost_reason or "upstream closed the connection")
        self._link = link
        self.transport_name = transport_name
        self._set(READY, None)
        for local, timer in list(self._waiting.items()):
            timer.cancel()
            if not local.closed:
                local.remote_port = self.remote_ports[local.position]
                link.open_pair(local)
        self._waiting.clear()

    async def _connect(self, cluster: Cluster, pod: str) -> tuple[Link, str]:
        """Dial the session's transport; `auto` tries the tunnel, then SPDY, like kubectl."""
        namespace, mode = self.spec.namespace, self.spec.transport
        if mode in ("auto", "websocket"):
            try:
                ws = await cluster.upgrade_tunnel(namespace, pod)
            except TunnelRefused as exc:
                # kubectl falls back on any refused upgrade (403 too), never on TCP/TLS errors.
                if mode == "websocket":
                    raise
                log.info("session %s: tunnel refused, using SPDY: %s", self.spec.name, exc)
            else:
                link = self._spdy_link()
                link.attach_tunnel(ws)
                return link, "websocket"
        if mode in ("auto", "spdy"):
            upgraded = await cluster.upgrade_spdy(namespace, pod)
            link = self._spdy_link()
            link.attach(upgraded)
            return link, "spdy"
        if mode == "ws-channel":
            forwarder = ChannelForwarder(
                cluster,
                namespace,
                pod,
                self.counters,
                on_connection_error=self._connection_error,
            )
            return forwarder, "ws-channel"
        if mode == "h2":
            transport, headers = await cluster.connect_h2()
            endpoint = Endpoint.parse(cluster.server)
            h2 = H2Link(
                self.counters,
                namespace,
                pod,
                on_lost=self._lost,
                on_connection_error=self._connection_error,
                ping_interval=self.ping_interval,
            )
            h2.attach(
                transport,
                authority=endpoint.host_header,
                scheme="https" if endpoint.tls else "http",
                headers=headers,
            )
            return h2, "h2"
        raise UpstreamError(f"unknown transport {mode!r}", retryable=False)

    def _spdy_link(self) -> SpdyLink:
        return SpdyLink(
            self.counters,
            on_lost=self._lost,
            on_connection_error=self._connection_error,
            ping_interval=self.ping_interval,
        )

    def _lost(self, link: object, reason: str) -> None:
        if link is self._link:
            log.info("session %s: %s", self.spec.name, reason)
            self._link_lost.set()

    def _connection_error(self, local: LocalConnection, text: str) -> None:
        # kubectl's wording; unlike kubectl, only this one connection is closed.
        message = f"an error occurred forwarding {local.local_port} -> {local.remote_port}: {text}"
        log.info("session %s: %s", self.spec.name, message)
        self.last_error = message
        self._on_change(self)

    # ----------------------------------------------------- local connections

    def _accepted(self, local: LocalConnection) -> None:
        local.remote_port = self.remote_ports[local.position]
        if self._on_accept is not None:
            self._on_accept(local)
        link = self._link
        if link is not None and link.usable and self.status == READY:
            link.open_pair(local)
            return
        if self.status == FAILED or self._stopping:
            local.abort()
            return
        # Upstream is (re)connecting: hold the connection, unread, for a bounded time.
        timer = asyncio.get_running_loop().call_later(self.connect_wait, self._wait_expired, local)
        self._waiting[local] = timer

    def _wait_expired(self, local: LocalConnection) -> None:
        self._waiting.pop(local, None)
        self.counters.connection_errors += 1
        local.abort()

    def _drop_waiting(self) -> None:
        for local, timer in self._waiting.items():
            timer.cancel()
            local.abort()
        self._waiting.clear()

    async def stop(self, status: str = STOPPED) -> None:
        """Close listeners, the link and every connection; the session is then inert."""
        self._stopping = True
        self.close_listeners()
        self._drop_waiting()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._link is not None:
            self._link.close()
        self.status = status
