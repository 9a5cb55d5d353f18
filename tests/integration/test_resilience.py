"""Sessions that stay up, end to end with real processes: `podgate serve` driven over
HTTP, `podgate agent` processes that are killed and started again on the same port, a
pod that is a real network namespace with an echo server, and a relay that can freeze
the connection between them. Every wait is on a process line, an SSE event, a socket or
the API, with a hard deadline; come-back times are printed (run with -s to see them).

The kill -9 of `podgate serve` itself is in test_e2e_sessions.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.echo import RoundTrip, roundtrip
from tests.support.kube import write_kubeconfig
from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    Gate,
    Podgate,
    api_client,
    create_session,
    explain_on_failure,
    gated_roundtrip,
    podgate_env,
    run_serve,
    wait_for_session,
)
from tests.support.procs import ManagedProcess
from tests.support.relay import FreezableRelay
from tests.support.sse import HttpEventStream, SseEvent

pytestmark = pytest.mark.timeout(60)

ECHO_PORT = 7000
DEAD_PORT = 7999  # nothing listens on it inside the namespace
MB = 1_000_000
WAIT = 20.0
#: How far `outage_seconds` may stray from the bounds a test measures around it.
OUTAGE_SLACK = 0.05


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[NetNamespace]:
    with network_namespace("podgate-res") as ns, echo_server_in(ns, ECHO_PORT):
        yield ns


def start_agent(*args: str, listen: str = "127.0.0.1:0") -> Podgate:
    """`podgate agent` (the caller stops it); waits for its `Listening on` line."""
    command = [*PODGATE, "agent", "--listen", listen, "--drain-timeout", "1", *args]
    proc = ManagedProcess(command, env=podgate_env(), name="podgate-agent")
    try:
        return Podgate(proc, proc.wait_for_stdout(LISTENING_RE, WAIT)[1])
    except BaseException:
        proc.stop()
        raise


def kill(agent: Podgate, sig: int = signal.SIGKILL) -> None:
    agent.process.send_signal(sig)
    agent.process.wait(WAIT)


def status_of(sid: str, new: str) -> Any:
    return lambda e: e.is_status(sid, new)


def transitions(events: list[SseEvent], sid: str) -> list[tuple[str, str]]:
    return [(e.data["old"], e.data["new"]) for e in events if e.is_status(sid)]


def report(label: str, **seconds: float) -> None:
    shown = ", ".join(f"{k.replace('_', ' ')} {v:.3f} s" for k, v in seconds.items())
    print(f"\n[resilience] {label}: {shown}")


def echo_over(sock: socket.socket, payload: bytes) -> bytes:
    """Send, half-close, read to EOF on an already connected socket."""
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("cap", [1.0, None], ids=["backoff-cap-1s", "default-cap-30s"])
def test_agent_killed_mid_transfer_and_back_on_the_same_port(
    pod_netns: NetNamespace, tmp_path: Path, cap: float | None
) -> None:
    pod = f"default/echo={pod_netns.target}"
    agent = start_agent("--pod", pod)
    port = agent.host_port[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    agents = [agent]
    try:
        with (
            run_serve(tmp_path / "data", kubeconfig) as serve,
            api_client(serve.url) as api,
            HttpEventStream(serve.url, "/events") as events,
            explain_on_failure(serve.process, agent.process),
        ):
            body: dict[str, Any] = {"target": "pod/echo", "ports": [f"0:{ECHO_PORT}"]}
            if cap is not None:
                body["reconnect"] = {"max_backoff_seconds": cap}
            created = create_session(api, **body)
            sid, local = created["id"], created["ports"][0]["local_port"]
            events.wait_for(status_of(sid, "ready"), WAIT, "ready")

            gate = Gate()
            with ThreadPoolExecutor(max_workers=1) as pool:
                transfer = pool.submit(
                    gated_roundtrip, "127.0.0.1", local, os.urandom(4 * MB), gate, timeout=WAIT
                )
                assert gate.started.wait(WAIT), "the transfer did not get going"
                killed_at = time.monotonic()
                kill(agent)  # mid-transfer
                lost = events.wait_for(status_of(sid, "reconnecting"), WAIT, "reconnecting")
                gate.release.set()
                try:
                    cut = not transfer.result(timeout=WAIT).intact
                except OSError:
                    cut = True
                assert cut, "a transfer survived the death of its upstream"
            assert lost.data["last_error"], lost.data

            # While the agent is down, the local port is still bound: a client connects, is
            # held (not refused, not closed) and sends its request.
            held = socket.create_connection(("127.0.0.1", local), timeout=WAIT)
            held.sendall(b"sent while the agent was down ")
            down = api.get(f"/sessions/{sid}").json()
            assert down["status"] == "reconnecting" and down["last_error"]
            assert down["ports"][0]["local_port"] == local

            restart_at = time.monotonic()  # nothing listens on the agent's port before this
            agents.append(agent := start_agent("--pod", pod, listen=f"127.0.0.1:{port}"))
            back_at = time.monotonic()
            ready = events.wait_for(status_of(sid, "ready"), WAIT, "ready again")
            reconnect = events.wait_for(lambda e: e.event == "reconnect", WAIT, "reconnect")
            outage = reconnect.data["outage_seconds"]
            report(
                f"agent kill -9 and restart ({'cap ' + str(cap) + ' s' if cap else 'cap 30 s'})",
                declared_reconnecting_after=lost.received - killed_at,
                ready_after_agent_back=ready.received - back_at,
                outage=outage,
            )
            assert ready.received - back_at < (cap or 30.0) + 5.0
            # The outage the serve process reports lies within the one this test caused: the
            # link was lost after the kill and before `lost` arrived, and came back after the
            # restart began and before `reconnect` arrived. Slack: the event loop's clock is
            # read once per loop iteration, and the value is rounded to the millisecond.
            shortest, longest = restart_at - lost.received, reconnect.received - killed_at
            assert shortest - OUTAGE_SLACK <= outage <= longest + OUTAGE_SLACK, (shortest, longest)

            # The held connection is forwarded now; new connections work.
            with held:
                assert echo_over(held, b"and after") == b"sent while the agent was down and after"
            assert roundtrip("127.0.0.1", local, os.urandom(2 * MB), timeout=WAIT).intact
            after = api.get(f"/sessions/{sid}").json()
            assert (after["status"], after["last_error"], after["reconnects"]) == ("ready", None, 1)
            assert after["ports"] == [
                {**created["ports"][0], "counters": after["ports"][0]["counters"]}
            ]
            assert reconnect.data["reconnects"] == 1
            assert transitions(events.events, sid) == [
                ("pending", "ready"),
                ("ready", "reconnecting"),
                ("reconnecting", "ready"),
            ]
    finally:
        for running in agents:
            running.process.stop()


def _registry(path: Path, pod_netns: NetNamespace, pod_name: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "pods": [
                    {
                        "namespace": "default",
                        "name": pod_name,
                        "target": pod_netns.target,
                        "labels": {"app": "web"},
                        "ports": [{"name": "echo", "containerPort": ECHO_PORT}],
                    }
                ],
                "services": [
                    {
                        "namespace": "default",
                        "name": "web",
                        "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "echo"}],
                    }
                ],
            }
        )
    )
    return path


def test_a_service_target_follows_its_pod_when_the_pod_is_replaced(
    pod_netns: NetNamespace, tmp_path: Path
) -> None:
    first = _registry(tmp_path / "pods-1.yaml", pod_netns, "web-1")
    agent = start_agent("--pods", str(first))
    port = agent.host_port[1]
    agents = [agent]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    try:
        with (
            run_serve(tmp_path / "data", kubeconfig) as serve,
            api_client(serve.url) as api,
            HttpEventStream(serve.url, "/events") as events,
            explain_on_failure(serve.process, agent.process),
        ):
            created = create_session(
                api, target="svc/web", ports=["0:80"], reconnect={"max_backoff_seconds": 1}
            )
            sid, local = created["id"], created["ports"][0]["local_port"]
            ready = events.wait_for(status_of(sid, "ready"), WAIT)
            assert ready.data["pod"] == "web-1"
            session = api.get(f"/sessions/{sid}").json()
            assert session["ports"][0]["remote_port"] == ECHO_PORT  # targetPort "echo"
            assert roundtrip("127.0.0.1", local, b"to web-1" * 1000, timeout=WAIT).intact

            # The pod is replaced: the node goes away (SIGTERM: GOAWAY) and comes back with
            # the Service selecting a pod of another name.
            kill(agent, signal.SIGTERM)
            events.wait_for(status_of(sid, "reconnecting"), WAIT)
            second = _registry(tmp_path / "pods-2.yaml", pod_netns, "web-2")
            agents.append(agent := start_agent("--pods", str(second), listen=f"127.0.0.1:{port}"))
            back_at = time.monotonic()
            ready = events.wait_for(status_of(sid, "ready"), WAIT, "ready on the new pod")
            reconnect = events.wait_for(lambda e: e.event == "reconnect", WAIT)
            report("svc target, pod replaced", ready_after_agent_back=ready.received - back_at)
            assert (reconnect.data["previous_pod"], reconnect.data["pod"]) == ("web-1", "web-2")
            after = api.get(f"/sessions/{sid}").json()
            assert (after["pod"], after["status"], after["reconnects"]) == ("web-2", "ready", 1)
            assert after["forwarding"] == session["forwarding"]  # same local port
            assert roundtrip("127.0.0.1", local, b"to web-2" * 1000, timeout=WAIT).intact
    finally:
        for running in agents:
            running.process.stop()


def test_a_peer_that_stops_answering_pings_is_declared_dead(
    pod_netns: NetNamespace, tmp_path: Path
) -> None:
    keepalive = 0.2
    agent = start_agent("--pod", f"default/echo={pod_netns.target}")
    try:
        with FreezableRelay(agent.host_port) as relay:
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", relay.url)
            # Below the floors a session may ask for (1 s): the service's own defaults.
            settings = {"keepalive_seconds": str(keepalive), "max_backoff_seconds": "0.5"}
            with (
                run_serve(tmp_path / "data", kubeconfig, settings=settings) as serve,
                api_client(serve.url) as api,
                HttpEventStream(serve.url, "/events") as events,
                explain_on_failure(serve.process, agent.process),
            ):
                created = create_session(api, target="pod/echo", ports=[f"0:{ECHO_PORT}"])
                sid, local = created["id"], created["ports"][0]["local_port"]
                events.wait_for(status_of(sid, "ready"), WAIT)
                assert roundtrip("127.0.0.1", local, b"through the relay", timeout=WAIT).intact

                frozen_at = time.monotonic()
                relay.freeze()  # nothing closes; nothing gets through either
                lost = events.wait_for(status_of(sid, "reconnecting"), WAIT, "reconnecting")
                declared = lost.received - frozen_at
                assert "stopped answering pings" in lost.data["last_error"], lost.data
                # 3 unanswered pings: between 3 and 4 intervals, plus scheduling slack.
                assert 2 * keepalive <= declared < 4 * keepalive + 1.5, declared

                held = socket.create_connection(("127.0.0.1", local), timeout=WAIT)
                held.sendall(b"held ")
                thawed_at = time.monotonic()
                relay.thaw()
                ready = events.wait_for(status_of(sid, "ready"), WAIT, "ready after the thaw")
                report(
                    f"frozen peer (keepalive {keepalive} s)",
                    declared_dead_after=declared,
                    ready_after_thaw=ready.received - thawed_at,
                )
                with held:
                    assert echo_over(held, b"then thawed") == b"held then thawed"
                assert roundtrip("127.0.0.1", local, os.urandom(MB), timeout=WAIT).intact
                after = api.get(f"/sessions/{sid}").json()
                assert (after["status"], after["reconnects"]) == ("ready", 1)
                assert relay.accepted >= 2  # the re-dial went through the relay too
    finally:
        agent.process.stop()


def test_a_closed_port_while_20_transfer_and_counters_survive_a_restart(
    pod_netns: NetNamespace, tmp_path: Path
) -> None:
    agent = start_agent("--pod", f"default/echo={pod_netns.target}")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    data = tmp_path / "data"
    try:
        with (
            run_serve(data, kubeconfig) as serve,
            api_client(serve.url) as api,
            HttpEventStream(serve.url, "/events") as events,
            explain_on_failure(serve.process, agent.process),
        ):
            created = create_session(
                api, target="pod/echo", ports=[f"0:{ECHO_PORT}", f"0:{DEAD_PORT}"]
            )
            sid = created["id"]
            live, dead = (p["local_port"] for p in created["ports"])
            events.wait_for(status_of(sid, "ready"), WAIT)

            gates = [Gate() for _ in range(20)]
            payloads = [os.urandom(MB + i) for i in range(len(gates))]
            with ThreadPoolExecutor(max_workers=len(gates)) as pool:
                futures: list[Future[RoundTrip]] = [
                    pool.submit(gated_roundtrip, "127.0.0.1", live, p, g, timeout=WAIT)
                    for p, g in zip(payloads, gates, strict=True)
                ]
                try:
                    for gate in gates:
                        assert gate.started.wait(WAIT), "a transfer did not get going"
                    with (
                        socket.create_connection(("127.0.0.1", dead), timeout=WAIT) as sock,
                        contextlib.suppress(ConnectionResetError),  # a reset is as good
                    ):
                        assert sock.recv(1) == b""
                    error = events.wait_for(lambda e: e.event == "connection_error", WAIT)
                    assert (error.data["port"], error.data["remote_port"]) == (dead, DEAD_PORT)
                    assert error.data["text"]
                    during = api.get(f"/sessions/{sid}").json()
                    assert during["status"] == "ready"
                    assert during["ports"][0]["counters"]["connections_active"] == 20
                    assert during["ports"][0]["counters"]["connection_errors"] == 0
                    assert during["ports"][1]["counters"]["connection_errors"] == 1
                finally:
                    for gate in gates:
                        gate.release.set()
                results = [f.result(timeout=WAIT) for f in futures]
            assert all(r.intact for r in results), "a transfer broke when another failed"

            final = wait_for_session(
                api, sid, lambda s: s["connections_active"] == 0, timeout=WAIT, what="no pairs"
            )
            sent = sum(len(p) for p in payloads)
            assert final["ports"][0]["counters"] == {
                "connections_active": 0,
                "connections_total": 20,
                "connection_errors": 0,
                "bytes_in": sent,
                "bytes_out": sent,
                "connections_refused": 0,
            }
            dead_counters = final["ports"][1]["counters"]
            assert (dead_counters["connections_total"], dead_counters["connection_errors"]) == (
                1,
                1,
            )
            assert dead_counters["bytes_in"] == 0
            assert (final["connection_errors"], final["bytes_in"]) == (1, sent)

        # A restart (graceful): the counters resume from the store.
        with run_serve(data, kubeconfig) as serve, api_client(serve.url) as api:
            restored = api.get(f"/sessions/{sid}").json()
            for key in ("connections_total", "connection_errors", "bytes_in", "bytes_out"):
                assert restored[key] == final[key], key
            assert [p["counters"] for p in restored["ports"]] == [
                p["counters"] for p in final["ports"]
            ]
            wait_for_session(api, sid, lambda s: s["status"] == "ready", timeout=WAIT)
            assert roundtrip("127.0.0.1", live, b"x" * 1000, timeout=WAIT).intact
            again = wait_for_session(
                api,
                sid,
                lambda s: s["bytes_in"] == sent + 1000,
                timeout=WAIT,
                what="counting on from the stored values",
            )
            assert again["ports"][0]["counters"]["connections_total"] == 21
    finally:
        agent.process.stop()


def test_reconnect_disabled_fails_when_the_agent_dies(
    pod_netns: NetNamespace, tmp_path: Path
) -> None:
    agent = start_agent("--pod", f"default/echo={pod_netns.target}")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    try:
        with (
            run_serve(tmp_path / "data", kubeconfig) as serve,
            api_client(serve.url) as api,
            HttpEventStream(serve.url, "/events") as events,
            explain_on_failure(serve.process, agent.process),
        ):
            created = create_session(
                api, target="pod/echo", ports=[f"0:{ECHO_PORT}"], reconnect={"enabled": False}
            )
            sid = created["id"]
            events.wait_for(status_of(sid, "ready"), WAIT)
            kill(agent)
            failed = events.wait_for(status_of(sid, "failed"), WAIT, "failed")
            assert failed.data["last_error"].endswith("(reconnect is disabled)"), failed.data
            assert transitions(events.events, sid) == [("pending", "ready"), ("ready", "failed")]
            after = api.get(f"/sessions/{sid}").json()
            assert (after["status"], after["reconnects"]) == ("failed", 0)
    finally:
        agent.process.stop()
