"""`Supervisor`: one `ForwardSession` per stored session, reconciled with the store.

The store holds the desired state (what was asked for, and the local ports once bound);
the supervisor holds the live sessions and writes back the observed state (status, last
error, pod, transport, counters). On start-up every stored session is bound again on its
ports and its counters resume from the stored values; `stopped` (expired) sessions stay
stopped.

Persistence never touches the data path: a status change marks its session dirty and a
debounced flush writes the dirty sessions in a worker thread; traffic counters are
compared every `Settings.counters_flush_seconds` and changed ones are flushed the same
way. At shutdown everything is written once more.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from service.aio.tasks import log_failure
from service.config import Settings
from service.model import SessionStatus, Transport
from service.ports import PortMapping
from service.runner.events import EventHub
from service.runner.listeners import ListenError
from service.runner.local import TrafficCounters
from service.runner.policy import PolicyError, check_listeners
from service.runner.session import AgentSource, ClusterSource, ForwardSession
from service.runner.spec import SessionPolicy, SessionRequest, normalize_options
from service.store import (
    CounterValues,
    NameConflict,
    ObservedState,
    SessionRecord,
    SessionRepository,
    new_session_id,
)
from service.upstream.targets import parse_target

log = logging.getLogger("podgate.runner")

#: Observed state is written at most this often per session (status changes included).
PERSIST_DELAY = 0.2


def _counter_values(counters: TrafficCounters) -> CounterValues:
    return CounterValues(
        counters.connections_total,
        counters.connection_errors,
        counters.bytes_in,
        counters.bytes_out,
        counters.connections_refused,
    )


def observed_state(session: ForwardSession) -> ObservedState:
    return ObservedState(
        session_id=session.spec.id,
        status=session.status,
        last_error=session.last_error,
        transport=session.transport,
        pod=session.pod,
        reconnects=session.reconnects,
        counters=_counter_values(session.counters),
        mappings=tuple(_counter_values(c) for c in session.port_counters),
    )


def _counters_key(session: ForwardSession) -> tuple[Any, ...]:
    """What the periodic counter flush compares (cheap: a few ints per mapping)."""
    return (
        session.reconnects,
        *(
            (
                c.connections_total,
                c.connection_errors,
                c.bytes_in,
                c.bytes_out,
                c.connections_refused,
            )
            for c in session.port_counters
        ),
    )


class SessionConflict(Exception):
    """A session with this name exists with a different spec."""


class SessionLimit(Exception):
    """The service holds as many sessions as it may (``--max-sessions``)."""


def _request_of(record: SessionRecord) -> SessionRequest:
    """The request a stored session was created from (its mappings with their ports)."""
    return SessionRequest(
        namespace=record.namespace,
        target=record.target,
        mappings=tuple(
            PortMapping(m.spec, m.local_port, m.remote_port, m.remote_name) for m in record.mappings
        ),
        addresses=tuple(record.addresses),
        name=record.name,
        context=record.context,
        transport=Transport(record.transport_requested),
        options=normalize_options(record.options),
        owner=record.owner,
    )


class Supervisor:
    def __init__(
        self,
        repository: SessionRepository,
        clusters: ClusterSource,
        settings: Settings,
        *,
        events: EventHub | None = None,
        agents: AgentSource | None = None,
    ) -> None:
        self.repository = repository
        self.clusters = clusters
        self.agents = agents  # the helper agents of sessions that go through one (via)
        self.settings = settings  # every session's defaults
        self.events = events if events is not None else EventHub()
        #: Told the transport and duration of every successful dial (metrics).
        self.on_dialled: Callable[[Transport, float], None] | None = None
        self.sessions: dict[str, ForwardSession] = {}
        self._dirty: set[str] = set()
        self._stored: dict[str, tuple[Any, ...]] = {}  # counters as last written
        self._persist_handle: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()  # create/delete are serialised: names and ports stay consistent

    # -------------------------------------------------------------- sessions

    def policy(self, options: Mapping[str, Any] | None) -> SessionPolicy:
        """A session's effective settings: its own, else the service's defaults."""
        return SessionPolicy.of(options, self.settings)

    def _new_session(self, record: SessionRecord, request: SessionRequest) -> ForwardSession:
        spec = request.spec(record.id, record.name, record.created_at)
        return ForwardSession(
            spec,
            self.clusters,
            on_change=self._changed,
            on_event=self._event,
            on_dialled=self._dialled,
            agents=self.agents,
            policy=self.policy(record.options),
        )

    def _dialled(self, transport: Transport, seconds: float) -> None:
        if self.on_dialled is not None:
            self.on_dialled(transport, seconds)

    def _restore_observed(self, session: ForwardSession, record: SessionRecord) -> None:
        session.reconnects = record.reconnects
        for counters, stored in zip(session.port_counters, record.mappings, strict=True):
            counters.connections_total = stored.connections_total
            counters.connection_errors = stored.connection_errors
            counters.bytes_in = stored.bytes_in
            counters.bytes_out = stored.bytes_out
            counters.connections_refused = stored.connections_refused
        self._stored[record.id] = _counters_key(session)
        if record.status == SessionStatus.STOPPED:  # expired: stays as it was reported
            session.status = SessionStatus.STOPPED
            session.last_error = record.last_error
            session.pod = record.pod
            session.transport = Transport(record.transport) if record.transport else None

    async def start(self) -> None:
        """Restore every stored session on the local ports it had (not stopped ones)."""
        records = await asyncio.to_thread(self.repository.list)
        restored = 0
        for record in records:
            session = self._new_session(record, _request_of(record))
            self._restore_observed(session, record)
            self.sessions[record.id] = session
            if session.status == SessionStatus.STOPPED:
                continue
            expires_at = session.expires_at
            if expires_at is not None and expires_at <= datetime.now(UTC):
                await session.expire(f"expired: ttl {session.policy.ttl:g} s reached")
                continue
            try:
                # The operator's policy may have changed since: it holds for restored ones too.
                check_listeners(self.settings, session.spec.mappings, session.spec.addresses)
                session.bind([m.local_port for m in record.mappings])
            except (ListenError, PolicyError) as exc:
                log.warning("session %s cannot be restored: %s", record.name, exc)
                session.status = SessionStatus.FAILED
                session.last_error = f"cannot restore listeners: {exc}"
                self._changed(session)
                continue
            await session.start()
            restored += 1
        self._ticker = asyncio.get_running_loop().create_task(
            self._flush_counters_periodically(), name="persist counters"
        )
        self._ticker.add_done_callback(log_failure)
        log.info("restored %d session(s) of %d", restored, len(records))

    async def create(self, request: SessionRequest) -> tuple[ForwardSession, bool]:
        """Bind, persist, start; returns (session, created). Idempotent by name.

        Raises ListenError (nothing persisted, nothing left bound), SessionConflict,
        SessionLimit and PolicyError.
        """
        async with self._lock:
            if request.name is not None:
                existing = await asyncio.to_thread(
                    self.repository.get_by_name, request.name, request.owner
                )
                if existing is not None:
                    if request.same_as(existing) and existing.id in self.sessions:
                        return self.sessions[existing.id], False
                    raise SessionConflict(
                        f'a session named "{request.name}" already exists with a different spec'
                    )
            if len(self.sessions) >= self.settings.max_sessions:
                raise SessionLimit(
                    f"podgate holds {len(self.sessions)} sessions, the most it may "
                    "(--max-sessions): delete one first"
                )
            check_listeners(self.settings, request.mappings, request.listen_addresses)
            record = SessionRecord(
                id=new_session_id(),
                owner=request.owner,
                name=request.name or "",
                namespace=request.namespace,
                target=request.target,
                context=request.context,
                transport_requested=request.transport,
                addresses=list(request.addresses),
                created_at=datetime.now(UTC),
                options=normalize_options(request.options),
            )
            if not record.name:
                record.name = f"{parse_target(request.target).name}-{record.id[:8]}"
            record.mappings = []
            session = self._new_session(record, request)
            session.bind()  # ListenError propagates: nothing stored yet
            bound = [
                replace(m, local_port=port)
                for m, port in zip(request.mappings, session.local_ports, strict=True)
            ]
            try:
                await asyncio.to_thread(self.repository.create, record, bound)
            except NameConflict:
                session.close_listeners()
                raise SessionConflict(
                    f'a session named "{record.name}" already exists with a different spec'
                ) from None
            except BaseException:
                session.close_listeners()
                raise
            self.sessions[record.id] = session
            self._stored[record.id] = _counters_key(session)
            self.events.publish(
                "created",
                record.id,
                {
                    "name": record.name,
                    "namespace": record.namespace,
                    "target": record.target,
                    "status": session.status,
                    "local_ports": session.local_ports,
                },
                record.owner,
            )
            await session.start()
            return session, True

    def get(self, session_id: str) -> ForwardSession | None:
        return self.sessions.get(session_id)

    def list(self) -> list[ForwardSession]:
        return sorted(self.sessions.values(), key=lambda s: s.spec.created_at)

    async def delete(self, session_id: str) -> bool:
        async with self._lock:
            session = self.sessions.pop(session_id, None)
            if session is None:
                return False
            self._dirty.discard(session_id)
            self._stored.pop(session_id, None)
            await session.stop()
            await asyncio.to_thread(self.repository.delete, session_id)
            self.events.publish(
                "deleted", session_id, {"name": session.spec.name}, session.spec.owner
            )
            return True

    async def stop(self) -> None:
        """Service shutdown: close everything; stored sessions stay for the next start."""
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait({self._ticker})
        if self._persist_handle is not None:
            self._persist_handle.cancel()
            self._persist_handle = None
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))
        if self._flush_task is not None:
            await asyncio.wait({self._flush_task})
        # Everything once more: the counters since the last periodic flush included.
        states = [observed_state(s) for s in self.sessions.values()]
        try:
            await asyncio.to_thread(self.repository.save_observed, states)
        except Exception:
            log.exception("cannot store the final state of %d session(s)", len(states))
        self.sessions.clear()

    # ------------------------------------------------------- observed state

    def _event(self, session: ForwardSession, type_: str, data: dict[str, Any]) -> None:
        spec = session.spec
        self.events.publish(type_, spec.id, {"name": spec.name, **data}, spec.owner)

    def _changed(self, session: ForwardSession) -> None:
        self._dirty.add(session.spec.id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._closed or self._persist_handle is not None or self._flush_task is not None:
            return  # a running flush schedules the next one when it is done
        loop = asyncio.get_running_loop()
        self._persist_handle = loop.call_later(PERSIST_DELAY, self._start_flush)

    def _start_flush(self) -> None:
        self._persist_handle = None
        if self._flush_task is not None or self._closed:
            return
        dirty, self._dirty = self._dirty, set()
        states = []
        for session_id in dirty:
            session = self.sessions.get(session_id)
            if session is not None:
                states.append(observed_state(session))
                self._stored[session_id] = _counters_key(session)
        if states:
            self._flush_task = asyncio.get_running_loop().create_task(
                self._write(states), name="persist observed state"
            )
            self._flush_task.add_done_callback(log_failure)

    async def _write(self, states: builtins.list[ObservedState]) -> None:
        """Write in a worker thread: the event loop (and so the data path) never waits."""
        try:
            await asyncio.to_thread(self.repository.save_observed, states)
        except Exception:
            log.exception("cannot store the observed state of %d session(s)", len(states))
            for state in states:  # the next periodic check writes them again
                self._stored.pop(state.session_id, None)
        finally:
            self._flush_task = None
            if self._dirty:
                self._schedule_flush()

    async def _flush_counters_periodically(self) -> None:
        """Mark sessions whose counters moved since they were last written, and flush."""
        while True:
            await asyncio.sleep(self.settings.counters_flush_seconds)  # cancelled at shutdown
            for session_id, session in self.sessions.items():
                if _counters_key(session) != self._stored.get(session_id):
                    self._dirty.add(session_id)
            if self._dirty:
                self._schedule_flush()
