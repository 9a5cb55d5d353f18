"""The store, migrated by Alembic exactly as ``podgate serve`` does, on both databases it
supports: a real SQLite file and a real PostgreSQL server (a private one started for the
test session, with a new empty database per test: tests/conftest.py). Tests that take
``db_url`` run once on each.
"""

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event
from sqlmodel import Session, SQLModel

from service.ports import parse_port_specs
from service.store import (
    MIGRATIONS_DIR,
    CounterValues,
    NameConflict,
    ObservedState,
    PortMappingRecord,
    SessionRecord,
    SessionRepository,
    SessionStatus,
    alembic_config,
    make_engine,
    upgrade_schema,
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    # A directory that does not exist yet: make_engine / upgrade_schema create it.
    return f"sqlite:///{tmp_path / 'data' / 'podgate.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database: a SQLite file, or a new database on the test PostgreSQL server."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    upgrade_schema(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def repo(engine: Engine) -> SessionRepository:
    return SessionRepository(engine)


def schema_diff(engine: Engine, metadata: sa.MetaData = SQLModel.metadata) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def table_names(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def new_session(name: str = "web", **fields: Any) -> SessionRecord:
    return SessionRecord(name=name, namespace="default", target="pod/mypod", **fields)


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# --- migrations ---------------------------------------------------------------------------


def test_migrations_from_empty_match_the_models(engine: Engine) -> None:
    assert table_names(engine) == {"alembic_version", "sessions", "port_mappings"}
    assert schema_diff(engine) == []


def test_a_model_change_without_a_migration_is_detected(engine: Engine) -> None:
    # The guard above must bite: a column the migrations do not create shows up as a diff.
    changed = sa.MetaData(naming_convention=SQLModel.metadata.naming_convention)
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["sessions"].append_column(sa.Column("ttl_seconds", sa.Integer))
    diff = schema_diff(engine, changed)
    assert [(op[0], op[3].name) for op in diff] == [("add_column", "ttl_seconds")]


def test_migration_constraints(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    (fk,) = inspector.get_foreign_keys("port_mappings")
    assert fk["referred_table"] == "sessions"
    assert fk["constrained_columns"] == ["session_id"]
    assert fk["options"].get("ondelete") == "CASCADE"
    uniques = inspector.get_unique_constraints("port_mappings")
    assert [u["column_names"] for u in uniques] == [["session_id", "position"]]
    # Names are unique per owner (revision 0003), not across owners.
    uniques = inspector.get_unique_constraints("sessions")
    assert [u["column_names"] for u in uniques] == [["owner", "name"]]
    assert "ix_sessions_name" not in {ix["name"] for ix in inspector.get_indexes("sessions")}


def test_downgrade_to_base_and_up_again(db_url: str, engine: Engine) -> None:
    command.downgrade(alembic_config(db_url), "base")
    assert table_names(engine) == {"alembic_version"}
    upgrade_schema(db_url)
    assert table_names(engine) == {"alembic_version", "sessions", "port_mappings"}
    assert schema_diff(engine) == []


def test_upgrade_is_idempotent(db_url: str, repo: SessionRepository) -> None:
    repo.create(new_session(), parse_port_specs(["5000"]))
    upgrade_schema(db_url)
    assert [s.name for s in repo.list()] == ["web"]


def test_url_from_environment_when_config_has_none(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODGATE_DATABASE_URL", db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    command.upgrade(config, "head")
    engine = make_engine(db_url)
    try:
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_percent_sign_in_url_survives_alembic_config(tmp_path: Path) -> None:
    # URLs are percent-encoded; Alembic's ConfigParser would read "%" as interpolation.
    password_url = "postgresql://podgate:p%40ss%25@db.example/podgate"
    assert alembic_config(password_url).get_main_option("sqlalchemy.url") == password_url
    upgrade_schema(f"sqlite:///{tmp_path}/100%25data/podgate.db")
    assert (tmp_path / "100%data" / "podgate.db").is_file()


# --- engine -------------------------------------------------------------------------------


def test_sqlite_pragmas(sqlite_url: str) -> None:
    upgrade_schema(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == 5000
    finally:
        engine.dispose()
    # WAL is a property of the file: any other client sees it too.
    raw = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_engine_usable_from_another_thread(repo: SessionRepository) -> None:
    repo.create(new_session(), parse_port_specs(["5000"]))
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(len(repo.list())))
    thread.start()
    thread.join()
    assert seen == [1]


def test_in_memory_sqlite_needs_no_directory() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


# --- repository ---------------------------------------------------------------------------


def test_create_and_read_back(repo: SessionRepository) -> None:
    before = datetime.now(UTC)
    created = repo.create(
        new_session(addresses=["localhost", "10.0.0.1"], context="kind-kind"),
        parse_port_specs(["5000", "8888:5000", ":6000", "0:7000"]),
    )
    assert len(created.id) == 32
    assert created.status == "pending"
    assert created.transport_requested == "auto"
    assert [(m.position, m.spec, m.local_port, m.remote_port) for m in created.mappings] == [
        (0, "5000", 5000, 5000),
        (1, "8888:5000", 8888, 5000),
        (2, ":6000", 0, 6000),
        (3, "0:7000", 0, 7000),
    ]

    for loaded in (repo.get(created.id), repo.get_by_name("web")):
        assert loaded is not None
        assert loaded.id == created.id
        assert loaded.namespace == "default"
        assert loaded.target == "pod/mypod"
        assert loaded.context == "kind-kind"
        assert loaded.pod is None
        assert loaded.transport is None
        assert loaded.last_error is None
        assert loaded.addresses == ["localhost", "10.0.0.1"]
        assert loaded.options == {}
        assert [m.spec for m in loaded.mappings] == ["5000", "8888:5000", ":6000", "0:7000"]
        assert all(m.session_id == created.id and m.remote_name is None for m in loaded.mappings)
        assert loaded.created_at.tzinfo is not None
        assert loaded.created_at.utcoffset() == timedelta(0)
        assert before <= loaded.created_at <= datetime.now(UTC)
        assert loaded.created_at == created.created_at

    assert repo.get("0" * 32) is None
    assert repo.get_by_name("nope") is None


def test_json_columns_round_trip(repo: SessionRepository) -> None:
    options = {"reconnect": {"max_delay": 30.5, "enabled": True}, "ttl": None, "tags": ["a"]}
    created = repo.create(new_session(options=options), parse_port_specs([":80"]))
    loaded = repo.get(created.id)
    assert loaded is not None
    assert loaded.options == options
    assert loaded.addresses == ["localhost"]


def test_naive_datetimes_are_refused(repo: SessionRepository) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        repo.create(new_session(created_at=datetime(2024, 1, 1)), parse_port_specs(["80"]))


def test_datetimes_in_other_zones_are_stored_as_utc(repo: SessionRepository) -> None:
    plus_two = datetime(2024, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    created = repo.create(new_session(created_at=plus_two), parse_port_specs(["80"]))
    loaded = repo.get(created.id)
    assert loaded is not None
    assert loaded.created_at == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert loaded.created_at.tzinfo == UTC


def test_name_is_unique(repo: SessionRepository, engine: Engine) -> None:
    first = repo.create(new_session("db"), parse_port_specs(["5432"]))
    with pytest.raises(NameConflict) as caught:
        repo.create(new_session("db"), parse_port_specs(["15432:5432", "9187"]))
    assert caught.value.name == "db"
    assert "'db'" in str(caught.value)
    # The failed create left nothing behind.
    assert count_rows(engine, "sessions") == 1
    assert count_rows(engine, "port_mappings") == 1
    assert [s.id for s in repo.list()] == [first.id]


def test_other_integrity_errors_are_not_name_conflicts(repo: SessionRepository) -> None:
    first = repo.create(new_session("a"), parse_port_specs(["80"]))
    with pytest.raises(sa.exc.IntegrityError):
        repo.create(new_session("b", id=first.id), parse_port_specs(["80"]))


def test_delete_cascades_to_mappings(repo: SessionRepository, engine: Engine) -> None:
    kept = repo.create(new_session("kept"), parse_port_specs(["80", "81"]))
    gone = repo.create(new_session("gone"), parse_port_specs(["90", "91", "92"]))
    assert count_rows(engine, "port_mappings") == 5
    assert repo.delete(gone.id) is True
    assert repo.get(gone.id) is None
    assert count_rows(engine, "port_mappings") == 2
    assert repo.delete(gone.id) is False
    assert [m.spec for m in repo.get(kept.id).mappings] == ["80", "81"]  # type: ignore[union-attr]


def test_database_cascade_without_the_orm(repo: SessionRepository, engine: Engine) -> None:
    # Another process (or psql) deleting a row must not leave orphan mappings either.
    created = repo.create(new_session(), parse_port_specs(["80", "81"]))
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM sessions WHERE id = :id"), {"id": created.id})
    assert count_rows(engine, "port_mappings") == 0


def test_mapping_needs_an_existing_session(engine: Engine) -> None:
    with Session(engine) as session, pytest.raises(sa.exc.IntegrityError):
        session.add(PortMappingRecord(session_id="missing", position=0, spec="80", remote_port=80))
        session.commit()


def test_update_status(repo: SessionRepository) -> None:
    created = repo.create(new_session(), parse_port_specs(["80"]))
    failed = repo.update_status(
        created.id, SessionStatus.FAILED, last_error="pod mypod is not running: Pending"
    )
    assert failed is not None
    assert failed.status == "failed"
    assert failed.last_error == "pod mypod is not running: Pending"
    assert failed.updated_at >= created.updated_at

    ready = repo.update_status(created.id, "ready", last_error=None, transport="spdy", pod="mypod")
    assert ready is not None
    assert (ready.status, ready.last_error, ready.transport, ready.pod) == (
        "ready",
        None,
        "spdy",
        "mypod",
    )
    assert [m.spec for m in ready.mappings] == ["80"]

    # Fields not passed keep their value.
    reconnecting = repo.update_status(created.id, SessionStatus.RECONNECTING)
    assert reconnecting is not None
    assert (reconnecting.transport, reconnecting.pod) == ("spdy", "mypod")
    loaded = repo.get(created.id)
    assert loaded is not None
    assert (loaded.status, loaded.transport, loaded.pod) == ("reconnecting", "spdy", "mypod")

    with pytest.raises(ValueError):
        repo.update_status(created.id, "sleeping")
    assert repo.update_status("0" * 32, "ready") is None


def test_save_observed_writes_status_and_counters(repo: SessionRepository) -> None:
    created = repo.create(new_session(), parse_port_specs(["80", "0:81"]))
    assert (created.bytes_in, created.reconnects, created.mappings[1].bytes_out) == (0, 0, 0)
    big = 5 * 2**32  # bytes need 64 bits
    state = ObservedState(
        session_id=created.id,
        status="reconnecting",
        last_error="upstream closed the connection",
        transport="spdy",
        pod="mypod",
        reconnects=2,
        counters=CounterValues(3, 1, big + 10, 20),
        mappings=(CounterValues(2, 0, big, 15), CounterValues(1, 1, 10, 5)),
    )
    missing = ObservedState("0" * 32, "ready", None, None, None, 0, CounterValues(), ())
    assert repo.save_observed([state, missing]) == 1
    loaded = repo.get(created.id)
    assert loaded is not None
    assert (loaded.status, loaded.last_error, loaded.pod, loaded.reconnects) == (
        "reconnecting",
        "upstream closed the connection",
        "mypod",
        2,
    )
    assert CounterValues.of(loaded) == state.counters
    assert [CounterValues.of(m) for m in loaded.mappings] == list(state.mappings)
    assert loaded.updated_at >= created.updated_at
    assert repo.save_observed([]) == 0


def test_set_local_ports_survives_a_restart(repo: SessionRepository, db_url: str) -> None:
    created = repo.create(new_session(), parse_port_specs([":6000", "8888:5000", "0:7000"]))
    updated = repo.set_local_ports(created.id, {0: 42390, 2: 42391})
    assert updated is not None
    assert [m.local_port for m in updated.mappings] == [42390, 8888, 42391]

    # A new process: new engine, same file.
    restarted = make_engine(db_url)
    try:
        loaded = SessionRepository(restarted).get(created.id)
    finally:
        restarted.dispose()
    assert loaded is not None
    assert [(m.spec, m.local_port) for m in loaded.mappings] == [
        (":6000", 42390),
        ("8888:5000", 8888),
        ("0:7000", 42391),
    ]

    with pytest.raises(KeyError):
        repo.set_local_ports(created.id, {3: 1234})
    with pytest.raises(ValueError):
        repo.set_local_ports(created.id, {0: 70000})
    assert repo.set_local_ports("0" * 32, {0: 1}) is None


def test_records_are_detached_and_complete(repo: SessionRepository) -> None:
    created = repo.create(new_session(), parse_port_specs(["80", "81"]))
    for record in (created, repo.get(created.id), repo.list()[0]):
        assert record is not None
        assert sa.inspect(record).detached
        assert [m.spec for m in record.mappings] == ["80", "81"]


def seed(engine: Engine, sessions: int) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with Session(engine) as session:
        for i in range(sessions):
            record = new_session(f"s{i:04d}", created_at=start + timedelta(seconds=sessions - i))
            record.mappings = [
                PortMappingRecord(
                    session_id=record.id, position=p, spec=f":{8000 + p}", remote_port=8000 + p
                )
                for p in range(2)
            ]
            session.add(record)
        session.commit()


def test_list_1000_sessions_in_one_query(repo: SessionRepository, engine: Engine) -> None:
    seed(engine, 1000)
    statements: list[str] = []

    def record_statement(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", record_statement)
    try:
        sessions = repo.list()
        # Reading the mappings afterwards must not query either (no lazy loads, no N+1).
        mapping_count = sum(len(s.mappings) for s in sessions)
    finally:
        event.remove(engine, "before_cursor_execute", record_statement)

    assert len(statements) == 1, statements
    assert len(sessions) == 1000
    assert mapping_count == 2000
    # Oldest first: seed() made later names older.
    assert sessions[0].name == "s0999"
    assert sessions[-1].name == "s0000"
    assert all([m.position for m in s.mappings] == [0, 1] for s in sessions)


def test_empty_list(repo: SessionRepository) -> None:
    assert repo.list() == []


def test_isolated_upgrade_runs_in_a_child_process(db_url: str) -> None:
    from service.store.engine import upgrade_schema_isolated

    upgrade_schema_isolated(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        assert current == ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    finally:
        engine.dispose()


def test_isolated_upgrade_failure_raises_with_the_child_output(tmp_path: Path) -> None:
    from service.store.engine import upgrade_schema_isolated

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RuntimeError, match="schema upgrade failed"):
        upgrade_schema_isolated(f"sqlite:///{blocker / 'sub' / 'podgate.db'}")


def test_isolated_upgrade_of_a_missing_postgres_database_says_so(postgres_url: str) -> None:
    from service.store.engine import upgrade_schema_isolated

    missing = postgres_url.replace("/test_", "/missing_", 1)
    assert missing != postgres_url
    expected = r'(?s)schema upgrade failed.*database "missing_\d+" does not exist'
    with pytest.raises(RuntimeError, match=expected):
        upgrade_schema_isolated(missing)


def test_isolated_upgrade_of_an_in_memory_database_runs_here() -> None:
    from service.store.engine import upgrade_schema_isolated

    # A child process has memory of its own: only an upgrade run in this process reaches
    # this database. A named shared-cache one lives as long as a connection holds it open.
    uri = f"file:podgate-{uuid.uuid4().hex}?mode=memory&cache=shared"
    url = f"sqlite:///{uri}&uri=true"
    keeper = sqlite3.connect(uri, uri=True)
    try:
        tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
        assert keeper.execute(tables).fetchall() == []
        upgrade_schema_isolated(url)
        assert {name for (name,) in keeper.execute(tables)} == {
            "alembic_version",
            "sessions",
            "port_mappings",
        }
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert keeper.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    finally:
        keeper.close()
    upgrade_schema_isolated("sqlite://")  # a private in-memory database: must not fail
