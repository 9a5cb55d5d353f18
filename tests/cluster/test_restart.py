"""Live sessions across a restart of a real kube-apiserver v1.20.2:

- every transport's session is `ready` again within 5 s of the apiserver's `/readyz`,
  without a storm of requests meanwhile (the sessions of a cluster share one readiness
  probe while it is down, and re-dial once it is ready);
- once a session has been ready, a 403 while it reconnects (an apiserver starting up whose
  RBAC caches are not synced yet, a credential being rotated, an RBAC change rolling out)
  is retried with backoff and shown in `last_error`; it no longer fails the session for
  good. At creation a 403 stays final (tests/cluster/test_rbac.py).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import (
    ECHO_PORT,
    PORT_FORWARD_RULES,
    TIER_NAMESPACE,
    TIER_POD,
    Cluster,
)
from tests.support.echo import roundtrip
from tests.support.podgate import (
    api_client,
    create_session,
    explain_on_failure,
    run_serve,
    wait_for_session,
    wait_for_status,
)

pytestmark = pytest.mark.timeout(180)

#: admin may use every transport through a 1.20 apiserver (alice may not open WebSockets).
TRANSPORTS = ["auto", "spdy", "websocket", "ws-channel"]


def _session(api: httpx.Client, transport: str, **extra: Any) -> dict[str, Any]:
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
    return roundtrip("127.0.0.1", port, b"after the restart " * 5000, timeout=30).intact


def test_sessions_are_ready_within_5_s_of_readyz_after_a_restart(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = private_cluster
    log = cluster.apiserver.log
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin", namespace=TIER_NAMESPACE)
    with (
        run_serve(tmp_path / "data", kubeconfig) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process),
    ):
        sessions = [_session(api, transport) for transport in TRANSPORTS]
        mark = log.mark()
        cluster.apiserver.stop(signal.SIGKILL)
        # Down for a while: long enough for each session's backoff to grow past 5 s.
        links_lost = [
            wait_for_session(api, s["id"], lambda s: s["status"] != "ready", timeout=20)
            for s in sessions
            if s["transport"] != "ws-channel"  # it holds no connection to lose
        ]
        assert links_lost
        time.sleep(20.0)  # the outage itself (backoff grows past 5 s), not a wait for anything
        cluster.apiserver.start()  # returns once /readyz answers ok
        readyz = time.monotonic()
        for session in sessions:
            ready = wait_for_status(api, session["id"], "ready", timeout=5.0)
            assert _forwards(ready), ready
        assert time.monotonic() - readyz <= 5.0 + 1.0  # the last check read at most 1 s late
        # No storm: each session dialled a handful of times once the server was back.
        after = log.requests(mark, user_agent="podgate/")
        assert len(after) <= 12 * len(sessions), [(r.verb, r.uri, r.status) for r in after]


def test_a_403_after_ready_is_retried_and_shown(private_cluster: Cluster, tmp_path: Path) -> None:
    cluster = private_cluster
    cluster.create_service_account(TIER_NAMESPACE, "forwarder")
    cluster.grant(
        "forwarder",
        TIER_NAMESPACE,
        PORT_FORWARD_RULES,
        kind="ServiceAccount",
        name="forwarder-port-forward",
    )
    token = cluster.service_account_token(TIER_NAMESPACE, "forwarder")
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin", namespace=TIER_NAMESPACE)
    kubeconfig.write_text(kubeconfig.read_text().replace(cluster.users["admin"].token, token))
    binding = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{TIER_NAMESPACE}/rolebindings"
    with (
        run_serve(tmp_path / "data", kubeconfig) as serve,
        api_client(serve.url) as api,
        explain_on_failure(serve.process),
    ):
        session = _session(api, "spdy", reconnect={"max_backoff_seconds": 1})
        cluster.admin.delete(f"{binding}/forwarder-port-forward")  # an RBAC change...
        cluster.apiserver.restart(signal.SIGKILL)  # ...and the connection drops
        forbidden = wait_for_session(
            api,
            session["id"],
            lambda s: "403" in (s["last_error"] or ""),
            what="the 403 shown",
        )
        assert forbidden["status"] == "reconnecting", forbidden
        assert "forbidden" in forbidden["last_error"], forbidden
        # Still retried, not failed: given the right back, it is ready again by itself.
        cluster.grant(
            "forwarder",
            TIER_NAMESPACE,
            PORT_FORWARD_RULES,
            kind="ServiceAccount",
            name="forwarder-port-forward-again",
        )
        ready = wait_for_status(api, session["id"], "ready", timeout=30)
        assert ready["reconnects"] == 1, ready
        assert _forwards(ready)
