"""`podgate agent` against slow and greedy clients (issue 11): every connection has a
deadline, and what a client costs the agent is bounded.

- A request (head and body), a TLS handshake and, over HTTP/2, the first authorized
  stream must arrive within ``--header-timeout``; a client dribbling bytes does not
  move that deadline.
- A keep-alive connection idle between requests is closed after ``--keepalive-timeout``.
- An upgraded connection is closed after ``--streaming-connection-idle-timeout`` without
  a forwarded connection or a byte from its client, and never while a forwarded
  connection is open.
- 200 slowloris connections do not keep a real forward from being served, and are all
  closed at their deadline.
- A client pipelining requests without reading the answers gets no more answered (and
  so buffered) than its socket takes, and is dropped at the deadline.

The agents are real processes with small timeouts. The sleeps here are the scenario (a
slow client's pauses, an idle period), never a wait for the agent; the agent's closing
is observed as the end of the connection, and timed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.echo import EchoServer, echo_server
from tests.support.h2link import H2Link
from tests.support.podgate import Podgate, run_agent
from tests.support.spdy_client import UPGRADE_HEADERS, HttpConnection, spdy_session
from tests.support.tls import make_ca

pytestmark = pytest.mark.timeout(60)

TOKEN = "deadline-token-51c0"
AUTH = [("Authorization", f"Bearer {TOKEN}")]
HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 2.0
STREAMING_IDLE_TIMEOUT = 2.0
#: Scheduling on a loaded 2-core machine: how late a deadline may be observed.
SLACK = 3.0
#: How early: the loop's timer resolution.
EARLY = 0.05
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def local_echo() -> Iterator[EchoServer]:
    """The pod: a loopback echo server (`default/echo=host:127.0.0.1`)."""
    with echo_server() as server:
        yield server


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens.csv"
    path.write_text(f"{TOKEN},kube-apiserver,uid-1\n")
    return path


def _timeouts(
    header: float = HEADER_TIMEOUT, streaming: float = STREAMING_IDLE_TIMEOUT
) -> list[str]:
    return [
        "--header-timeout",
        str(header),
        "--keepalive-timeout",
        str(KEEPALIVE_TIMEOUT),
        "--streaming-connection-idle-timeout",
        str(streaming),
    ]


@pytest.fixture(scope="module")
def agent(token_file: Path) -> Iterator[Podgate]:
    extra = ["--token-file", str(token_file), *_timeouts()]
    with run_agent(["default/echo=host:127.0.0.1"], extra_args=extra) as running:
        yield running
        assert "Traceback" not in running.process.stderr_text(), running.process.describe()


@pytest.fixture(scope="module")
def tls_agent(token_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podgate]:
    base = tmp_path_factory.mktemp("pki")
    cert = make_ca(base / "ca").issue(base / "agent", "agent")
    extra = ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    extra += ["--client-ca", str(make_ca(base / "client-ca").cert), "--token-file", str(token_file)]
    # The streaming timeout stays long: what closes a connection here is the request deadline.
    extra += _timeouts(streaming=3600)
    with run_agent(["default/echo=host:127.0.0.1"], extra_args=extra) as running:
        yield running


# ---------------------------------------------------------------------- helpers


def _connect(agent: Podgate) -> socket.socket:
    return socket.create_connection(agent.host_port, timeout=30)


def _until_closed(sock: socket.socket, since: float) -> float:
    """Read (and drop) whatever the agent sends until it ends the connection; return how
    long after ``since`` that was."""
    sock.settimeout(30)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - since


def _assert_closed_at(elapsed: float, deadline: float, what: str) -> None:
    assert deadline - EARLY <= elapsed <= deadline + SLACK, (
        f"{what}: closed after {elapsed:.2f} s, the deadline is {deadline} s"
    )


def _dribble(sock: socket.socket, data: bytes, pause: float) -> threading.Thread:
    """Send ``data`` one byte per ``pause`` seconds (a slow client) until it fails."""

    def run() -> None:
        try:
            for byte in data:
                sock.send(bytes([byte]))
                time.sleep(pause)  # the slow client's pause: the scenario itself
        except OSError:
            pass  # the agent closed the connection

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _fd_count(agent: Podgate) -> int:
    return len(os.listdir(f"/proc/{agent.process.pid}/fd"))


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)  # polling the agent's /proc entry, bounded by the deadline


# ---------------------------------------------------------------------- the request deadline

GET = b"GET /version HTTP/1.1\r\nHost: agent\r\n"
POST = b"POST /version HTTP/1.1\r\nHost: agent\r\nContent-Length: 10\r\n\r\n"
HALF_CASES = {
    "nothing at all": b"",
    "half a request head": GET,
    "a head whose body never comes": POST,
    "half a body": POST + b"12345",
    "half the HTTP/2 preface": H2_PREFACE[:10],
}


@pytest.mark.parametrize("sent", HALF_CASES.values(), ids=HALF_CASES.keys())
def test_a_request_that_does_not_arrive_in_time_is_closed(agent: Podgate, sent: bytes) -> None:
    with _connect(agent) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        _assert_closed_at(_until_closed(sock, started), HEADER_TIMEOUT, repr(sent))


def test_a_dribbled_head_does_not_move_the_deadline(agent: Podgate) -> None:
    """A byte every 0.1 s: the connection is busy, but its request is late."""
    with _connect(agent) as sock:
        started = time.monotonic()
        sender = _dribble(sock, GET * 10, 0.1)
        _assert_closed_at(_until_closed(sock, started), HEADER_TIMEOUT, "dribbled head")
        sender.join(10)


def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(
    agent: Podgate,
) -> None:
    with _connect(agent) as sock:
        sock.sendall(GET + b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
        answer = sock.recv(65536)
        answered = time.monotonic()
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        _assert_closed_at(_until_closed(sock, answered), KEEPALIVE_TIMEOUT, "keep-alive")


def test_a_tls_handshake_that_does_not_finish_in_time_is_closed(tls_agent: Podgate) -> None:
    """A ClientHello that never ends (the agent's default would be asyncio's 60 s)."""
    with _connect(tls_agent) as sock:
        started = time.monotonic()
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        _assert_closed_at(_until_closed(sock, started), HEADER_TIMEOUT, "TLS handshake")


async def test_h2_without_an_authorized_stream_is_closed_at_the_request_deadline(
    agent: Podgate,
) -> None:
    """The HTTP/2 preface and SETTINGS, then a stream without credentials (401): not a
    streaming connection yet, so the request deadline holds it, not the streaming idle
    timeout (4 h by default), however busy the client keeps it (PINGs)."""
    host, port = agent.host_port
    started = time.monotonic()
    async with H2Link.connect(host, port) as link:
        assert await link.status(await link.query_agent()) == 401
        for _ in range(int(HEADER_TIMEOUT / 0.1) * 3):
            if link.closed:
                break
            link.client.ping()
            await link.flush()
            await asyncio.sleep(0.1)  # a busy client without credentials: the scenario
        await asyncio.wait_for(link.wait_closed(), 30)
    _assert_closed_at(time.monotonic() - started, HEADER_TIMEOUT, "h2 without credentials")


async def test_h2_tls_without_an_authorized_stream_is_closed_at_the_request_deadline(
    tls_agent: Podgate, tmp_path: Path
) -> None:
    """ALPN h2 with no client certificate and no token: the same deadline."""
    host, port = tls_agent.host_port
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    started = time.monotonic()
    async with H2Link.connect(host, port, ssl_context=ctx) as link:
        assert link.alpn == "h2"
        await asyncio.wait_for(link.wait_closed(), 30)
    _assert_closed_at(time.monotonic() - started, HEADER_TIMEOUT, "h2 over TLS")


# ---------------------------------------------------------------------- streaming idle


async def test_an_idle_h2_connection_with_credentials_lives_until_the_streaming_timeout(
    agent: Podgate,
) -> None:
    host, port = agent.host_port
    async with H2Link.connect(host, port, headers=[("authorization", f"Bearer {TOKEN}")]) as link:
        hello = await link.query_agent()
        assert await link.status(hello) == 200
        await link.read_all(hello)
        answered = time.monotonic()
        await asyncio.wait_for(link.wait_closed(), 30)
    _assert_closed_at(time.monotonic() - answered, STREAMING_IDLE_TIMEOUT, "idle h2")


async def test_an_idle_spdy_connection_is_closed_after_the_streaming_timeout(
    agent: Podgate,
) -> None:
    async with spdy_session(
        agent.host_port[1], "/portForward/default/echo", headers=[*UPGRADE_HEADERS, *AUTH]
    ) as client:
        upgraded = time.monotonic()
        await client.wait_closed(30)
    _assert_closed_at(time.monotonic() - upgraded, STREAMING_IDLE_TIMEOUT, "idle SPDY")


async def test_an_open_forwarded_connection_keeps_its_streaming_connection(
    agent: Podgate, local_echo: EchoServer
) -> None:
    """A pair open and silent for twice the streaming timeout: the connection stays and
    the pair still works; once the pair has ended, the connection goes idle and is closed."""
    async with spdy_session(
        agent.host_port[1], "/portForward/default/echo", headers=[*UPGRADE_HEADERS, *AUTH]
    ) as client:
        error, data = await client.open_pair(local_echo.port, requestid=0)
        client.send(data, b"before")
        await client.wait_data(data, 6)
        await asyncio.sleep(1.5 * STREAMING_IDLE_TIMEOUT)  # silence on a busy connection
        assert not client.closed
        client.send(data, b" after", fin=True)
        assert await client.read_stream(data) == b"before after"
        await client.wait_ended(error)
        ended = time.monotonic()
        await client.wait_closed(30)
    # The next check finds it busy-free and idle since the pair ended: at most one more
    # period.
    elapsed = time.monotonic() - ended
    assert elapsed <= 2 * STREAMING_IDLE_TIMEOUT + SLACK, elapsed


# ---------------------------------------------------------------------- slowloris


def test_slowloris_does_not_keep_a_real_forward_out_and_is_closed(
    token_file: Path, local_echo: EchoServer
) -> None:
    """200 connections dribbling request heads; meanwhile a real forward (an upgrade with
    the token, a pair, 1 MB echoed) is served, and all 200 are still open then (their
    deadline has not come); then every one is closed, and the agent holds nothing."""
    header_timeout = 6.0  # long enough for the forward to happen while they are open
    extra = ["--token-file", str(token_file), *_timeouts(header_timeout)]
    with run_agent(["default/echo=host:127.0.0.1"], extra_args=extra) as agent:
        baseline = _fd_count(agent)
        started = time.monotonic()
        lorises = [_connect(agent) for _ in range(200)]
        senders = [_dribble(sock, GET * 10, 0.5) for sock in lorises]
        _wait_until(lambda: _fd_count(agent) >= baseline + 200, 10, "200 connections accepted")

        async def forward() -> bytes:
            payload = os.urandom(1 << 20)
            async with spdy_session(
                agent.host_port[1], "/portForward/default/echo", headers=[*UPGRADE_HEADERS, *AUTH]
            ) as client:
                _, data = await client.open_pair(local_echo.port, requestid=0)
                await client.send_all(data, payload, fin=True)
                return await client.read_stream(data) == payload

        assert asyncio.run(forward())
        served = time.monotonic() - started
        assert served < header_timeout, f"the forward took {served:.1f} s: slowloris won?"
        assert _fd_count(agent) >= baseline + 200, "slowloris connections closed too early"
        for sock in lorises:
            _assert_closed_at(_until_closed(sock, started), header_timeout, "slowloris")
            sock.close()
        for sender in senders:
            sender.join(10)
        _wait_until(lambda: _fd_count(agent) <= baseline, 10, "the agent's descriptors freed")


# ---------------------------------------------------------------------- a client that does not read


def _rss_kib(agent: Podgate) -> int:
    for line in Path(f"/proc/{agent.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pipelined_requests_unread_answers_are_not_buffered_without_bound(
    agent: Podgate,
) -> None:
    """A client pipelines 16 MB of requests (each answered 401, ~8 times its size) and
    reads nothing: the agent stops reading once its answers do not go out, so the client
    is stopped by TCP flow control after what the sockets hold, the agent's memory does
    not grow with the answers, and the connection is dropped at the deadline even though
    its answers were never read."""
    baseline_fds = _fd_count(agent)
    rss_before = _rss_kib(agent)
    request = b"GET /version HTTP/1.1\r\nHost: a\r\n\r\n"
    batch = request * 2048
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # reads nothing anyway
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.connect(agent.host_port)
    sock.settimeout(5.0)  # the client gives up once a send makes no progress for 5 s
    pushed = 0
    with sock:
        try:
            while pushed < 16 << 20:
                pushed += sock.send(batch)
        except TimeoutError:
            pass  # held by TCP flow control: the agent reads no more
        except (ConnectionResetError, BrokenPipeError):
            pass  # dropped at its deadline, its answers unread
        growth = (_rss_kib(agent) - rss_before) << 10
        print(f"pushed {pushed >> 10} KiB, the agent grew by {growth >> 10} KiB")
        assert pushed < 12 << 20, f"the agent read {pushed >> 20} MB of unanswerable requests"
        assert growth < 24 << 20, f"the agent grew by {growth >> 20} MB"
        _wait_until(lambda: _fd_count(agent) < baseline_fds + 1, 10, "the connection dropped")


# ---------------------------------------------------------------------- the limits hold for HTTP


async def test_a_request_after_a_401_starts_a_new_deadline(agent: Podgate) -> None:
    """Refused requests on a keep-alive connection: each next one starts the request
    deadline, none extends it (no free pass after the first answer)."""
    conn = await HttpConnection.open(agent.host_port[1])
    try:
        assert (await conn.request("GET", "/version")).status == 401
        started = time.monotonic()
        conn.writer.write(GET)  # begun, never finished
        await conn.writer.drain()
        async with asyncio.timeout(30):
            assert await conn.reader.read() == b""
    finally:
        await conn.close()
    _assert_closed_at(time.monotonic() - started, HEADER_TIMEOUT, "second request")
