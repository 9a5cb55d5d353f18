"""SQLModel tables: one ``SessionRecord`` per forward session, its ``PortMappingRecord`` rows.

Portable SQL only (SQLite by default, PostgreSQL for larger deployments). Every schema
change needs an Alembic revision in ``migrations/versions``; ``tests/unit/test_store.py``
fails when the models and the migrations disagree.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Integer,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlmodel import Field, Relationship, SQLModel

from service.model import SessionStatus

__all__ = [
    "NAMING_CONVENTION",
    "PortMappingRecord",
    "SessionRecord",
    "SessionStatus",
    "UTCDateTime",
    "new_session_id",
    "utcnow",
]

# Named constraints let Alembic's batch mode (SQLite table rebuilds) alter them later.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def _counter(big: bool = False) -> Any:
    """A traffic counter column: NOT NULL, 0 for rows that predate it (revision 0002)."""
    return Field(
        default=0,
        sa_column_kwargs={"server_default": "0"},
        sa_type=BigInteger if big else Integer,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_session_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps the offset (``timestamptz``); SQLite stores text without one, so values
    are converted to UTC on the way in and marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware one such as datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class SessionRecord(SQLModel, table=True):
    """A forward session: the desired state (target, ports) plus the observed state."""

    __tablename__ = "sessions"
    # A name is unique per owner: callers see only their own sessions (revision 0003).
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: str = Field(default_factory=new_session_id, primary_key=True)
    #: Who created it (the authenticated user; "" without authentication).
    owner: str = Field(default="", sa_column_kwargs={"server_default": ""})
    name: str
    namespace: str
    target: str  # as given, e.g. "pod/mypod"
    pod: str | None = None  # the resolved pod name
    context: str | None = None  # kubeconfig context; None means the current one
    transport_requested: str = "auto"
    transport: str | None = None  # negotiated
    addresses: list[str] = Field(
        default_factory=lambda: ["localhost"], sa_column=Column(JSON, nullable=False)
    )
    status: str = SessionStatus.PENDING.value
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    # Per-session settings added later (reconnect policy, ttl, ...) without a migration.
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Observed counters (sums over the port mappings, plus re-dials), flushed periodically.
    connections_total: int = _counter()
    connection_errors: int = _counter()
    connections_refused: int = _counter()  # over the connection limit (revision 0003)
    bytes_in: int = _counter(big=True)
    bytes_out: int = _counter(big=True)
    reconnects: int = _counter()

    # Loaded with the session by default so a detached record can always read its ports;
    # the ORM cascade deletes them even where the database does not enforce the FK.
    mappings: list["PortMappingRecord"] = Relationship(
        sa_relationship_kwargs={
            "cascade": "all, delete-orphan",
            "order_by": "PortMappingRecord.position",
            "lazy": "selectin",
        }
    )


class PortMappingRecord(SQLModel, table=True):
    """One ``[LOCAL:]REMOTE`` of a session, in request order (``position``)."""

    __tablename__ = "port_mappings"
    __table_args__ = (UniqueConstraint("session_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="sessions.id", ondelete="CASCADE")
    position: int
    spec: str  # as given, e.g. "0:7000"
    local_port: int = 0  # 0 until bound; then the bound port, so a restart reuses it
    remote_port: int
    remote_name: str | None = None  # a named remote port (later issue); None for now
    # Observed counters of this mapping, flushed periodically (revision 0002).
    connections_total: int = _counter()
    connection_errors: int = _counter()
    connections_refused: int = _counter()
    bytes_in: int = _counter(big=True)
    bytes_out: int = _counter(big=True)
