"""`ForwardSession`: the listeners of one stored session and its link to the cluster.

The listeners are bound before anything else and stay bound for the session's life,
whatever happens upstream: local clients keep their port while the link is re-dialled.

Status model (what `status` says, and what moves it):

    pending ──dial ok──► ready ──link lost / pod gone──► reconnecting ──dial ok──► ready
       │                   │                                  │
       │ fatal error,      │ link lost, reconnect disabled    │ fatal error, max_attempts
       ▼ max_attempts      ▼                                  ▼
     failed             failed                              failed
    any status ──ttl reached / idle too long──► stopped (listeners closed, row kept)

A failed dial keeps `pending` / `reconnecting` with `last_error` and is retried after a
backoff delay; "fatal" is an error the same dial would get again (403, a port the pod
does not have, a pod that does not exist when the session is created). Once a session
has been ready, a target that is not found is retried too: a StatefulSet pod, for one,
comes back under the same name. `failed` and `stopped` are final until DELETE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from service.aio.fds import near_limit
from service.aio.tasks import log_failure
from service.model import SessionStatus, Transport
from service.runner.backoff import backoff_delays
from service.runner.links import DIALERS, Link, LinkHooks
from service.runner.listeners import BoundMapping, bind_mappings
from service.runner.local import LocalConnection, TrafficCounters
from service.runner.podwatch import wait_until_gone
from service.runner.recovery import cluster_recovery
from service.runner.spec import SessionPolicy, SessionSpec
from service.upstream import Cluster, PodInfo, UpstreamError, resolve_target
from service.upstream.targets import AGENT_KINDS, parse_target

__all__ = ["AgentSource", "ClusterSource", "EventSink", "ForwardSession"]

log = logging.getLogger("podgate.runner")

#: Gives the cluster for a kubeconfig context (None: the default one).
ClusterSource = Callable[[str | None], Awaitable[Cluster]]
#: Receives (session, event type, event data) for the live event stream.
EventSink = Callable[["ForwardSession", str, dict[str, Any]], None]
#: Gives the agent to dial for (URL, credentials context) of a session's ``via``.
AgentSource = Callable[[str, str | None], Awaitable[Cluster]]


async def _no_agents(url: str, context: str | None) -> Cluster:
    return Cluster.for_agent(url)


class ForwardSession:
    """Listeners + one multiplexed upstream link, re-dialled when it drops."""

    def __init__(
        self,
        spec: SessionSpec,
        cluster: ClusterSource,
        *,
        on_change: Callable[[ForwardSession], None],
        on_accept: Callable[[LocalConnection], None] | None = None,
        on_event: EventSink | None = None,
        on_dialled: Callable[[Transport, float], None] | None = None,
        agents: AgentSource | None = None,
        policy: SessionPolicy | None = None,
    ) -> None:
        self.spec = spec
        self.target = parse_target(spec.target)
        self.policy = policy or SessionPolicy()
        self._cluster = cluster
        self._on_change = on_change
        self._on_accept = on_accept
        self._on_event = on_event
        self._on_dialled = on_dialled  # (transport, seconds) of every successful dial
        self._agents = agents or _no_agents
        self.status = SessionStatus.PENDING
        self.last_error: str | None = None
        self.transport: Transport | None = None  # negotiated
        self.pod: str | None = None
        # The pod port of each mapping, from the last resolution (0: a name not resolved yet).
        self.remote_ports = [m.remote_port for m in spec.mappings]
        self.ready_since: datetime | None = None
        #: One set of counters per port mapping; the session's are their sum.
        self.port_counters = [TrafficCounters() for _ in spec.mappings]
        self.reconnects = 0  # successful re-dials after the link was lost
        self.bound: list[BoundMapping] = []
        self._servers: list[asyncio.Server] = []
        self._link: Link | None = None
        self._retired: set[Link] = set()  # earlier links that still finish connections
        self._link_lost = asyncio.Event()
        self._lost_at: float | None = None
        self._ever_ready = False
        self._cluster_seen: Cluster | None = None  # of the last dial
        self._waiting: dict[LocalConnection, asyncio.TimerHandle] = {}
        self._open_connections = 0
        self._task: asyncio.Task[None] | None = None  # owns the dial loop and the pod watch
        self._tasks: asyncio.TaskGroup | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._ttl_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stopping = False

    @property
    def counters(self) -> TrafficCounters:
        """The session's totals (the sum over its port mappings)."""
        total = TrafficCounters()
        for counters in self.port_counters:
            total.add(counters)
        return total

    @property
    def expires_at(self) -> datetime | None:
        if self.policy.ttl is None:
            return None
        return self.spec.created_at + timedelta(seconds=self.policy.ttl)

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
                    partial(
                        LocalConnection,
                        bound.local_port,
                        position,
                        self._accepted,
                        self.port_counters[position],
                        self._local_closed,
                    ),
                    sock=sock,
                    backlog=1024,
                )
                self._servers.append(server)
        self._task = loop.create_task(self._main(), name=f"session {self.spec.name}")
        self._task.add_done_callback(self._main_ended)
        self._arm_expiry()

    def close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for bound in self.bound:
            bound.close()

    # ------------------------------------------------------------- lifecycle

    def _emit(self, type_: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(self, type_, data)

    def _set(
        self, status: SessionStatus, error: str | None = None, *, keep_error: bool = False
    ) -> None:
        old = self.status
        changed = status != old or (not keep_error and error != self.last_error)
        self.status = status
        if not keep_error:
            self.last_error = error
        if status == SessionStatus.READY:
            self.ready_since = datetime.now().astimezone()
        else:
            self.ready_since = None
        if status != old:
            self._emit(
                "status",
                old=old,
                new=status,
                last_error=self.last_error,
                pod=self.pod,
                transport=self.transport,
                reconnects=self.reconnects,
            )
        if changed:
            self._on_change(self)

    def _fail(self, error: str) -> None:
        self._set(SessionStatus.FAILED, error)
        self._drop_waiting()

    async def _main(self) -> None:
        # Every task of the session is in this group: stop() cancels them all with it.
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            tasks.create_task(self._run(), name=f"session {self.spec.name}: dial loop")

    def _main_ended(self, task: asyncio.Task[None]) -> None:
        log_failure(task)
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            self._fail(f"internal error: {task.exception()!r}")  # said, not swallowed

    async def _run(self) -> None:
        delays = backoff_delays(cap=self.policy.max_backoff)
        failures = 0  # consecutive failed dials
        while not self._stopping:
            try:
                dialled = await self._dial()
            except Exception as exc:
                if not isinstance(exc, UpstreamError):
                    log.exception("session %s: unexpected error while dialling", self.spec.name)
                error = str(exc) or type(exc).__name__
                failures += 1
                fatal = (
                    isinstance(exc, UpstreamError)
                    and not exc.retryable
                    # Once it was ready, a pod or Service that is gone may come back, and a
                    # 401/403 may be an API server that restarts (its RBAC caches not synced
                    # yet), a credential being rotated or an RBAC change rolling out.
                    and not (self._ever_ready and exc.status in (401, 403, 404))
                )
                if fatal:
                    self._fail(error)
                    return
                if not self.policy.reconnect:
                    self._fail(f"{error} (reconnect is disabled)")
                    return
                limit = self.policy.max_attempts
                if limit is not None and failures >= limit:
                    self._fail(f"gave up after {failures} attempt(s): {error}")
                    return
                next_status = (
                    SessionStatus.RECONNECTING
                    if self.status in (SessionStatus.READY, SessionStatus.RECONNECTING)
                    else SessionStatus.PENDING
                )
                self._set(next_status, error)
                delay = next(delays)
                if self._cluster_seen is None:
                    await asyncio.sleep(delay)  # interruptible: stop() cancels this task
                else:  # the same, or less once the cluster is back from an outage
                    await cluster_recovery(self._cluster_seen).wait(delay)
                continue
            if dialled is None:  # stopped while dialling
                return
            failures = 0
            delays = backoff_delays(cap=self.policy.max_backoff)
            await self._while_ready(*dialled)
            if self._stopping:
                return
            assert self._link is not None
            reason = self._link.lost_reason or "upstream connection lost"
            if not self.policy.reconnect:
                self._fail(f"{reason} (reconnect is disabled)")
                return
            self._lost_at = asyncio.get_running_loop().time()
            self._set(SessionStatus.RECONNECTING, reason)

    async def _while_ready(self, cluster: Cluster, pod: PodInfo | None) -> None:
        """Wait for the link to be lost, watching the pod (if there is one) meanwhile."""
        link = self._link
        watcher: asyncio.Task[None] | None = None
        watch = pod is not None and self.policy.pod_poll_interval > 0
        if watch and pod is not None and link is not None and self._tasks is not None:
            watcher = self._tasks.create_task(
                self._watch_pod(cluster, pod, link), name=f"session {self.spec.name}: pod watch"
            )
        try:
            await self._link_lost.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait({watcher})  # never swallows a cancellation of ours

    async def _watch_pod(self, cluster: Cluster, pod: PodInfo, link: Link) -> None:
        try:
            change = await wait_until_gone(
                cluster,
                self.spec.namespace,
                pod,
                poll_interval=self.policy.pod_poll_interval,
                watch_timeout=self.policy.pod_watch_timeout,
                follow=not self.target.is_pod,
            )
        except Exception:
            log.exception("session %s: the pod watch failed", self.spec.name)
            return
        if link is not self._link or link.closed:
            return
        if change.graceful:
            # It still serves: open connections finish there, new ones wait for the next pod.
            link.retire(f"{change.reason}; its open connections finish there")
            self._lost(link, link.lost_reason)
        else:
            link.fail(change.reason)  # reported through _lost

    async def _dial(self) -> tuple[Cluster, PodInfo | None] | None:
        via = self.spec.via
        cluster = self._cluster_seen = await self._cluster(self.spec.context)
        upstream = cluster if via is None else await self._agents(*via)
        previous_pod = self.pod
        pod: PodInfo | None = None
        if via is not None and self.target.kind in AGENT_KINDS:
            # The agent dials the Service, address or host itself (like krelay).
            name = self.target.agent_name
            self.pod = None
            self.remote_ports = [m.remote_port for m in self.spec.mappings]
        else:
            # Resolved on every dial: a Service or Deployment may point at another pod.
            resolution = await resolve_target(
                cluster, self.spec.namespace, self.target, self.spec.mappings
            )
            pod = resolution.pod
            name = self.pod = pod.name
            self.remote_ports = [m.remote_port for m in resolution.mappings]
        self._link_lost.clear()
        hooks = LinkHooks(
            on_lost=self._lost,
            on_connection_error=self._connection_error,
            keepalive=self.policy.keepalive,
            linger=self.policy.channel_linger,
        )
        started = asyncio.get_running_loop().time()
        link = await DIALERS[self.spec.transport](upstream, self.spec.namespace, name, hooks)
        if self._on_dialled is not None:
            self._on_dialled(link.kind, asyncio.get_running_loop().time() - started)
        if self._stopping:
            link.close()
            return None
        if link.closed:  # lost while being attached
            raise UpstreamError(link.lost_reason or "upstream closed the connection")
        if self._link is not None and not self._link.closed:
            self._retired.add(self._link)  # draining its last connections
        self._retired = {old for old in self._retired if not old.closed}
        self._link = link
        self.transport = link.kind
        reconnected = self.status == SessionStatus.RECONNECTING
        if reconnected:
            self.reconnects += 1
        self._ever_ready = True
        self._set(SessionStatus.READY, None)
        if reconnected:
            outage = None
            if self._lost_at is not None:
                outage = round(asyncio.get_running_loop().time() - self._lost_at, 3)
            self._emit(
                "reconnect",
                reconnects=self.reconnects,
                pod=self.pod,
                previous_pod=previous_pod,
                transport=link.kind,
                outage_seconds=outage,
            )
        for local, timer in list(self._waiting.items()):
            timer.cancel()
            if not local.closed:
                local.remote_port = self.remote_ports[local.position]
                link.open_pair(local)
        self._waiting.clear()
        return cluster, pod

    def _lost(self, link: Link, reason: str) -> None:
        if link is self._link:
            log.info("session %s: %s; reconnecting", self.spec.name, reason)
            self._link_lost.set()

    def _connection_error(self, local: LocalConnection, text: str) -> None:
        # kubectl's wording; unlike kubectl, only this one connection is closed.
        message = f"an error occurred forwarding {local.local_port} -> {local.remote_port}: {text}"
        log.info("session %s: %s", self.spec.name, message)
        self.last_error = message
        self._emit(
            "connection_error", port=local.local_port, remote_port=local.remote_port, text=text
        )
        self._on_change(self)

    # ----------------------------------------------------- local connections

    def _accepted(self, local: LocalConnection) -> None:
        self._open_connections += 1
        if self._open_connections > self.policy.max_connections or near_limit(local.fileno()):
            # Over the session's limit, or into the descriptors kept for the API: refused.
            local.counters.connections_refused += 1
            local.abort()
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        local.remote_port = self.remote_ports[local.position]
        if self._on_accept is not None:
            self._on_accept(local)
        link = self._link
        if link is not None and link.usable and self.status == SessionStatus.READY:
            link.open_pair(local)
            return
        if self.status in (SessionStatus.FAILED, SessionStatus.STOPPED) or self._stopping:
            local.abort()
            return
        # Upstream is (re)connecting: hold the connection, unread, for a bounded time.
        timer = asyncio.get_running_loop().call_later(
            self.policy.connect_wait, self._wait_expired, local
        )
        self._waiting[local] = timer

    def _local_closed(self, local: LocalConnection) -> None:
        self._open_connections -= 1
        if self._open_connections == 0:
            self._arm_idle()

    def _wait_expired(self, local: LocalConnection) -> None:
        self._waiting.pop(local, None)
        local.counters.connection_errors += 1
        self._emit(
            "connection_error",
            port=local.local_port,
            remote_port=local.remote_port,
            text=f"no connection to the cluster within {self.policy.connect_wait:g} s",
        )
        local.abort()

    def _drop_waiting(self) -> None:
        for local, timer in self._waiting.items():
            timer.cancel()
            local.abort()
        self._waiting.clear()

    # ----------------------------------------------------------------- expiry

    def _arm_expiry(self) -> None:
        ttl = self.policy.ttl
        if ttl is not None:
            expires_at = self.spec.created_at + timedelta(seconds=ttl)
            remaining = (expires_at - datetime.now(UTC)).total_seconds()
            self._ttl_timer = asyncio.get_running_loop().call_later(
                max(0.0, remaining), self._expire, f"expired: ttl {ttl:g} s reached"
            )
        self._arm_idle()

    def _arm_idle(self) -> None:
        idle = self.policy.idle_timeout
        if idle is None or self._stopping or self._open_connections:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(
            idle, self._expire, f"expired: idle for {idle:g} s"
        )

    def _expire(self, reason: str) -> None:
        if self._stopping or self._expiry is not None:
            return
        self._expiry = asyncio.get_running_loop().create_task(
            self.expire(reason), name=f"expire {self.spec.name}"
        )
        self._expiry.add_done_callback(log_failure)

    async def expire(self, reason: str) -> None:
        """Stop for good: listeners closed, reported as `stopped` with the reason."""
        log.info("session %s: %s", self.spec.name, reason)
        await self.stop()
        self._set(SessionStatus.STOPPED, reason)
        self._emit("expired", reason=reason)

    async def stop(self, status: SessionStatus | None = None) -> None:
        """Close listeners, the link and every connection; the session is then inert.

        The status stays as it was unless `status` is given (a service shutdown must not
        store `stopped`: stopped sessions are not restored at start-up).
        """
        self._stopping = True
        for timer in (self._ttl_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self.close_listeners()
        self._drop_waiting()
        if self._task is not None:
            self._task.cancel()  # and with it every task of its group
            await asyncio.wait({self._task})
        for link in (self._link, *self._retired):
            if link is not None:
                link.close()
        if status is not None:
            self.status = status
