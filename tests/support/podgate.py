"""Real `podgate serve` / `podgate agent` / `podgate forward` processes for end-to-end
tests, an httpx client for the API, and socket-level transfer helpers.

Every wait is bounded: processes are waited on through their output lines, sessions
through the API with a hard deadline::

    with run_agent(["default/echo=netns:/run/netns/x"]) as agent:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
        with run_serve(tmp_path / "data", kubeconfig) as serve, api_client(serve.url) as api:
            session = create_session(api, target="pod/echo", ports=["0:7000"])
            session = wait_for_status(api, session["id"], "ready")
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.echo import RoundTrip, roundtrip
from tests.support.netns import ECHO_SERVER
from tests.support.procs import LineTimeout, ManagedProcess, ProcessFailed

__all__ = [
    "PODGATE",
    "Gate",
    "Podgate",
    "api_client",
    "background_loop",
    "concurrent_roundtrips",
    "connection_refused",
    "create_session",
    "explain_on_failure",
    "free_port",
    "gated_roundtrip",
    "host_echo_server",
    "podgate_env",
    "run_agent",
    "run_serve",
    "start_serve",
    "timed_roundtrip",
    "wait_for_session",
    "wait_for_status",
]

#: How to run the `podgate` command from this checkout (the venv's interpreter).
PODGATE = [sys.executable, "-m", "service.cli"]
LISTENING_RE = r"^Listening on (https?://\S+)$"  # an agent with --tls-cert: https
START_TIMEOUT = 30.0

_CHUNK = 64 * 1024


# --------------------------------------------------------------------------- processes


def podgate_env(
    kubeconfig: Path | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment with no PODGATE_* settings and KUBECONFIG pointing at `kubeconfig`
    (or unset), so a test never reaches ~/.kube or a developer's configuration."""
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    for key in [k for k in env if k.startswith("PODGATE_")]:
        del env[key]
    env.pop("KUBECONFIG", None)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return env


@dataclass
class Podgate:
    """A running podgate process and the URL from its `Listening on` line."""

    process: ManagedProcess
    url: str

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.url.partition("://")[2].rpartition(":")
        return host.strip("[]"), int(port)


@contextlib.contextmanager
def run_agent(
    pods: Sequence[str], *, extra_args: Sequence[str] = (), timeout: float = START_TIMEOUT
) -> Iterator[Podgate]:
    """`podgate agent --listen 127.0.0.1:0 --pod NS/NAME=TARGET ...` until the block ends."""
    args = [*PODGATE, "agent", "--listen", "127.0.0.1:0", *extra_args]
    for pod in pods:
        args += ["--pod", pod]
    with ManagedProcess(args, env=podgate_env(), name="podgate-agent") as proc:
        yield Podgate(proc, proc.wait_for_stdout(LISTENING_RE, timeout)[1])


def start_serve(
    data_dir: Path,
    kubeconfig: Path,
    *,
    extra_args: Sequence[str] = (),
    settings: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Podgate:
    """Start `podgate serve --port 0 --data-dir DIR --kubeconfig FILE` and wait until it
    accepts requests. `settings` are PODGATE_* variables (e.g. PING_INTERVAL_SECONDS).
    The caller stops it (`process.stop()` or SIGKILL)."""
    args = [*PODGATE, "serve", "--port", "0", "--data-dir", str(data_dir)]
    args += ["--kubeconfig", str(kubeconfig), *extra_args]
    env = podgate_env(kubeconfig)
    env.update({f"PODGATE_{k.upper()}": v for k, v in (settings or {}).items()})
    proc = ManagedProcess(args, env=env, name="podgate-serve")
    try:
        return Podgate(proc, proc.wait_for_stdout(LISTENING_RE, timeout)[1])
    except BaseException:
        proc.stop()
        raise


@contextlib.contextmanager
def run_serve(data_dir: Path, kubeconfig: Path, **kwargs: Any) -> Iterator[Podgate]:
    serve = start_serve(data_dir, kubeconfig, **kwargs)
    with serve.process:
        yield serve


@contextlib.contextmanager
def explain_on_failure(*processes: ManagedProcess) -> Iterator[None]:
    """On an exception in the block, print each process's command, status and output
    (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        for proc in processes:
            # A server answers 500 before it logs the traceback: give the log a moment.
            with contextlib.suppress(LineTimeout, ProcessFailed):
                proc.wait_for_stderr(r"^Traceback", 1.0)
            print(proc.describe()[-20_000:])
        raise


# --------------------------------------------------------------------------- the API


def api_client(url: str, *, timeout: float = 10.0) -> httpx.Client:
    """A client for the API at `url`; every request is bounded by `timeout` seconds."""
    return httpx.Client(base_url=url, timeout=timeout)


def create_session(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """POST /sessions (namespace defaults to "default"); asserts the 201."""
    body.setdefault("namespace", "default")
    response = client.post("/sessions", json=body)
    assert response.status_code == 201, f"{response.status_code}: {response.text}"
    session: dict[str, Any] = response.json()
    return session


def wait_for_session(
    client: httpx.Client,
    session_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 20.0,
    what: str = "condition",
) -> dict[str, Any]:
    """Poll GET /sessions/{id} until `predicate(session)` holds; hard deadline `timeout`.

    Raises AssertionError with the last answer when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        response = client.get(f"/sessions/{session_id}")
        if response.status_code == 200:
            session: dict[str, Any] = response.json()
            if predicate(session):
                return session
            last = session
        else:
            last = f"{response.status_code}: {response.text}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"session {session_id}: no {what} within {timeout}s; last: {last}")
        time.sleep(0.05)  # polling interval, bounded by the deadline above


def wait_for_status(
    client: httpx.Client,
    session_id: str,
    status: str | Collection[str],
    *,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Wait until the session's status is `status` (or one of them)."""
    wanted = {status} if isinstance(status, str) else set(status)
    return wait_for_session(
        client,
        session_id,
        lambda s: s["status"] in wanted,
        timeout=timeout,
        what=f"status in {sorted(wanted)}",
    )


# --------------------------------------------------------------------------- sockets


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for fixed-port specs run one after another)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connection_refused(host: str, port: int, *, timeout: float = 5.0) -> bool:
    """Whether a connect to host:port is refused (rather than accepted or timing out)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False


def concurrent_roundtrips(
    host: str, port: int, payloads: Sequence[bytes], *, timeout: float = 30.0
) -> list[RoundTrip]:
    """Open one connection per payload, all at the same time (every connection is
    established before any sends), then round-trip each payload in parallel."""
    barrier = threading.Barrier(len(payloads), timeout=timeout)

    def one(payload: bytes) -> RoundTrip:
        chunks: list[bytes] = []
        with socket.create_connection((host, port), timeout=timeout) as sock:
            barrier.wait()
            sender_error: list[BaseException] = []

            def send() -> None:
                try:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                except BaseException as exc:
                    sender_error.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            try:
                while data := sock.recv(_CHUNK):
                    chunks.append(data)
            finally:
                sender.join(timeout)
            if sender_error:
                raise sender_error[0]
        return RoundTrip(len(payload), b"".join(chunks), hashlib.sha256(payload).hexdigest())

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        return list(pool.map(one, payloads))


class Gate:
    """A transfer that stops half-way until released, so that something else happens
    provably *during* it. `started` is set once the first half has come back."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()


def gated_roundtrip(
    host: str, port: int, payload: bytes, gate: Gate, *, timeout: float = 30.0
) -> RoundTrip:
    """Send the first half of `payload`, read its echo, set `gate.started`, wait for
    `gate.release`, then send the rest, half-close and read until EOF.

    Errors after the gate (e.g. the forwarder was killed) propagate as OSError.
    """
    half = len(payload) // 2
    received = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(payload[:half])
            while len(received) < half:
                data = sock.recv(_CHUNK)
                if not data:
                    raise ConnectionError(f"EOF after {len(received)} of {half} echoed bytes")
                received += data
        finally:
            gate.started.set()  # never leave the other side waiting, even on failure
        if not gate.release.wait(timeout):
            raise TimeoutError("gate not released")
        sender_error: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(payload[half:])
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:
                sender_error.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while data := sock.recv(_CHUNK):
                received += data
        finally:
            sender.join(timeout)
        if sender_error:
            raise sender_error[0]
    return RoundTrip(len(payload), bytes(received), hashlib.sha256(payload).hexdigest())


def timed_roundtrip(host: str, port: int, payload: bytes, *, timeout: float = 60.0) -> float:
    """Round-trip `payload` (asserting it comes back intact); returns the seconds taken."""
    started = time.perf_counter()
    result = roundtrip(host, port, payload, timeout=timeout)
    elapsed = time.perf_counter() - started
    assert result.intact, f"sent {result.sent} bytes, got {len(result.received)} back (or altered)"
    return elapsed


@dataclass
class HostEcho:
    process: ManagedProcess
    host: str
    port: int


@contextlib.contextmanager
def host_echo_server(host: str = "127.0.0.1", *, timeout: float = 10.0) -> Iterator[HostEcho]:
    """tests/support/echo_server.py on this host (a free port on `host`), as its own process.

    Unlike `tests.support.echo.EchoServer` (socketserver's listen backlog of 5, which
    resets connections when 100 arrive at once), it keeps asyncio's backlog of 100, so it
    stands in for a pod under 100 simultaneous connections.
    """
    args = [sys.executable, str(ECHO_SERVER), "--port", "0", "--host", host]
    with ManagedProcess(args, name="echo-server") as proc:
        port = int(proc.wait_for_stdout(r"^READY (\d+)$", timeout)[1])
        yield HostEcho(proc, host, port)


# --------------------------------------------------------------------------- asyncio peers


@contextlib.contextmanager
def background_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An asyncio loop in a daemon thread, for asyncio test peers (e.g. a TLS relay)
    used from synchronous tests: `asyncio.run_coroutine_threadsafe(coro, loop)`."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-peers-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
