"""The pod watch against a real kube-apiserver v1.20.2 (podgate watches the pod a session is
connected to, `runner/podwatch.py`):

- a pod force-deleted: the session goes `reconnecting` with the reason, and once a pod of
  that name runs again it is `ready` again by itself;
- a graceful delete leaves the pod Terminating (no kubelet finishes it). A `pod/NAME`
  session keeps forwarding to it, like kubectl (which neither watches the pod nor refuses a
  Terminating pod that is still Running), and reconnects only once it is gone. A Service or
  workload session does what kubectl would do for a new forward: it moves new connections
  to a pod that is not being deleted, while those open on the old pod finish there;
- after an apiserver restart the watch cache starts at a resourceVersion newer than a pod
  that has not changed since: podgate re-lists and watches from the list's version instead
  of asking again and again (216 watch + 216 GET requests per second from one idle
  session), and an idle session asks for one watch per watch timeout.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import ECHO_PORT, TIER_NAMESPACE, TIER_POD, Cluster, PodSpec
from tests.support.echo import roundtrip
from tests.support.podgate import (
    api_client,
    create_session,
    explain_on_failure,
    run_serve,
    wait_for_session,
    wait_for_status,
)
from tests.support.sse import HttpEventStream

pytestmark = pytest.mark.timeout(180)

#: The watch timeout podgate asks for in the storm test (PODGATE_POD_WATCH_TIMEOUT_SECONDS).
WATCH_TIMEOUT = 3
#: How long the storm test counts an idle session's requests after it is ready again.
OBSERVED = 10.0


def _session(api: httpx.Client, transport: str = "spdy", **extra: Any) -> dict[str, Any]:
    session = create_session(
        api,
        namespace=TIER_NAMESPACE,
        target=f"pod/{TIER_POD}",
        ports=[f"0:{ECHO_PORT}"],
        transport=transport,
        **extra,
    )
    return wait_for_status(api, session["id"], "ready")


def _forwards(session: dict[str, Any]) -> bool:
    port = session["ports"][0]["local_port"]
    return roundtrip("127.0.0.1", port, b"still there " * 10_000, timeout=30).intact


def test_a_deleted_pod_reconnects_and_a_recreated_one_is_ready_again(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = private_cluster
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "alice", namespace=TIER_NAMESPACE)
    with (
        run_serve(tmp_path / "data", kubeconfig) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process),
    ):
        session = _session(api, reconnect={"max_backoff_seconds": 1})
        events = HttpEventStream(serve.url, f"/sessions/{session['id']}/events")
        try:
            first = cluster.get_pod(TIER_NAMESPACE, TIER_POD)
            assert first is not None
            cluster.delete_pod(TIER_NAMESPACE, TIER_POD)
            lost = events.wait_for(lambda e: e.is_status(session["id"], "reconnecting"))
            assert lost.data["last_error"] == f'pod "{TIER_POD}" was deleted', lost
            # No pod of that name: it stays reconnecting (not failed) and says why.
            missing = wait_for_session(
                api,
                session["id"],
                lambda s: "not found" in (s["last_error"] or ""),
                what="the missing pod reported",
            )
            assert missing["status"] == "reconnecting", missing
            recreated = cluster.create_pod(PodSpec(TIER_NAMESPACE, TIER_POD), "node-1")
            assert recreated["metadata"]["uid"] != first["metadata"]["uid"]
            events.wait_for(lambda e: e.is_status(session["id"], "ready"))
        finally:
            events.close()
        ready = api.get(f"/sessions/{session['id']}").json()
        assert ready["reconnects"] == 1 and ready["pod"] == TIER_POD, ready
        assert _forwards(ready)


def test_a_terminating_pod_is_forwarded_to_until_it_is_gone(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = private_cluster
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "alice", namespace=TIER_NAMESPACE)
    with (
        run_serve(tmp_path / "data", kubeconfig) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process),
    ):
        session = _session(api)
        events = HttpEventStream(serve.url, f"/sessions/{session['id']}/events")
        try:
            pod = cluster.mark_terminating(TIER_NAMESPACE, TIER_POD)
            assert pod["status"]["phase"] == "Running"
            # Forwarding goes on, as kubectl's would (it neither watches nor re-checks)...
            assert _forwards(session)
            cluster.delete_pod(TIER_NAMESPACE, TIER_POD)
            # ...until the pod is gone: the first status change the session has.
            lost = events.wait_for(lambda e: e.event == "status")
            assert lost.data["new"] == "reconnecting", lost
            assert lost.data["last_error"] == f'pod "{TIER_POD}" was deleted', lost
        finally:
            events.close()


def test_a_service_session_moves_to_a_pod_that_is_not_terminating(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = private_cluster
    now = datetime.datetime.now(datetime.UTC)
    labels = {"app": "web"}
    old = PodSpec(TIER_NAMESPACE, "web-old", labels, ready_since=now - datetime.timedelta(hours=1))
    new = PodSpec(TIER_NAMESPACE, "web-new", labels, ready_since=now)
    cluster.create(
        f"/api/v1/namespaces/{TIER_NAMESPACE}/services",
        {
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": ECHO_PORT}]},
        },
    )
    node = cluster.add_node([old, new], name="node-web")
    payload = os.urandom(4_000_000)
    half = len(payload) // 2
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin", namespace=TIER_NAMESPACE)
    with (
        run_serve(tmp_path / "data", kubeconfig) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process),
    ):
        session = create_session(
            api, namespace=TIER_NAMESPACE, target="svc/web", ports=["0:80"], transport="spdy"
        )
        session = wait_for_status(api, session["id"], "ready")
        assert session["pod"] == "web-old"  # ready for longer
        port = session["ports"][0]["local_port"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(payload[:half])
            echoed = _read_exactly(sock, half)
            cluster.mark_terminating(TIER_NAMESPACE, "web-old")
            moved = wait_for_session(
                api,
                session["id"],
                lambda s: s["status"] == "ready" and s["pod"] == "web-new",
                what="the session on web-new",
            )
            assert moved["reconnects"] == 1, moved
            # The connection open on the terminating pod finishes there, intact.
            sock.sendall(payload[half:])
            sock.shutdown(socket.SHUT_WR)
            echoed += _read_exactly(sock, len(payload) - half)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        # New connections go to the new pod (its kubelet, our agent, saw the upgrade).
        assert roundtrip("127.0.0.1", port, b"to the new pod " * 1000, timeout=30).intact
        node.agent.wait_for_stderr(r"pod tier/web-new: SPDY/3.1 upgrade", 10)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(1 << 20, n - len(data)))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def test_no_request_storm_after_an_apiserver_restart(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = private_cluster
    log = cluster.apiserver.log
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "alice", namespace=TIER_NAMESPACE)
    settings = {"pod_watch_timeout_seconds": str(WATCH_TIMEOUT)}
    with (
        run_serve(tmp_path / "data", kubeconfig, settings=settings) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process),
    ):
        session = _session(api)
        cluster.create_namespace("later")  # a write after the pod's last change
        mark = log.mark()
        cluster.apiserver.restart(signal.SIGKILL)  # returns once /readyz answers ok
        readyz = time.monotonic()
        ready = wait_for_status(api, session["id"], "ready", timeout=5.0)
        assert time.monotonic() - readyz <= 5.0
        assert ready["reconnects"] == 1, ready
        recovered = log.mark()
        time.sleep(OBSERVED)  # the window in which the idle session's requests are counted
        recovery = log.requests(mark, user_agent="podgate/")
        idle = log.requests(recovered, user_agent="podgate/")
        # Recovery: the pod GET and the upgrade of the re-dial, a watch refused as too old,
        # the list, the watch from the list's version (and perhaps a readiness probe).
        assert len(recovery) - len(idle) <= 8, [(r.verb, r.uri) for r in recovery]
        # Idle: one watch per watch timeout (a watch is logged when it ends), nothing else.
        watches = [r for r in idle if r.is_watch]
        assert len(watches) <= OBSERVED / WATCH_TIMEOUT + 1, [
            (r.uri, r.latency_seconds) for r in idle
        ]
        assert all(r.latency_seconds >= WATCH_TIMEOUT - 1 for r in watches), watches
        assert len(idle) == len(watches), [(r.verb, r.uri) for r in idle]
        assert _forwards(ready)
