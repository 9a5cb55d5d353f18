"""End to end with real processes: `podgate serve` (driven over HTTP with httpx) forwarding
to `podgate agent`, whose pod `default/echo` is a real network namespace with echo
servers; over plain HTTP, over HTTPS (TLS relay with a self-signed CA and a required
bearer token), across a kill -9 of the server, with a local client that stops reading,
and against the independent Go spdystream server (tests/interop). No mocks; every wait
is on a line, a socket or the API with a hard deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_upstream import TlsRelay
from tests.interop.build import build_spdyserver, run_spdyserver
from tests.support.echo import RoundTrip, refused_port, roundtrip
from tests.support.kube import write_kubeconfig
from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.podgate import (
    Gate,
    Podgate,
    api_client,
    background_loop,
    concurrent_roundtrips,
    connection_refused,
    create_session,
    explain_on_failure,
    gated_roundtrip,
    host_echo_server,
    run_agent,
    run_serve,
    start_serve,
    timed_roundtrip,
    wait_for_session,
    wait_for_status,
)
from tests.support.tls import make_ca

pytestmark = pytest.mark.timeout(90)

ECHO_PORT = 7000
SECOND_ECHO_PORT = 7001
DEAD_PORT = 7999  # nothing listens on it inside the namespace
MB = 1_000_000
TOKEN = "e2e-bearer-token"
WAIT = 20.0  # bound for any single wait on the service


# --------------------------------------------------------------------------- peers


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[NetNamespace]:
    with (
        network_namespace("podgate-e2e") as ns,
        echo_server_in(ns, ECHO_PORT),
        echo_server_in(ns, SECOND_ECHO_PORT),
    ):
        yield ns


@pytest.fixture(scope="module")
def agent(pod_netns: NetNamespace) -> Iterator[Podgate]:
    with run_agent([f"default/echo={pod_netns.target}"]) as running:
        yield running


@dataclass(frozen=True)
class Https:
    url: str
    ca_cert: Path
    relay: TlsRelay


@pytest.fixture(scope="module")
def https_relay(agent: Podgate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    """The agent does not speak TLS: an API-server stand-in terminates TLS with a cert from
    a self-signed CA, requires `Authorization: Bearer TOKEN`, then pipes to the agent."""
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca")
    cert = ca.issue(root / "server", "apiserver", ips=["127.0.0.1"])
    with background_loop() as loop:
        relay = TlsRelay(agent.host_port, cert, TOKEN)
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(WAIT)
        try:
            yield Https(f"https://127.0.0.1:{relay.port}", ca.cert, relay)
        finally:
            asyncio.run_coroutine_threadsafe(relay.close(), loop).result(WAIT)


@pytest.fixture(params=["http", "https"])
def kubeconfig(request: pytest.FixtureRequest, agent: Podgate, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    if request.param == "http":
        return write_kubeconfig(path, agent.url)
    https: Https = request.getfixturevalue("https_relay")
    return write_kubeconfig(path, https.url, token=TOKEN, certificate_authority=https.ca_cert)


# --------------------------------------------------------------------------- checks


def _local_ports(session: dict[str, Any]) -> dict[int, int]:
    """remote port -> local port."""
    return {p["remote_port"]: p["local_port"] for p in session["ports"]}


def _check_created(session: dict[str, Any], remotes: list[int]) -> None:
    assert session["status"] in ("pending", "ready")
    assert session["namespace"] == "default" and session["target"] == "pod/echo"
    lines = []
    for port, remote in zip(session["ports"], remotes, strict=True):
        assert port["remote_port"] == remote
        assert port["local_port"] > 0  # bound before the 201
        assert port["addresses"] == ["127.0.0.1", "::1"]
        lines += [
            f"Forwarding from 127.0.0.1:{port['local_port']} -> {remote}",
            f"Forwarding from [::1]:{port['local_port']} -> {remote}",
        ]
    assert session["forwarding"] == lines


def _transfer_10mb(local: int, label: str) -> None:
    payload = os.urandom(10 * MB)
    elapsed = timed_roundtrip("127.0.0.1", local, payload, timeout=60)
    print(
        f"\n[{label}] 10 MB each way in {elapsed:.2f} s: {10 / elapsed:.1f} MB/s per direction "
        f"({20 / elapsed:.1f} MB/s both ways)"
    )


def _hundred_concurrent(local: int) -> None:
    payloads = [os.urandom(50_000 + 997 * i) for i in range(100)]
    results = concurrent_roundtrips("127.0.0.1", local, payloads, timeout=60)
    broken = [i for i, r in enumerate(results) if not r.intact]
    assert not broken, f"connections {broken} came back altered"


def _dead_port_while_others_transfer(
    api: httpx.Client, session_id: str, live_local: int, dead_local: int, dead_remote: int
) -> dict[str, Any]:
    """Eight transfers are stopped half-way (each has seen its first MB come back), one
    connection goes to the dead port and is closed, then the eight finish intact."""
    before = api.get(f"/sessions/{session_id}").json()["connection_errors"]
    gates = [Gate() for _ in range(8)]
    payloads = [os.urandom(2 * MB + i) for i in range(len(gates))]
    with ThreadPoolExecutor(max_workers=len(gates)) as pool:
        futures: list[Future[RoundTrip]] = [
            pool.submit(gated_roundtrip, "127.0.0.1", live_local, p, g, timeout=60)
            for p, g in zip(payloads, gates, strict=True)
        ]
        try:
            for gate in gates:
                assert gate.started.wait(WAIT), "a transfer did not get going"
            with socket.create_connection(("127.0.0.1", dead_local), timeout=WAIT) as sock:
                sock.settimeout(WAIT)
                try:
                    sock.sendall(b"nobody is listening")
                    assert sock.recv(1) == b"", "a connection to a dead port got bytes back"
                except ConnectionResetError:
                    pass  # closed with RST: equally fine
            # The error is recorded on the session while the others are still mid-way.
            session = wait_for_session(
                api,
                session_id,
                lambda s: s["connection_errors"] > before,
                timeout=WAIT,
                what="connection error",
            )
            assert session["status"] == "ready", session
        finally:
            for gate in gates:
                gate.release.set()
        results = [f.result(timeout=60) for f in futures]
    assert all(r.intact for r in results), "a transfer broke when another connection failed"
    final: dict[str, Any] = api.get(f"/sessions/{session_id}").json()
    assert final["status"] == "ready", final
    assert final["connection_errors"] >= 1
    assert f"error forwarding port {dead_remote} to pod echo" in (final["last_error"] or "")
    # The link is still good for new connections.
    assert roundtrip("127.0.0.1", live_local, b"after the error", timeout=WAIT).intact
    return final


def _delete_and_check_refused(api: httpx.Client, session: dict[str, Any]) -> None:
    response = api.delete(f"/sessions/{session['id']}")
    assert response.status_code == 204, response.text
    assert api.get(f"/sessions/{session['id']}").status_code == 404
    for port in session["ports"]:
        assert connection_refused("127.0.0.1", port["local_port"])
        assert connection_refused("::1", port["local_port"])


def _full_run(api: httpx.Client, live_remote: int, dead_remote: int, label: str) -> dict[str, Any]:
    """Create, wait for ready, 10 MB, 100 concurrent, a dead port mid-transfer, delete."""
    # SPDY/3.1 pinned: this is the client under test ("auto" may prefer the WebSocket tunnel).
    created = create_session(
        api, target="pod/echo", ports=[f"0:{live_remote}", f"0:{dead_remote}"], transport="spdy"
    )
    _check_created(created, [live_remote, dead_remote])
    session = wait_for_status(api, created["id"], "ready", timeout=WAIT)
    assert (session["transport"], session["pod"], session["last_error"]) == ("spdy", "echo", None)
    local = _local_ports(session)
    live, dead = local[live_remote], local[dead_remote]

    _transfer_10mb(live, label)
    assert roundtrip("::1", live, b"over the IPv6 listener" * 100, timeout=WAIT).intact
    _hundred_concurrent(live)
    after = _dead_port_while_others_transfer(api, created["id"], live, dead, dead_remote)
    # 10 MB + IPv6 + 100 concurrent + 8 gated + the dead one (the snapshot precedes the
    # last check connection).
    assert after["connections_total"] == 1 + 1 + 100 + 8 + 1
    # Every pair is torn down in the end (the error stream's FIN may trail the client's EOF).
    wait_for_session(
        api, session["id"], lambda s: s["connections_active"] == 0, timeout=WAIT, what="no pairs"
    )
    assert after["bytes_out"] >= 10 * MB and after["bytes_in"] >= 10 * MB
    _delete_and_check_refused(api, session)
    return after


# --------------------------------------------------------------------------- tests


def test_session_lifecycle_against_the_agent(
    kubeconfig: Path,
    tmp_path: Path,
    pod_netns: NetNamespace,
    agent: Podgate,
    request: pytest.FixtureRequest,
) -> None:
    label = request.node.callspec.params["kubeconfig"]
    with (
        run_serve(tmp_path / "data", kubeconfig) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process, agent.process),
    ):
        after = _full_run(api, ECHO_PORT, DEAD_PORT, f"agent over {label}")
        # The agent's own wording, with containerd's cause (protocols.md §1.6).
        assert f'network namespace "{pod_netns.path}"' in after["last_error"]
        assert api.get("/sessions").json()["count"] == 0
    if label == "https":
        https: Https = request.getfixturevalue("https_relay")
        assert https.relay.requests, "the HTTPS run did not go through the relay"
        assert {r.headers.get("authorization") for r in https.relay.requests} == {f"Bearer {TOKEN}"}


def test_kill_9_and_restart_restores_sessions_on_the_same_ports(
    agent: Podgate, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    data = tmp_path / "data"
    serve = start_serve(data, kubeconfig)
    try:
        with api_client(serve.url) as api, explain_on_failure(serve.process, agent.process):
            first = create_session(api, target="pod/echo", ports=[f"0:{ECHO_PORT}"])
            second = create_session(
                api, name="second", target="echo", ports=[f":{SECOND_ECHO_PORT}", f"0:{ECHO_PORT}"]
            )
            for created in (first, second):
                wait_for_status(api, created["id"], "ready", timeout=WAIT)
            before = sorted(api.get("/sessions").json()["data"], key=lambda s: s["id"])

            gate = Gate()
            local = first["ports"][0]["local_port"]
            with ThreadPoolExecutor(max_workers=1) as pool:
                transfer = pool.submit(
                    gated_roundtrip, "127.0.0.1", local, os.urandom(4 * MB), gate
                )
                assert gate.started.wait(WAIT), "the transfer did not get going"
                serve.process.send_signal(signal.SIGKILL)  # mid-transfer
                assert serve.process.wait(WAIT) == -signal.SIGKILL
                gate.release.set()
                try:
                    result = transfer.result(timeout=60)
                except OSError:
                    pass  # reset by the dying process: expected
                else:
                    assert not result.intact, "the transfer survived a kill -9 of its forwarder"
    finally:
        serve.process.stop()

    with (
        run_serve(data, kubeconfig) as restarted,
        api_client(restarted.url) as api,
        explain_on_failure(restarted.process, agent.process),
    ):
        listed = api.get("/sessions").json()
        assert listed["count"] == 2
        after = sorted(listed["data"], key=lambda s: s["id"])
        for old, new in zip(before, after, strict=True):
            assert [new[k] for k in ("id", "name", "target")] == [
                old[k] for k in ("id", "name", "target")
            ]
            # Same local ports, same addresses (the counters resume from the store).
            assert [{k: v for k, v in p.items() if k != "counters"} for p in new["ports"]] == [
                {k: v for k, v in p.items() if k != "counters"} for p in old["ports"]
            ]
            assert new["forwarding"] == old["forwarding"]
        for session in after:
            wait_for_status(api, session["id"], "ready", timeout=WAIT)
            for remote, port in _local_ports(session).items():
                message = f"to {remote} after the restart ".encode() * 10_000
                assert roundtrip("127.0.0.1", port, message, timeout=WAIT).intact
        # The restarted service still forwards in bulk on the restored port.
        _transfer_10mb(first["ports"][0]["local_port"], "agent over http, after restart")


def test_a_client_that_stops_reading_does_not_take_the_session_down(
    agent: Podgate, tmp_path: Path
) -> None:
    """Back-pressure from one slow local reader stops the reads of the upstream socket, so
    PING replies wait too; that must not count as a dead upstream (the link would be torn
    down and every connection on it cut). Pings every 0.1 s; the reader stalls for 1.5 s."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    payload = os.urandom(24 * MB)  # far more than the kernel and our 1 MiB buffer hold
    with (
        run_serve(tmp_path / "data", kubeconfig, settings={"keepalive_seconds": "0.1"}) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process, agent.process),
    ):
        created = create_session(api, target="pod/echo", ports=[f"0:{ECHO_PORT}"], transport="spdy")
        ready = wait_for_status(api, created["id"], "ready", timeout=WAIT)
        local = ready["ports"][0]["local_port"]
        with socket.create_connection(("127.0.0.1", local), timeout=WAIT) as sock:
            sender = ThreadPoolExecutor(max_workers=1)
            sent = sender.submit(sock.sendall, payload)
            # Wait until the echo is flowing back, unread by us (24 MB cannot all be buffered)...
            wait_for_session(
                api, created["id"], lambda s: s["bytes_in"] >= 1 * MB, timeout=WAIT, what="echo"
            )
            # ...then stay unread: this stall is the scenario, not a synchronisation.
            threading.Event().wait(1.5)
            received = bytearray()
            while len(received) < len(payload):
                data = sock.recv(1 << 20)
                assert data, f"EOF after {len(received)} bytes\n{serve.process.describe()}"
                received += data
            sent.result(timeout=WAIT)
            sender.shutdown()
        assert received == payload
        after = api.get(f"/sessions/{created['id']}").json()
        assert after["status"] == "ready" and after["last_error"] is None, after
        assert after["ready_since"] == ready["ready_since"], "the link was re-dialled"
        assert "stopped answering pings" not in serve.process.stderr_text()


def _refused_burst_keeps_the_link(api: httpx.Client, live_remote: int, dead_remote: int) -> None:
    """50 connections at once to a refused pod port, each sending bytes at once (held until
    the data stream is accepted): every one is closed and counted, and the link survives.
    The peer's SYN_REPLY and RST for such a stream often arrive in one read."""
    created = create_session(
        api, target="pod/echo", ports=[f"0:{live_remote}", f"0:{dead_remote}"], transport="spdy"
    )
    ready = wait_for_status(api, created["id"], "ready", timeout=WAIT)
    local = _local_ports(ready)

    def refused(_: int) -> bytes:
        with socket.create_connection(("127.0.0.1", local[dead_remote]), timeout=WAIT) as sock:
            sock.sendall(b"early bytes, before the stream is accepted")
            try:
                return sock.recv(1)
            except ConnectionResetError:
                return b""

    with ThreadPoolExecutor(max_workers=50) as pool:
        assert set(pool.map(refused, range(50))) == {b""}
    after = wait_for_session(
        api,
        created["id"],
        lambda s: s["connection_errors"] >= 50 or s["ready_since"] != ready["ready_since"],
        timeout=WAIT,
        what="50 errors",
    )
    assert after["ready_since"] == ready["ready_since"], "the link was torn down and re-dialled"
    assert after["status"] == "ready" and after["connection_errors"] == 50
    assert roundtrip("127.0.0.1", local[live_remote], b"still up" * 1000, timeout=WAIT).intact


def test_refused_port_burst_keeps_the_link_against_the_agent(
    agent: Podgate, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    with (
        run_serve(tmp_path / "data", kubeconfig) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process, agent.process),
    ):
        _refused_burst_keeps_the_link(api, ECHO_PORT, DEAD_PORT)


@pytest.fixture(scope="module")
def spdyserver_binary() -> Path:
    return build_spdyserver()


@pytest.mark.usefixtures("spdyserver_binary")
def test_session_lifecycle_against_the_go_spdystream_server(tmp_path: Path) -> None:
    """The same run against a peer that forgives nothing: spdystream drops DATA sent before
    its SYN_REPLY and never sends WINDOW_UPDATE, and it dials 127.0.0.1:PORT on this host.

    The pod is tests/support/echo_server.py on the host rather than echo.py's EchoServer,
    whose listen backlog of 5 resets some of 100 simultaneous connections by itself."""
    with host_echo_server() as echo, refused_port() as dead, run_spdyserver() as go:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", go.url)
        with (
            run_serve(tmp_path / "data", kubeconfig) as serve,
            api_client(serve.url) as api,
            explain_on_failure(serve.process, go.process),
        ):
            after = _full_run(api, echo.port, dead, "Go spdystream server")
        assert f"dial tcp 127.0.0.1:{dead}: connect: connection refused" in after["last_error"]
        # Every byte reached the peer: spdystream logs each pair's counts; the 10 MB pair
        # is the first request of the session.
        match = go.process.wait_for_stderr(
            r"request 0: done \(client->pod (\d+) bytes, pod->client (\d+) bytes\)", WAIT
        )
        assert int(match[1]) == int(match[2]) == 10 * MB


@pytest.mark.usefixtures("spdyserver_binary")
def test_refused_port_burst_keeps_the_link_against_the_go_spdystream_server(
    tmp_path: Path,
) -> None:
    """spdystream replies to both streams before the dial, then sends the error text and
    RSTs at once: SYN_REPLY and RST land in the same read (this tore the link down)."""
    with host_echo_server() as echo, refused_port() as dead, run_spdyserver() as go:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", go.url)
        with (
            run_serve(tmp_path / "data", kubeconfig) as serve,
            api_client(serve.url) as api,
            explain_on_failure(serve.process, go.process),
        ):
            _refused_burst_keeps_the_link(api, echo.port, dead)
