"""Persistence of forward sessions: SQLModel tables, engines, Alembic upgrades, CRUD."""

from service.store.engine import MIGRATIONS_DIR, alembic_config, make_engine, upgrade_schema
from service.store.models import (
    PortMappingRecord,
    SessionRecord,
    SessionStatus,
    UTCDateTime,
    new_session_id,
    utcnow,
)
from service.store.repository import (
    UNSET,
    CounterValues,
    NameConflict,
    ObservedState,
    SessionRepository,
    StoreError,
)

__all__ = [
    "MIGRATIONS_DIR",
    "UNSET",
    "CounterValues",
    "NameConflict",
    "ObservedState",
    "PortMappingRecord",
    "SessionRecord",
    "SessionRepository",
    "SessionStatus",
    "StoreError",
    "UTCDateTime",
    "alembic_config",
    "make_engine",
    "new_session_id",
    "upgrade_schema",
    "utcnow",
]
