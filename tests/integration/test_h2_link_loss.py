"""An `h2` session losing its link to a real `podgate agent`, end to end through the API
of a real `podgate serve`: the agent killed with SIGKILL in the middle of a transfer, and
a relay between them that freezes (a hung node: nothing closes, nothing gets through).
Each time the session goes `reconnecting` with the reason, the connections it carried are
reset (their clients learn that bytes may be missing), a connection accepted meanwhile is
held, and the session is `ready` again once the agent answers, on the same local port.
(test_resilience.py does the same for the default transport, the WebSocket tunnel.)

The pod is tests/support/echo_server.py on this host (`host:127.0.0.1`).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.echo import roundtrip
from tests.support.kube import write_kubeconfig
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    Gate,
    HostEcho,
    Podgate,
    api_client,
    create_session,
    explain_on_failure,
    gated_roundtrip,
    host_echo_server,
    podgate_env,
    run_serve,
)
from tests.support.procs import ManagedProcess
from tests.support.relay import FreezableRelay
from tests.support.sse import HttpEventStream

pytestmark = pytest.mark.timeout(90)

MB = 1_000_000
WAIT = 20.0
#: Service settings: sessions may not ask for less than 1 s, the service's defaults may.
FAST_RETRIES = {"max_backoff_seconds": "0.5"}


@pytest.fixture(scope="module")
def echo() -> Iterator[HostEcho]:
    with host_echo_server() as server:
        yield server


def start_agent(listen: str = "127.0.0.1:0") -> Podgate:
    """`podgate agent` with pod default/echo on this host (the caller stops it)."""
    args = [*PODGATE, "agent", "--listen", listen, "--pod", "default/echo=host:127.0.0.1"]
    proc = ManagedProcess(args, env=podgate_env(), name="podgate-agent")
    try:
        return Podgate(proc, proc.wait_for_stdout(LISTENING_RE, WAIT)[1])
    except BaseException:
        proc.stop()
        raise


def _status(sid: str, new: str) -> Any:
    return lambda e: e.is_status(sid, new)


def _idle_connection(port: int) -> socket.socket:
    """A connection that echoed 1 MB and now waits, with nothing unread on either side."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    payload = os.urandom(MB)
    sock.sendall(payload)
    echoed = bytearray()
    while len(echoed) < len(payload):
        chunk = sock.recv(len(payload) - len(echoed))
        assert chunk, f"EOF after {len(echoed)} echoed bytes"
        echoed += chunk
    assert echoed == payload
    return sock


def _ending(sock: socket.socket) -> str:
    """How the connection ends for its client (a clean EOF would claim nothing is missing)."""
    with sock:
        try:
            data = sock.recv(1)
        except ConnectionResetError:
            return "reset"
    return "EOF" if data == b"" else f"more data {data!r}"


def _echo_over(sock: socket.socket, payload: bytes) -> bytes:
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    return bytes(received)


def test_agent_killed_mid_transfer_then_back_on_the_same_port(
    echo: HostEcho, tmp_path: Path
) -> None:
    agent = start_agent()
    agents = [agent]
    port = agent.host_port[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    try:
        with (
            run_serve(tmp_path / "data", kubeconfig, settings=FAST_RETRIES) as serve,
            api_client(serve.url) as api,
            HttpEventStream(serve.url, "/events") as events,
            explain_on_failure(serve.process, agent.process),
        ):
            created = create_session(
                api, target="pod/echo", ports=[f"0:{echo.port}"], transport="h2"
            )
            sid, local = created["id"], created["ports"][0]["local_port"]
            events.wait_for(_status(sid, "ready"), WAIT, "ready")
            idle = _idle_connection(local)
            gate = Gate()
            with ThreadPoolExecutor(max_workers=1) as pool:
                transfer = pool.submit(
                    gated_roundtrip, "127.0.0.1", local, os.urandom(4 * MB), gate, timeout=WAIT
                )
                assert gate.started.wait(WAIT), "the transfer did not get going"
                agent.process.send_signal(signal.SIGKILL)  # in the middle of the transfer
                agent.process.wait(WAIT)
                lost = events.wait_for(_status(sid, "reconnecting"), WAIT, "reconnecting")
                gate.release.set()
                try:
                    cut = not transfer.result(timeout=WAIT).intact
                except OSError:
                    cut = True
                assert cut, "a transfer survived the death of its agent"
            assert _ending(idle) == "reset"
            reason = lost.data["last_error"]
            assert reason.startswith(("upstream closed the connection", "upstream connection lost"))

            held = socket.create_connection(("127.0.0.1", local), timeout=WAIT)
            held.sendall(b"sent while the agent was down, ")
            down = api.get(f"/sessions/{sid}").json()
            assert (down["status"], down["transport"]) == ("reconnecting", "h2")
            assert down["last_error"]

            agents.append(agent := start_agent(listen=f"127.0.0.1:{port}"))
            events.wait_for(_status(sid, "ready"), WAIT, "ready again")
            reconnect = events.wait_for(lambda e: e.event == "reconnect", WAIT, "reconnect")
            assert (reconnect.data["transport"], reconnect.data["reconnects"]) == ("h2", 1)
            assert _echo_over(held, b"and after") == b"sent while the agent was down, and after"
            assert roundtrip("127.0.0.1", local, os.urandom(2 * MB), timeout=WAIT).intact
            after = api.get(f"/sessions/{sid}").json()
            assert (after["status"], after["transport"], after["reconnects"]) == ("ready", "h2", 1)
            assert after["last_error"] is None
            assert after["ports"][0]["local_port"] == local
    finally:
        for running in agents:
            running.process.stop()


def test_a_frozen_link_is_declared_dead_by_its_pings_and_comes_back(
    echo: HostEcho, tmp_path: Path
) -> None:
    keepalive = 0.2
    agent = start_agent()
    try:
        with FreezableRelay(agent.host_port) as relay:
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", relay.url)
            settings = {**FAST_RETRIES, "keepalive_seconds": str(keepalive)}
            with (
                run_serve(tmp_path / "data", kubeconfig, settings=settings) as serve,
                api_client(serve.url) as api,
                HttpEventStream(serve.url, "/events") as events,
                explain_on_failure(serve.process, agent.process),
            ):
                created = create_session(
                    api, target="pod/echo", ports=[f"0:{echo.port}"], transport="h2"
                )
                sid, local = created["id"], created["ports"][0]["local_port"]
                events.wait_for(_status(sid, "ready"), WAIT, "ready")
                idle = _idle_connection(local)

                relay.freeze()  # nothing closes; nothing gets through either
                lost = events.wait_for(_status(sid, "reconnecting"), WAIT, "reconnecting")
                assert lost.data["last_error"] == "upstream stopped answering HTTP/2 pings"
                assert _ending(idle) == "reset"

                held = socket.create_connection(("127.0.0.1", local), timeout=WAIT)
                held.sendall(b"held, ")
                relay.thaw()
                events.wait_for(_status(sid, "ready"), WAIT, "ready after the thaw")
                assert _echo_over(held, b"then thawed") == b"held, then thawed"
                assert roundtrip("127.0.0.1", local, os.urandom(MB), timeout=WAIT).intact
                after = api.get(f"/sessions/{sid}").json()
                assert (after["status"], after["transport"], after["reconnects"]) == (
                    "ready",
                    "h2",
                    1,
                )
                assert relay.accepted >= 2  # the re-dial went through the relay too
    finally:
        agent.process.stop()
