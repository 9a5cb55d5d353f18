"""`Supervisor`: one `ForwardSession` per stored session, reconciled with the store.

The store holds the desired state (what was asked for, and the local ports once bound);
the supervisor holds the live sessions and writes back the observed state (status, last
error, pod, transport). On start-up every stored session is bound again on its ports.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from service.ports import PortMapping, parse_listen_addresses
from service.runner.listeners import ListenError
from service.runner.session import FAILED, ClusterSource, ForwardSession, SessionSpec
from service.store import NameConflict, SessionRecord, SessionRepository, new_session_id
from service.upstream.targets import parse_target

log = logging.getLogger("podgate.runner")

#: Observed state is written at most this often per session (status changes included).
PERSIST_DELAY = 0.2


@dataclass(frozen=True, slots=True)
class CreateRequest:
    namespace: str
    target: str
    mappings: tuple[PortMapping, ...]
    addresses: tuple[str, ...]  # as requested, e.g. ("localhost",)
    name: str | None = None
    context: str | None = None
    transport: str = "auto"

    def same_as(self, record: SessionRecord) -> bool:
        """Whether an existing session was created from an equal request."""
        return (
            record.namespace == self.namespace
            and record.target == self.target
            and [m.spec for m in record.mappings] == [m.spec for m in self.mappings]
            and list(record.addresses) == list(self.addresses)
            and record.context == self.context
            and record.transport_requested == self.transport
        )


class SessionConflict(Exception):
    """A session with this name exists with a different spec."""


def _spec_from(record: SessionRecord) -> SessionSpec:
    listen = parse_listen_addresses(record.addresses)
    return SessionSpec(
        id=record.id,
        name=record.name,
        namespace=record.namespace,
        target=record.target,
        mappings=tuple(
            PortMapping(m.spec, m.local_port, m.remote_port, m.remote_name) for m in record.mappings
        ),
        addresses=tuple(a.host for a in listen),
        optional_addresses=tuple(a.host for a in listen if not a.required),
        context=record.context,
        transport=record.transport_requested,
        created_at=record.created_at,
    )


class Supervisor:
    def __init__(
        self,
        repository: SessionRepository,
        clusters: ClusterSource,
        *,
        connect_wait: float = 30.0,
        ping_interval: float = 5.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.repository = repository
        self.clusters = clusters
        self.connect_wait = connect_wait
        self.ping_interval = ping_interval
        self.max_backoff = max_backoff
        self.sessions: dict[str, ForwardSession] = {}
        self._dirty: set[str] = set()
        self._persist_handle: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()  # create/delete are serialised: names and ports stay consistent

    # -------------------------------------------------------------- sessions

    def _new_session(self, record: SessionRecord) -> ForwardSession:
        return ForwardSession(
            _spec_from(record),
            self.clusters,
            on_change=self._changed,
            connect_wait=self.connect_wait,
            ping_interval=self.ping_interval,
            max_backoff=self.max_backoff,
        )

    async def start(self) -> None:
        """Restore every stored session on the local ports it had."""
        records = await asyncio.to_thread(self.repository.list)
        for record in records:
            session = self._new_session(record)
            try:
                session.bind([m.local_port for m in record.mappings])
            except ListenError as exc:
                log.warning("session %s cannot be restored: %s", record.name, exc)
                session.status = FAILED
                session.last_error = f"cannot restore listeners: {exc}"
                self.sessions[record.id] = session
                self._changed(session)
                continue
            self.sessions[record.id] = session
            await session.start()
        log.info("restored %d session(s)", len(records))

    async def create(self, request: CreateRequest) -> tuple[ForwardSession, bool]:
        """Bind, persist, start; returns (session, created). Idempotent by name.

        Raises ListenError (nothing persisted, nothing left bound) and SessionConflict.
        """
        async with self._lock:
            if request.name is not None:
                existing = await asyncio.to_thread(self.repository.get_by_name, request.name)
                if existing is not None:
                    if request.same_as(existing) and existing.id in self.sessions:
                        return self.sessions[existing.id], False
                    raise SessionConflict(
                        f'a session named "{request.name}" already exists with a different spec'
                    )
            record = SessionRecord(
                id=new_session_id(),
                name=request.name or "",
                namespace=request.namespace,
                target=request.target,
                context=request.context,
                transport_requested=request.transport,
                addresses=list(request.addresses),
                created_at=datetime.now(UTC),
            )
            if not record.name:
                record.name = f"{parse_target(request.target).name}-{record.id[:8]}"
            record.mappings = []
            spec = replace(_spec_from(record), mappings=request.mappings)
            session = ForwardSession(
                spec,
                self.clusters,
                on_change=self._changed,
                connect_wait=self.connect_wait,
                ping_interval=self.ping_interval,
                max_backoff=self.max_backoff,
            )
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
            await session.stop()
            await asyncio.to_thread(self.repository.delete, session_id)
            return True

    async def stop(self) -> None:
        """Service shutdown: close everything; stored sessions stay for the next start."""
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))
        self._flush()
        self.sessions.clear()

    # ------------------------------------------------------- observed state

    def _changed(self, session: ForwardSession) -> None:
        self._dirty.add(session.spec.id)
        if self._persist_handle is None:
            loop = asyncio.get_running_loop()
            self._persist_handle = loop.call_later(PERSIST_DELAY, self._flush)

    def _flush(self) -> None:
        """Write the observed state of changed sessions (rare, small writes)."""
        self._persist_handle = None
        dirty, self._dirty = self._dirty, set()
        for session_id in dirty:
            session = self.sessions.get(session_id)
            if session is None:
                continue
            try:
                self.repository.update_status(
                    session_id,
                    session.status,
                    last_error=session.last_error,
                    transport=session.transport_name,
                    pod=session.pod,
                )
            except Exception:
                log.exception("cannot store the state of session %s", session.spec.name)
