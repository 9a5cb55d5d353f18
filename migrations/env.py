"""Alembic environment for podgate: the target is ``SQLModel.metadata`` of service.store.

The URL comes from the ``sqlalchemy.url`` main option (``service.store.upgrade_schema``
sets it) or else from ``PODGATE_DATABASE_URL`` (for ``alembic upgrade head`` run by hand
with the ``alembic.ini`` at the repository root). A caller may also hand over an open
connection in ``config.attributes["connection"]``.
"""

import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from service.store.engine import make_engine
from service.store.models import UTCDateTime  # importing registers the tables

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("PODGATE_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "no database URL: set PODGATE_DATABASE_URL (e.g. sqlite:///data/podgate.db)"
            " or the sqlalchemy.url option"
        )
    return url


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render our TypeDecorators as their portable SQLAlchemy type, so revisions do not
    import application code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: rebuild the table instead ("batch" mode).
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection)
        return
    # Foreign keys off: a batch rebuild drops the old table, which must not cascade.
    engine = make_engine(database_url(), foreign_keys=False)
    try:
        with engine.connect() as connection:
            configure(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
