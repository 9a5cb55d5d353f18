"""CRUD for forward sessions. Every method is one short transaction and returns detached
records with their port mappings loaded, so callers never touch a closed ORM session."""

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, sessionmaker
from sqlmodel import Session, select

from service.ports import PortMapping
from service.store.models import PortMappingRecord, SessionRecord, SessionStatus, utcnow

__all__ = [
    "UNSET",
    "CounterValues",
    "NameConflict",
    "ObservedState",
    "SessionRepository",
    "StoreError",
]


class _Unset:
    """Marker for "leave this column as it is" (None means "set it to NULL")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


class StoreError(Exception):
    """Base class of the store's own errors."""


class NameConflict(StoreError):
    """Another session of the same owner already has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a session named {name!r} already exists")
        self.name = name


@dataclass(frozen=True, slots=True)
class CounterValues:
    """The stored traffic counters of a session or of one of its port mappings."""

    connections_total: int = 0
    connection_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connections_refused: int = 0

    def columns(self) -> dict[str, int]:
        return {
            "connections_total": self.connections_total,
            "connection_errors": self.connection_errors,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connections_refused": self.connections_refused,
        }

    @classmethod
    def of(cls, record: SessionRecord | PortMappingRecord) -> "CounterValues":
        return cls(
            record.connections_total,
            record.connection_errors,
            record.bytes_in,
            record.bytes_out,
            record.connections_refused,
        )


@dataclass(frozen=True, slots=True)
class ObservedState:
    """What the runner observed of one session, written by ``save_observed``."""

    session_id: str
    status: str
    last_error: str | None
    transport: str | None
    pod: str | None
    reconnects: int
    counters: CounterValues
    mappings: tuple[CounterValues, ...]  # by position


def _mapping_record(
    session_id: str, position: int, mapping: PortMapping | PortMappingRecord
) -> PortMappingRecord:
    return PortMappingRecord(
        session_id=session_id,
        position=position,
        spec=mapping.spec,
        local_port=mapping.local_port,
        remote_port=mapping.remote_port,
        remote_name=mapping.remote_name,
    )


class SessionRepository:
    """Sync access to the ``sessions`` and ``port_mappings`` tables (SQLite is fast enough
    to call from the event loop for single rows; run bulk calls in a thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, class_=Session, expire_on_commit=False)

    def _session(self) -> Session:
        return self._sessions()

    def create(
        self, record: SessionRecord, mappings: Sequence[PortMapping | PortMappingRecord]
    ) -> SessionRecord:
        """Insert a session and its mappings (positions follow ``mappings``' order).

        Raises ``NameConflict`` when ``record.name`` is taken (by the same owner).
        """
        record.mappings = [_mapping_record(record.id, i, m) for i, m in enumerate(mappings)]
        with self._session() as session:
            session.add(record)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                if self.get_by_name(record.name, record.owner) is not None:
                    raise NameConflict(record.name) from None
                raise
            return record

    def get(self, session_id: str) -> SessionRecord | None:
        with self._session() as session:
            statement = (
                select(SessionRecord)
                .where(SessionRecord.id == session_id)
                .options(joinedload(SessionRecord.mappings))  # type: ignore[arg-type]
            )
            return session.exec(statement).unique().first()

    def get_by_name(self, name: str, owner: str = "") -> SessionRecord | None:
        with self._session() as session:
            statement = (
                select(SessionRecord)
                .where(SessionRecord.name == name, SessionRecord.owner == owner)
                .options(joinedload(SessionRecord.mappings))  # type: ignore[arg-type]
            )
            return session.exec(statement).unique().first()

    def list(self) -> builtins.list[SessionRecord]:
        """All sessions, oldest first, with their mappings, in a single query.

        A join rather than ``selectinload``: that batches its IN list by 500 parents (three
        queries for 1000 sessions) and bind-parameter limits would cap it further.
        """
        with self._session() as session:
            statement = (
                select(SessionRecord)
                .options(joinedload(SessionRecord.mappings))  # type: ignore[arg-type]
                .order_by(SessionRecord.created_at, SessionRecord.id)  # type: ignore[arg-type]
            )
            return builtins.list(session.exec(statement).unique().all())

    def delete(self, session_id: str) -> bool:
        """Delete a session and (by ORM cascade and ON DELETE CASCADE) its mappings."""
        with self._session() as session:
            record = session.get(SessionRecord, session_id)
            if record is None:
                return False
            session.delete(record)
            session.commit()
            return True

    def update_status(
        self,
        session_id: str,
        status: SessionStatus | str,
        *,
        last_error: str | _Unset | None = UNSET,
        transport: str | _Unset | None = UNSET,
        pod: str | _Unset | None = UNSET,
    ) -> SessionRecord | None:
        """Record the observed state; keyword fields left ``UNSET`` keep their value.

        Returns the updated record, or None when the session does not exist (any more).
        """
        status = SessionStatus(status).value  # ValueError for an unknown status
        changes: dict[str, Any] = {"status": status}
        for column, value in (("last_error", last_error), ("transport", transport), ("pod", pod)):
            if not isinstance(value, _Unset):
                changes[column] = value
        with self._session() as session:
            record = session.get(SessionRecord, session_id)
            if record is None:
                return None
            for column, value in changes.items():
                setattr(record, column, value)
            record.updated_at = utcnow()
            session.commit()
            return record

    def save_observed(self, states: Sequence[ObservedState]) -> int:
        """Write the observed state of many sessions in one transaction (sessions that no
        longer exist are skipped); returns how many sessions were updated."""
        if not states:
            return 0
        now = utcnow()
        updated = 0
        with self._session() as session:
            for state in states:
                values = {
                    "status": SessionStatus(state.status).value,
                    "last_error": state.last_error,
                    "transport": state.transport,
                    "pod": state.pod,
                    "reconnects": state.reconnects,
                    "updated_at": now,
                    **state.counters.columns(),
                }
                result: Any = session.exec(
                    update(SessionRecord)
                    .where(SessionRecord.id == state.session_id)  # type: ignore[arg-type]
                    .values(**values)
                )
                if not result.rowcount:
                    continue
                updated += 1
                for position, counters in enumerate(state.mappings):
                    session.exec(
                        update(PortMappingRecord)
                        .where(
                            PortMappingRecord.session_id == state.session_id,  # type: ignore[arg-type]
                            PortMappingRecord.position == position,  # type: ignore[arg-type]
                        )
                        .values(**counters.columns())
                    )
            session.commit()
        return updated

    def set_local_ports(self, session_id: str, ports: Mapping[int, int]) -> SessionRecord | None:
        """Store the bound local port of each mapping, keyed by position.

        Returns the updated record, or None when the session does not exist (any more);
        raises ``KeyError`` for a position the session does not have.
        """
        with self._session() as session:
            record = session.get(SessionRecord, session_id)
            if record is None:
                return None
            by_position = {mapping.position: mapping for mapping in record.mappings}
            unknown = sorted(set(ports) - set(by_position))
            if unknown:
                raise KeyError(f"session {session_id} has no port mapping at position {unknown}")
            for position, port in ports.items():
                if not 0 <= port <= 65535:
                    raise ValueError(f"local port {port} is not between 0 and 65535")
                by_position[position].local_port = port
            record.updated_at = utcnow()
            session.commit()
            return record
