"""Build and run the Go SPDY port-forward peer (``tests/interop/spdyserver``).

:func:`build_spdyserver` compiles the server with the Debian-packaged Go
toolchain in GOPATH mode (no network, no modules) into ``tests/interop/bin/``,
and only when a ``.go`` source is newer than the binary. :func:`run_spdyserver`
starts it and waits for its ``Listening on http://HOST:PORT`` line.

``python -m tests.interop.build`` builds and prints the binary's path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import ManagedProcess

__all__ = [
    "BINARY",
    "DEBIAN_PACKAGES",
    "SpdyServer",
    "SpdyServerBuildError",
    "build_spdyserver",
    "run_spdyserver",
]

INTEROP_DIR = Path(__file__).resolve().parent
SOURCE_DIR = INTEROP_DIR / "spdyserver"
BIN_DIR = INTEROP_DIR / "bin"
BINARY = BIN_DIR / "spdyserver"

#: Where Debian installs Go library sources; override with ``PODGATE_GOPATH``.
DEFAULT_GOPATH = "/usr/share/gocode"

#: Everything the build needs, as Debian packages.
DEBIAN_PACKAGES = (
    "golang-go",
    "golang-github-docker-spdystream-dev",
    "golang-github-gorilla-websocket-dev",
)

# Import path -> Debian package providing it under $GOPATH/src.
_GO_DEPENDENCIES = {
    "github.com/moby/spdystream": "golang-github-docker-spdystream-dev",
    "github.com/gorilla/websocket": "golang-github-gorilla-websocket-dev",
}

_LISTENING_RE = re.compile(r"^Listening on (http://(\S+):(\d+))$")


class SpdyServerBuildError(RuntimeError):
    """The Go toolchain or a Go dependency is missing, or compilation failed."""


def _install_hint(packages: Sequence[str]) -> str:
    return f"install the Debian packages: apt-get install {' '.join(packages)}"


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.go"))


def _is_fresh(binary: Path, sources: Sequence[Path]) -> bool:
    try:
        built = binary.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(src.stat().st_mtime_ns <= built for src in sources)


def build_spdyserver(*, force: bool = False) -> Path:
    """Return the path of an up-to-date ``spdyserver`` binary, building it if needed.

    The binary is rebuilt when it is missing, when any ``.go`` file in the source
    directory is newer, or when ``force`` is true. The build writes to a temporary
    file in ``tests/interop/bin/`` and ``os.replace``-s it into place, so concurrent
    test runs never see a half-written binary.

    Raises:
        SpdyServerBuildError: ``go`` or a Go dependency is missing (the message names
            the Debian packages to install) or ``go build`` failed (with its output).
    """
    sources = _sources()
    if not sources:
        raise SpdyServerBuildError(f"no Go sources in {SOURCE_DIR}")
    if not force and _is_fresh(BINARY, sources):
        return BINARY

    go = shutil.which("go")
    if go is None:
        raise SpdyServerBuildError(f"`go` is not on PATH; {_install_hint(DEBIAN_PACKAGES)}")
    gopath = os.environ.get("PODGATE_GOPATH", DEFAULT_GOPATH)
    missing = [
        package
        for import_path, package in _GO_DEPENDENCIES.items()
        if not (Path(gopath) / "src" / import_path).is_dir()
    ]
    if missing:
        raise SpdyServerBuildError(
            f"Go sources missing under GOPATH={gopath}/src "
            f"({', '.join(p for p, pkg in _GO_DEPENDENCIES.items() if pkg in missing)}); "
            f"{_install_hint(missing)}"
        )

    BIN_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=gopath,
        GOFLAGS="",
        CGO_ENABLED="0",
        GOCACHE=os.environ.get("GOCACHE") or str(BIN_DIR / ".gocache"),
    )
    fd, tmp_name = tempfile.mkstemp(prefix=".spdyserver.", suffix=".tmp", dir=BIN_DIR)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = subprocess.run(
            [go, "build", "-o", str(tmp), "."],
            cwd=SOURCE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise SpdyServerBuildError(
                f"go build of {SOURCE_DIR} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        tmp.chmod(0o755)
        os.replace(tmp, BINARY)
    finally:
        tmp.unlink(missing_ok=True)
    return BINARY


@dataclass
class SpdyServer:
    """A running spdyserver: its process (stderr is the log) and its address."""

    process: ManagedProcess
    url: str
    host: str
    port: int


@contextmanager
def run_spdyserver(
    *,
    tunnel: bool = False,
    listen: str = "127.0.0.1:0",
    target_host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    timeout: float = 10.0,
) -> Iterator[SpdyServer]:
    """Build if needed, start spdyserver, and wait until it listens.

    Args:
        tunnel: pass ``--tunnel`` (accept the SPDY-over-WebSocket tunnel).
        listen: ``HOST:PORT`` to listen on; port 0 picks a free one.
        target_host: host dialled for forwarded ports.
        extra_args: more command-line flags (e.g. ``--stream-creation-timeout=2s``).
        timeout: seconds to wait for the ``Listening on`` line.

    The server is stopped with SIGTERM when the block exits.
    """
    binary = build_spdyserver()
    args = [
        str(binary),
        "--listen",
        listen,
        "--target-host",
        target_host,
        *(["--tunnel"] if tunnel else []),
        *extra_args,
    ]
    with ManagedProcess(args, name="spdyserver") as proc:
        match = proc.wait_for_stdout(_LISTENING_RE, timeout)
        yield SpdyServer(process=proc, url=match[1], host=match[2], port=int(match[3]))


if __name__ == "__main__":
    print(build_spdyserver())
