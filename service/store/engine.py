"""Engines and schema upgrades.

SQLite gets WAL (readers never block the writer), enforced foreign keys and a busy timeout
on every connection; any other SQLAlchemy URL (PostgreSQL) is used as is.

The Alembic scripts are read from ``migrations/`` at the root of the source tree, so
podgate runs from a source checkout or an editable install (``pip install -e .``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import SingletonThreadPool

if TYPE_CHECKING:  # why: alembic (+12 MB) is imported only where a migration runs
    from alembic.config import Config

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS_DIR",
    "alembic_config",
    "make_engine",
    "upgrade_schema",
    "upgrade_schema_isolated",
]

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
BUSY_TIMEOUT_MS = 5000


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):  # a URI filename (?uri=true)
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


def make_engine(url: str, *, foreign_keys: bool = True) -> Engine:
    """Create the engine for ``url``; for SQLite also create the file's parent directory.

    ``foreign_keys=False`` is for migrations only: SQLite batch migrations rebuild a table
    by dropping it, and with enforcement on that would cascade into its children.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed)

    path = _sqlite_file(parsed)
    options: dict[str, Any] = {}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        # In memory, a new connection is a new database: one per thread, as SQLAlchemy
        # picks today for `sqlite://` (named explicitly, it no longer warns for mode=memory).
        options["poolclass"] = SingletonThreadPool
    engine = create_engine(parsed, connect_args={"check_same_thread": False}, **options)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    return engine


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` built in code (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates "%": escape it (URL-encoded passwords contain it).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (``alembic upgrade head``)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def upgrade_schema_isolated(url: str) -> None:
    """:func:`upgrade_schema` to head in a short child process (``service.store.migrate``),
    so alembic and the migration scripts never stay resident in the server (about 12 MB).

    In-memory SQLite exists only in this process: that one is upgraded here. The URL goes
    through stdin, never the command line (``ps`` would show a password). Raises
    ``RuntimeError`` with the child's last output lines when the upgrade fails.
    """
    if _is_memory_sqlite(url):
        upgrade_schema(url)
        return
    done = subprocess.run(
        [sys.executable, "-m", "service.store.migrate"],
        input=url,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"schema upgrade failed (exit {done.returncode}): {tail}")


def _is_memory_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and _sqlite_file(parsed) is None


def _pythonpath() -> str:
    """This source tree first, so the child imports the same ``service`` package."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (root, rest) if p)
