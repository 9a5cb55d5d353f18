"""Fixtures for every test directory: a private PostgreSQL server (one per test session)
and an empty database on it per test (tests/support/postgres.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, PostgresUnavailable, private_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started on first use and stopped at the end."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(private_postgres())
        except PostgresUnavailable as exc:
            problem = str(exc)  # failed outside the except block: no chained traceback
        else:
            problem = ""
        if problem:
            pytest.fail(problem, pytrace=False)
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database, dropped after the test."""
    name = postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)
