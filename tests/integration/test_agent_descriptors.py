"""File descriptors running out (issue 11), in real processes started with a low
``RLIMIT_NOFILE`` (``prlimit``): the agent and `podgate serve` raise the soft limit to the
hard one, keep a reserve, and come back once the load is gone.

The agent: client connections whose descriptor falls into the reserve are refused (the
reserve is for the forwarded connections of the connections already open); once the
pods' sockets take the last descriptors, a pair that cannot be dialled gets the error
on its error stream and ends (SPDY: the error text, HTTP/2: ``502`` and the text; the
netns dial as well as the host one), the other pairs go on, and nothing is kept: when the
pairs end every descriptor comes back and the agent serves new connections.

Through a podgate session: the agent's failed dials close those local connections only,
counted as errors, and ``connections_active`` comes back to 0; and `podgate serve` itself
under a low limit refuses local connections beyond its reserve (``connections_refused``)
while its API still answers.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.echo import EchoServer, echo_server, roundtrip
from tests.support.h2link import H2Link
from tests.support.kube import write_kubeconfig
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    Podgate,
    api_client,
    create_session,
    podgate_env,
    run_agent,
    run_serve,
    wait_for_session,
    wait_for_status,
)
from tests.support.procs import ManagedProcess
from tests.support.spdy_client import ConnectionClosed, HttpConnection, SpdyClient, spdy_session

pytestmark = pytest.mark.timeout(90)

AGENT_LIMIT = 160  # reserve: 32 (at least 32, or 5 %)
SERVE_LIMIT = 256
RESERVE = 32
MISSING_NETNS = f"/run/netns/podgate-fds-{os.getpid()}-absent"


@pytest.fixture(scope="module")
def local_echo() -> Iterator[EchoServer]:
    with echo_server() as server:
        yield server


def _limited(args: list[str], soft: int, hard: int) -> list[str]:
    """``args`` started with RLIMIT_NOFILE soft:hard (prlimit execs it: same pid)."""
    return ["prlimit", f"--nofile={soft}:{hard}", "--", *args]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)  # polling /proc, bounded by the deadline


@pytest.fixture
def low_limit_agent() -> Iterator[Podgate]:
    args = [*PODGATE, "agent", "--listen", "127.0.0.1:0", "--pod", "default/echo=host:127.0.0.1"]
    args += ["--pod", f"default/netns=netns:{MISSING_NETNS}"]
    with ManagedProcess(
        _limited(args, 64, AGENT_LIMIT), env=podgate_env(), name="podgate-agent"
    ) as proc:
        agent = Podgate(proc, proc.wait_for_stdout(LISTENING_RE, 30)[1])
        yield agent
        assert "Traceback" not in proc.stderr_text(), proc.describe()


# ---------------------------------------------------------------------- the agent


async def _refused(port: int) -> bool:
    """Whether a new client connection is refused: accepted by the kernel, then closed
    or reset without an answer."""
    try:
        conn = await HttpConnection.open(port)
        try:
            await conn.request("GET", "/version", timeout=10)
        finally:
            await conn.close()
    except (ConnectionClosed, ConnectionError):
        return True
    return False


async def _open_pairs(
    client: SpdyClient, port: int, first: int, count: int
) -> list[tuple[int, int]]:
    """``count`` pairs opened at once, each sent "ping"; their stream ids."""
    pairs = []
    for request in range(first, first + count):
        common = [("port", str(port)), ("requestid", str(request))]
        error = client.open_stream([("streamtype", "error"), *common], fin=True)
        data = client.open_stream([("streamtype", "data"), *common])
        client.send(data, b"ping")
        pairs.append((error, data))
    await client.drain()
    return pairs


async def _outcome(client: SpdyClient, pair: tuple[int, int]) -> str:
    """ "echo" (the pod answered and the pair is open) or the error stream's text (the
    pair has ended)."""
    error, data = pair
    record = client.streams[data]
    await client.wait_for(
        lambda: bytes(record.data) == b"ping" or record.finished, f"pair {pair}", 20
    )
    if bytes(record.data) == b"ping":
        return "echo"
    return bytes((await client.wait_finished(error, 20)).data).decode()  # then RST CANCEL


async def test_agent_out_of_descriptors_refuses_reports_and_recovers(
    low_limit_agent: Podgate, local_echo: EchoServer
) -> None:
    agent, port = low_limit_agent, low_limit_agent.host_port[1]
    pid = agent.process.pid
    assert _nofile(pid) == (AGENT_LIMIT, AGENT_LIMIT), "the soft limit was not raised"
    idle = _fds(pid)
    host, _ = agent.host_port
    async with (
        spdy_session(port, "/portForward/default/echo") as spdy,
        H2Link.connect(host, port) as link,
    ):
        # Fill up to just inside the reserve: the pods' sockets may take it, a new client
        # connection may not.
        fill = AGENT_LIMIT - RESERVE + 4 - _fds(pid)
        pairs = await _open_pairs(spdy, local_echo.port, 0, fill)
        assert [await _outcome(spdy, p) for p in pairs] == ["echo"] * fill
        assert await _refused(port)
        agent.process.wait_for_stderr("refusing a connection: file descriptors run out", 10)

        # Past the last descriptor: the pairs that cannot be dialled get the error and end.
        more = await _open_pairs(spdy, local_echo.port, fill, RESERVE)
        outcomes = [await _outcome(spdy, p) for p in more]
        failed = [text for text in outcomes if text != "echo"]
        assert 0 < len(failed) < RESERVE, outcomes  # about 4: 132 + 32 descriptors > 160
        pod_error = f"dial tcp4 127.0.0.1:{local_echo.port}: socket: too many open files"
        assert all(text.endswith(pod_error) for text in failed), failed
        pair = await link.open_pair("default", "echo", local_echo.port)
        assert (await link.status(pair.error), await link.status(pair.data)) == (200, 502)
        assert (await link.read_all(pair.error)).decode().endswith(pod_error)
        # A pod in a network namespace: the dial fails entering it.
        pair = await link.open_pair("default", "netns", 7000)
        assert (await link.status(pair.error), await link.status(pair.data)) == (200, 502)
        netns_error = "cannot enter namespace: too many open files"
        assert netns_error in (await link.read_all(pair.error)).decode()

        # The load goes: every pair ends, every descriptor comes back.
        for _, data in pairs + more:
            if not spdy.streams[data].finished:
                spdy.end_stream(data)
        for _, data in pairs + more:
            await spdy.wait_finished(data, 20)
        _wait_until(lambda: _fds(pid) <= idle + 2, 10, "the pairs' descriptors freed")
        echoed = await _echo_pair(spdy, local_echo.port, 10_000)
        assert echoed == "echo"
        pair = await link.open_pair("default", "echo", local_echo.port)
        await link.send(pair.data, b"h2 again", end=True)
        assert await link.read_all(pair.data) == b"h2 again"
    assert not await _refused(port)
    _wait_until(lambda: _fds(pid) <= idle, 10, "the client connections' descriptors freed")


async def _echo_pair(client: SpdyClient, port: int, request: int) -> str:
    (pair,) = await _open_pairs(client, port, request, 1)
    outcome = await _outcome(client, pair)
    client.end_stream(pair[1])
    await client.wait_finished(pair[1], 20)
    return outcome


# ---------------------------------------------------------------------- through podgate serve


def _ping(sock: socket.socket) -> str:
    """ "echo" if the connection echoes a ping, "closed" if it was closed or reset."""
    try:
        sock.sendall(b"ping")
        answer = sock.recv(4)
    except ConnectionError:
        return "closed"
    return "echo" if answer == b"ping" else "closed"


def _session_ready(api: httpx.Client, port: int) -> tuple[str, int]:
    session = create_session(api, target="pod/echo", ports=[f"0:{port}"], transport="spdy")
    session = wait_for_status(api, session["id"], "ready")
    return session["id"], session["ports"][0]["local_port"]


def test_a_session_through_an_agent_out_of_descriptors(
    low_limit_agent: Podgate, local_echo: EchoServer, tmp_path: Path
) -> None:
    """200 local connections at once; the agent has descriptors for about 145 of their
    pods' sockets: the others are closed and counted as errors, with the agent's text,
    and once they are gone the session counts no active connection and forwards again."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", low_limit_agent.url)
    with run_serve(tmp_path / "data", kubeconfig) as serve, api_client(serve.url) as api:
        session_id, local = _session_ready(api, local_echo.port)
        socks = [socket.create_connection(("127.0.0.1", local), timeout=20) for _ in range(200)]
        try:
            with ThreadPoolExecutor(max_workers=50) as pool:
                outcomes = list(pool.map(_ping, socks))
            closed = outcomes.count("closed")
            assert 0 < closed < 200, outcomes
            session = api.get(f"/sessions/{session_id}").json()
            assert session["connection_errors"] >= closed, session
            assert "socket: too many open files" in session["last_error"], session
            assert session["status"] == "ready", session
        finally:
            for sock in socks:
                sock.close()
        wait_for_session(
            api, session_id, lambda s: s["connections_active"] == 0, what="no active connection"
        )
        assert roundtrip("127.0.0.1", local, os.urandom(1 << 20), timeout=30).intact


def test_serve_out_of_descriptors_refuses_local_connections_and_still_answers(
    local_echo: EchoServer, tmp_path: Path
) -> None:
    """serve with RLIMIT_NOFILE 64:256 (raised to 256, a reserve of 32): local connections
    whose descriptor falls into the reserve are refused and counted, the API answers
    meanwhile, and afterwards the session forwards again."""
    with run_agent(["default/echo=host:127.0.0.1"]) as agent:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
        args = [*PODGATE, "serve", "--port", "0", "--data-dir", str(tmp_path / "data")]
        args += ["--kubeconfig", str(kubeconfig)]
        with ManagedProcess(
            _limited(args, 64, SERVE_LIMIT), env=podgate_env(kubeconfig), name="podgate-serve"
        ) as proc:
            url = proc.wait_for_stdout(LISTENING_RE, 30)[1]
            assert _nofile(proc.pid) == (SERVE_LIMIT, SERVE_LIMIT), "the soft limit was not raised"
            with api_client(url) as api:
                session_id, local = _session_ready(api, local_echo.port)
                free = SERVE_LIMIT - RESERVE - _fds(proc.pid)
                socks = []
                try:
                    # One at a time: a refused connection's descriptor is the next one's.
                    outcomes = []
                    for _ in range(free + 8):
                        sock = socket.create_connection(("127.0.0.1", local), timeout=20)
                        socks.append(sock)
                        outcomes.append(_ping(sock))
                    # (serve may open or close a descriptor of its own meanwhile: give or take)
                    refused = outcomes.count("closed")
                    assert refused >= 4 and outcomes[: free - 4] == ["echo"] * (free - 4), outcomes
                    assert api.get("/healthz").status_code == 200
                    session = api.get(f"/sessions/{session_id}").json()
                    assert session["connections_refused"] == refused, session
                finally:
                    for sock in socks:
                        sock.close()
                wait_for_session(
                    api, session_id, lambda s: s["connections_active"] == 0, what="none active"
                )
                assert roundtrip("127.0.0.1", local, os.urandom(1 << 20), timeout=30).intact
