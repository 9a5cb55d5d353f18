"""A private, throw-away PostgreSQL server for the tests: Debian's server binaries, a
fresh cluster in a temporary directory, reachable only on a Unix socket in that
directory (no TCP port, so parallel runs on one machine cannot collide).

initdb refuses to run as root, so under root the server runs as the `postgres` OS user
(created by Debian's package) through `runuser`; otherwise as the current user. The
cluster trusts local connections (role `podgate`, no password), never syncs to disk, and
is stopped and deleted at the end. `pg_ctl start -w` returns once the server accepts
connections; `PostgresServer.start` then checks that with a real connection.

The server binaries come from Debian's `postgresql` package (`.ci/run` installs it);
`PODGATE_TEST_PG_BINDIR` may name another directory holding `initdb` and `pg_ctl`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bindir", "private_postgres"]

ROLE = "podgate"
PORT = 5432  # only names the socket file (.s.PGSQL.5432) inside our own directory
INSTALL_HINT = (
    "the PostgreSQL server is needed by the store tests: install Debian's `postgresql` "
    "package (`apt-get install postgresql`; .ci/run does), or set PODGATE_TEST_PG_BINDIR "
    "to a directory holding initdb and pg_ctl"
)
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here; the message says what to install."""


def find_bindir() -> Path:
    """The directory of `initdb` and `pg_ctl`: $PODGATE_TEST_PG_BINDIR, else the newest
    /usr/lib/postgresql/N/bin (Debian keeps them off PATH), else PATH."""
    override = os.environ.get("PODGATE_TEST_PG_BINDIR")
    candidates = [Path(override)] if override else []
    debian = Path("/usr/lib/postgresql")
    if not override and debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    on_path = shutil.which("initdb")
    if not override and on_path:
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    searched = ", ".join(str(c) for c in candidates) or "nowhere"
    raise PostgresUnavailable(f"no initdb and pg_ctl (searched {searched}): {INSTALL_HINT}")


class PostgresServer:
    """One running cluster; `url(database)` gives a SQLAlchemy URL (psycopg 3)."""

    def __init__(self, root: Path, bindir: Path, run_as: str | None) -> None:
        self.root = root  # the socket directory, owned by the server's user
        self.data = root / "data"
        self.log = root / "server.log"
        self.bindir = bindir
        self.run_as = run_as
        self._databases = 0

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bindir / tool), *args]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            self._command(tool, *args),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.is_file() else ""
            raise PostgresUnavailable(
                f"{tool} {' '.join(args[:1])}… failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}{log[-2000:]}"
            )

    def start(self) -> None:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            ROLE,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        options = " ".join(
            [
                f"-k {self.root}",  # the Unix socket directory
                "-c listen_addresses=''",  # no TCP at all
                f"-p {PORT}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=50",
            ]
        )
        data, log = str(self.data), str(self.log)
        self._run("pg_ctl", "start", "--wait", "--timeout=30", "-D", data, "-l", log, "-o", options)
        with self.admin() as connection:  # accepts connections: prove it
            connection.execute("SELECT 1")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "--wait", "-m", "immediate", "-D", str(self.data))

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{ROLE}@/{database}?host={self.root}&port={PORT}"

    @contextlib.contextmanager
    def admin(self) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit psycopg connection to the `postgres` database."""
        with psycopg.connect(
            host=str(self.root), port=PORT, user=ROLE, dbname="postgres", autocommit=True
        ) as connection:
            yield connection

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its name."""
        self._databases += 1
        name = f"{prefix}_{self._databases}".lower()
        assert _NAME.fullmatch(name), name
        with self.admin() as connection:
            # FILE_COPY: half the time of the default (WAL_LOG since 15) without fsync.
            strategy = " STRATEGY FILE_COPY" if connection.info.server_version >= 150000 else ""
            connection.execute(f'CREATE DATABASE "{name}"{strategy}'.encode())
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending any connection a test left open."""
        assert _NAME.fullmatch(name), name
        with self.admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _server_user() -> str | None:
    """Who runs the server: `postgres` when we are root (initdb refuses root), else us."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, but there is no `postgres` user: {INSTALL_HINT}"
        ) from None
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root needs `runuser` (Debian package util-linux)")
    return "postgres"


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresServer]:
    """Start a private server, yield it, then stop it and delete its files."""
    bindir = find_bindir()
    run_as = _server_user()
    # Not under pytest's tmp_path: that one is 0700 root, which `postgres` cannot enter.
    root = Path(tempfile.mkdtemp(prefix="podgate-pg-"))
    try:
        if run_as is not None:
            user = pwd.getpwnam(run_as)
            os.chown(root, user.pw_uid, user.pw_gid)
        server = PostgresServer(root, bindir, run_as)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
