"""Issue 11 with real `podgate serve` processes: the start-up checks (no authentication
beyond loopback, which authentication is on), what reaches the API over real sockets
(DNS rebinding, malformed requests, oversized bodies and podgate's RSS), slow clients
(request-head deadline, idle keep-alive, a bounded slowloris), the limits as flags and
PODGATE_* variables, and file descriptors under a low RLIMIT_NOFILE.

Sleeps here are the scenario (a client that dribbles or stays silent), never a wait for
something to happen: those wait on output lines, sockets and the API with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.kube import write_kubeconfig
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    START_TIMEOUT,
    Podgate,
    api_client,
    host_echo_server,
    podgate_env,
    run_agent,
    wait_for_session,
    wait_for_status,
)
from tests.support.procs import ManagedProcess
from tests.support.sse import HttpEventStream

pytestmark = pytest.mark.timeout(120)

TOKENS = 'alice-token,alice,uid-alice\nroot-token,root,uid-root,"podgate:admin"\n'
PROBLEM_JSON = "application/problem+json"
WAIT = 20.0


@contextlib.contextmanager
def serve(
    tmp_path: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    kubeconfig: Path | None = None,
) -> Iterator[Podgate]:
    """`podgate serve --port 0 --data-dir ... ARGS` (with `--demo` unless a kubeconfig is
    given), running until the block ends."""
    command = [*prefix, *PODGATE, "serve", "--port", "0", "--data-dir", str(tmp_path / "data")]
    command += ["--demo"] if kubeconfig is None else ["--kubeconfig", str(kubeconfig)]
    environment = podgate_env(kubeconfig)
    environment.update(env or {})
    with ManagedProcess([*command, *args], env=environment, name="podgate-serve") as proc:
        yield Podgate(proc, proc.wait_for_stdout(LISTENING_RE, START_TIMEOUT)[1])


def exchange_raw(port: int, data: bytes, *, timeout: float = WAIT) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return bytes(received)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match[1])


# ------------------------------------------------------------------------ start-up


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_no_authentication_beyond_loopback_exits_2(tmp_path: Path, host: str) -> None:
    command = [*PODGATE, "serve", "--host", host, "--port", "0", "--demo"]
    command += ["--data-dir", str(tmp_path / "data")]
    with ManagedProcess(command, env=podgate_env(), name="podgate-serve") as proc:
        assert proc.wait(START_TIMEOUT) == 2, proc.describe()
    stderr = proc.stderr_text()
    assert f"refusing to listen on {host} without authentication" in stderr
    assert "--token-file FILE" in stderr and "--auth kubernetes" in stderr
    assert "Listening on" not in proc.stdout_text()
    assert not (tmp_path / "data").exists()  # it stopped before doing anything


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_beyond_loopback_with_a_token_file_and_the_start_up_line(tmp_path: Path, how: str) -> None:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(TOKENS)
    flag = ["--token-file", str(tokens)] if how == "flag" else []
    env = {"PODGATE_TOKEN_FILE": str(tokens)} if how == "variable" else {}
    with serve(tmp_path, "--host", "0.0.0.0", *flag, env=env) as podgate:
        assert podgate.url.startswith("http://0.0.0.0:")
        podgate.process.wait_for_stderr(
            rf"authentication: bearer tokens from {re.escape(str(tokens))} \(2 tokens\)", 5
        )
        port = podgate.host_port[1]
        with api_client(f"http://127.0.0.1:{port}") as api:
            refused = api.get("/sessions")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            mine = api.get("/sessions", headers={"Authorization": "Bearer alice-token"})
            assert mine.status_code == 200, mine.text


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ((), "authentication: none (loopback only)"),
        (("--auth", "kubernetes"), "authentication: bearer tokens checked by the cluster"),
    ],
)
def test_start_up_says_which_authentication_is_on(
    tmp_path: Path, args: tuple[str, ...], line: str
) -> None:
    with serve(tmp_path, *args) as podgate:
        podgate.process.wait_for_stderr(re.escape(line), 5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the token file"),
        ("# only a comment\n\n", "has no token"),
        ("only-a-token\n", "expected token,user,uid"),
        ("t,alice,1\nt,bob,2\n", "is repeated"),
        ("t, ,1\n", "expected token,user,uid"),  # a blank user would own "" (no auth)
        (" ,alice,1\n", "expected token,user,uid"),
    ],
)
def test_a_token_file_that_cannot_be_used_exits_2(
    tmp_path: Path, content: str | None, message: str
) -> None:
    tokens = tmp_path / "tokens.csv"
    if content is not None:
        tokens.write_text(content)
    command = [*PODGATE, "serve", "--port", "0", "--demo", "--token-file", str(tokens)]
    command += ["--data-dir", str(tmp_path / "data")]
    with ManagedProcess(command, env=podgate_env(), name="podgate-serve") as proc:
        assert proc.wait(START_TIMEOUT) == 2, proc.describe()
    assert message in proc.stderr_text()


# ------------------------------------------------------------------------ requests


def test_dns_rebinding_and_malformed_requests_over_real_sockets(tmp_path: Path) -> None:
    with serve(tmp_path) as podgate:
        port = podgate.host_port[1]
        body = b'{"target": "pod/hello", "ports": ["0:8080"]}'
        # A page on evil.example whose name now resolves to 127.0.0.1.
        for request in [
            b"POST /sessions HTTP/1.1\r\nHost: evil.example:8080\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body),
            b"GET /sessions HTTP/1.1\r\nHost: evil.example:8080\r\nConnection: close\r\n\r\n",
            b"DELETE /sessions/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        ]:
            status, headers, answer = parse_response(exchange_raw(port, request))
            assert (status, headers["content-type"]) == (421, PROBLEM_JSON), answer
            assert "evil.example" in json.loads(answer)["detail"]
        # Not HTTP at all, or no Host (HTTP/1.1 requires it): 400, as problem+json too.
        huge_head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: %s\r\n\r\n" % (
            b"a" * 200_000  # h11 refuses an incomplete head past 64 KiB
        )
        for request in [b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/1.1\r\n\r\n", huge_head]:
            status, headers, answer = parse_response(exchange_raw(port, request))
            assert (status, headers["content-type"]) == (400, PROBLEM_JSON), answer
            assert json.loads(answer)["status"] == 400
        with api_client(podgate.url) as api:
            assert api.get("/sessions").json()["count"] == 0


def push(sock: socket.socket, total: int, chunk: bytes) -> int:
    """Send up to `total` bytes of `chunk`s until the peer stops taking them; bytes sent."""
    sent = 0
    with contextlib.suppress(OSError):
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    return sent


def test_bodies_over_1_mib_are_refused_without_growing_rss(tmp_path: Path) -> None:
    """The issue's report: a 100 MB body was parsed into 385 MB of RSS."""
    hundred_mb = 100 * 1000 * 1000
    with serve(tmp_path) as podgate:
        port, pid = podgate.host_port[1], podgate.process.pid
        with api_client(podgate.url) as api:
            assert api.get("/healthz").status_code == 200
        before = rss_kib(pid)
        # Content-Length: the answer comes on the head alone, before any body byte is sent.
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(
                b"POST /sessions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % hundred_mb
            )
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 413 "), head
            pushed = push(sock, hundred_mb, b"x" * 65536)
        assert pushed < hundred_mb // 4, pushed  # the server closed: it did not read on
        # Chunked: refused once past 1 MiB, the rest is not read.
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(
                b"POST /sessions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"10000\r\n" + b"y" * 0x10000 + b"\r\n"
            answer = bytearray()
            reader = threading.Thread(target=lambda: answer.extend(read_all(sock)), daemon=True)
            reader.start()
            pushed = push(sock, hundred_mb, chunk)
            reader.join(WAIT)
        status, headers, body = parse_response(bytes(answer))
        assert (status, headers["content-type"]) == (413, PROBLEM_JSON), answer[:300]
        assert "larger than 1048576 bytes" in json.loads(body)["detail"]
        assert pushed < hundred_mb // 4, pushed
        grown = rss_kib(pid) - before
        assert grown < 20 * 1024, f"RSS grew by {grown} KiB"
        with api_client(podgate.url) as api:
            assert api.get("/sessions").json()["count"] == 0


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, read off a connection that stays open."""
    received = bytearray()
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {bytes(received)!r}"
        received += chunk
    status, headers, body = parse_response(bytes(received))
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {bytes(received)!r}"
        body += chunk
    return status, headers, body


def read_all(sock: socket.socket) -> bytes:
    received = bytearray()
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


# ------------------------------------------------------------------------ slow clients


def seconds_until_closed(sock: socket.socket, started: float, *, limit: float = WAIT) -> float:
    """Read (expecting nothing more) until the server closes; seconds since `started`."""
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return time.monotonic() - started


def test_request_head_deadline_and_idle_keep_alive(tmp_path: Path) -> None:
    env = {"PODGATE_HEADER_TIMEOUT_SECONDS": "1", "PODGATE_KEEPALIVE_TIMEOUT_SECONDS": "2.5"}
    with serve(tmp_path, env=env) as podgate:
        port = podgate.host_port[1]
        # Silent after connecting: closed at the head deadline.
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            elapsed = seconds_until_closed(sock, time.monotonic())
        assert 0.9 <= elapsed < 4, elapsed
        # Dribbling a head, a byte every 0.1 s (the scenario): every byte does not extend it.
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            started = time.monotonic()
            head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200
            with contextlib.suppress(OSError):
                for byte in head:
                    sock.send(bytes([byte]))
                    time.sleep(0.1)
                    if time.monotonic() - started > 5:
                        break
            elapsed = seconds_until_closed(sock, started)
        assert 0.9 <= elapsed < 4, elapsed
        # Keep-alive: the connection serves a second request, then is closed once idle for
        # 2.5 s (uvicorn got int(2.5) = 2 s before; 0.5 became 0: no keep-alive at all).
        request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            for _ in range(2):
                sock.sendall(request)
                assert read_response(sock)[0] == 200
                answered = time.monotonic()
                time.sleep(0.5)  # the scenario: a client that pauses between requests
            elapsed = seconds_until_closed(sock, answered)
        assert 2.4 <= elapsed < 6, elapsed


def test_a_body_dribbled_after_its_head_is_408_and_closed(tmp_path: Path) -> None:
    """The slowloris of bodies: a complete head announcing 100 bytes, then a byte every
    0.2 s (the scenario). It held the connection (and its task) for as long as it went on."""
    env = {"PODGATE_HEADER_TIMEOUT_SECONDS": "1"}
    with serve(tmp_path, env=env) as podgate:
        port = podgate.host_port[1]
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(
                b"POST /sessions HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            started = time.monotonic()
            sock.settimeout(0.2)
            answer = bytearray()
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                while time.monotonic() - started < 6:
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        sock.send(b" ")
                        continue
                    if not chunk:
                        break
                    answer += chunk
            elapsed = time.monotonic() - started
        assert answer, f"no answer after {elapsed:.1f} s: the slow body still holds it"
        status, headers, body = parse_response(bytes(answer))
        assert (status, headers["content-type"]) == (408, PROBLEM_JSON), bytes(answer)
        assert "did not arrive within 1 s" in json.loads(body)["detail"]
        assert 0.9 <= elapsed < 4, elapsed
        with api_client(podgate.url) as api:
            assert api.get("/sessions").json()["count"] == 0


async def dribble(port: int, deadline: float) -> float:
    """A slowloris connection: a request head, one byte every 0.25 s (the scenario), until
    the server closes it; returns the seconds it stayed open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000
    try:
        for byte in head:
            writer.write(bytes([byte]))
            try:
                async with asyncio.timeout(0.25):
                    if await reader.read(1) == b"":
                        break  # closed by the server
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the slow connection was never closed")
        return time.monotonic() - started
    except ConnectionResetError:
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def test_a_slowloris_of_200_connections_does_not_stop_the_api(tmp_path: Path) -> None:
    header_timeout = 3.0
    env = {"PODGATE_HEADER_TIMEOUT_SECONDS": str(header_timeout)}
    with serve(tmp_path, env=env) as podgate:
        port = podgate.host_port[1]

        async def attack_and_use() -> tuple[list[float], list[float]]:
            deadline = time.monotonic() + 30
            slow = [asyncio.create_task(dribble(port, deadline)) for _ in range(200)]
            answered: list[float] = []
            async with httpx.AsyncClient(base_url=podgate.url, timeout=5) as client:
                await asyncio.sleep(0.5)  # the scenario: all 200 are connected and dribbling
                for _ in range(5):
                    started = time.monotonic()
                    response = await client.get("/sessions")
                    assert response.status_code == 200, response.text
                    answered.append(time.monotonic() - started)
                    health = await client.get("/healthz")
                    assert health.status_code == 200
            return await asyncio.gather(*slow), answered

        open_for, answered = asyncio.run(attack_and_use())
        assert max(answered) < 2, answered
        # Every slow connection was closed at the head deadline.
        assert all(header_timeout - 0.2 <= t < header_timeout + 5 for t in open_for), sorted(
            open_for
        )
        with api_client(podgate.url) as api:
            assert api.get("/healthz").status_code == 200


# ------------------------------------------------------------------------ limits


@pytest.mark.parametrize("how", ["flags", "variables"])
def test_the_limits_as_flags_and_variables(tmp_path: Path, how: str) -> None:
    limits = {
        "max-sessions": "1",
        "max-listeners-per-session": "2",
        "max-connections-per-session": "1",
        "max-event-subscribers": "1",
    }
    if how == "flags":
        args = [part for name, value in limits.items() for part in (f"--{name}", value)]
        env: dict[str, str] = {}
    else:
        args = []
        env = {f"PODGATE_{name.upper().replace('-', '_')}": v for name, v in limits.items()}
    with serve(tmp_path, *args, env=env) as podgate, api_client(podgate.url) as api:

        def create(**body: Any) -> httpx.Response:
            return api.post("/sessions", json={"target": "pod/hello", **body})

        first = create(ports=["0:8080"])  # 127.0.0.1 and ::1: 2 listeners, the most
        assert first.status_code == 201, first.text
        assert create(ports=["0:8080"], addresses=["127.0.0.1"]).status_code == 429
        assert api.delete(f"/sessions/{first.json()['id']}").status_code == 204
        listeners = create(ports=["0:8080", "0:8080"])  # 4 listeners
        assert listeners.status_code == 422, listeners.text
        assert "--max-listeners-per-session" in listeners.json()["detail"]
        session = create(ports=["0:8080"], addresses=["127.0.0.1"]).json()
        wait_for_status(api, session["id"], "ready")
        local = session["ports"][0]["local_port"]
        with socket.create_connection(("127.0.0.1", local), timeout=WAIT):
            wait_for_session(api, session["id"], lambda s: s["connections_active"] == 1)
            with socket.create_connection(("127.0.0.1", local), timeout=WAIT) as second:
                assert read_all(second) == b""  # accepted, closed at once
            counted = wait_for_session(api, session["id"], lambda s: s["connections_refused"] == 1)
            assert counted["ports"][0]["counters"]["connections_refused"] == 1
        with HttpEventStream(podgate.url, "/events") as stream:
            assert stream.status == 200
            second_stream = api.get("/events")
            assert second_stream.status_code == 429
            assert second_stream.headers["content-type"] == PROBLEM_JSON


# ------------------------------------------------------------------------ descriptors


def test_a_connection_flood_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    """serve raises the soft RLIMIT_NOFILE to the hard one; with 256 descriptors, a session
    flooded with 400 local connections refuses (and counts) those that would eat into the
    reserve, and the API still answers /healthz, GET /sessions and DELETE."""
    hard = 256
    soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:  # the test process holds the 400 client sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(own_hard, 4096), own_hard))
    with (
        host_echo_server("127.0.0.2") as echo,
        run_agent([f"default/echo=host:{echo.host}"]) as agent,
    ):
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
        prlimit = ["prlimit", f"--nofile=64:{hard}", "--"]
        with serve(tmp_path, prefix=prlimit, kubeconfig=kubeconfig) as podgate:
            limits = Path(f"/proc/{podgate.process.pid}/limits").read_text()
            assert re.search(rf"^Max open files\s+{hard}\s+{hard}\s", limits, re.MULTILINE), limits
            with api_client(podgate.url) as api:
                created = api.post(
                    "/sessions",
                    json={
                        "target": "pod/echo",
                        "ports": [f"0:{echo.port}"],
                        "addresses": ["127.0.0.1"],
                    },
                )
                assert created.status_code == 201, created.text
                session = wait_for_status(api, created.json()["id"], "ready")
                local = session["ports"][0]["local_port"]
                clients: list[socket.socket] = []
                try:
                    for _ in range(400):
                        clients.append(socket.create_connection(("127.0.0.1", local), timeout=WAIT))
                    flooded = wait_for_session(
                        api,
                        session["id"],
                        lambda s: s["connections_active"] + s["connections_refused"] == 400,
                        what="every connection forwarded or refused",
                    )
                    reserve = 32
                    assert flooded["connections_refused"] > 0, flooded
                    assert flooded["connections_active"] < hard - reserve, flooded
                    assert (
                        flooded["ports"][0]["counters"]["connections_refused"]
                        == flooded["connections_refused"]
                    )
                    # The forwarded ones work; the API answers while all 400 are held.
                    assert api.get("/healthz").status_code == 200
                    assert api.get("/sessions").json()["count"] == 1
                    assert api.delete(f"/sessions/{session['id']}").status_code == 204
                    assert api.get("/healthz").json()["sessions"] == 0
                finally:
                    for client in clients:
                        client.close()
            assert podgate.process.returncode is None, podgate.process.describe()
