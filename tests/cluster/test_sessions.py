"""podgate sessions (`podgate serve`, a real process) → kube-apiserver v1.20.2 → `podgate agent`
over each transport the apiserver can carry: 20 MB each way (SHA-256) and 50 concurrent
connections on one session, and `auto` reporting what it negotiated.

A 1.20 apiserver passes every port-forward upgrade straight through to the kubelet, so the
WebSocket tunnel reaches the agent and `auto` settles on `websocket`. Its request log shows
the upgrades podgate made (POST for SPDY, GET for WebSockets) under podgate's user agent.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest

from tests.support.cluster import ECHO_PORT, TIER_NAMESPACE, TIER_POD, Cluster
from tests.support.echo import roundtrip
from tests.support.podgate import (
    Podgate,
    concurrent_roundtrips,
    create_session,
    explain_on_failure,
    wait_for_status,
)

pytestmark = pytest.mark.timeout(120)

MB = 1_000_000
UPGRADE_URI = f"^/api/v1/namespaces/{TIER_NAMESPACE}/pods/{TIER_POD}/portforward"
#: transport → (what the session reports, the verb of its upgrade requests)
TRANSPORTS = {
    "auto": ("websocket", "GET"),
    "spdy": ("spdy", "POST"),
    "websocket": ("websocket", "GET"),
    "ws-channel": ("ws-channel", "GET"),
}


def _ready_session(api: httpx.Client, transport: str) -> dict[str, Any]:
    session = create_session(
        api,
        namespace=TIER_NAMESPACE,
        target=f"pod/{TIER_POD}",
        ports=[f"0:{ECHO_PORT}"],
        transport=transport,
    )
    return wait_for_status(api, session["id"], "ready")


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_20mb_each_way_and_50_concurrent_connections(
    transport: str, cluster: Cluster, podgate: Podgate, api: httpx.Client
) -> None:
    reported, verb = TRANSPORTS[transport]
    mark = cluster.apiserver.log.mark()
    with explain_on_failure(podgate.process):
        session = _ready_session(api, transport)
        assert session["transport"] == reported
        assert session["pod"] == TIER_POD
        local = session["ports"][0]["local_port"]
        payload = os.urandom(20 * MB)
        started = time.perf_counter()
        result = roundtrip("127.0.0.1", local, payload, timeout=90)
        elapsed = time.perf_counter() - started
        assert result.intact, f"{transport}: sent {result.sent}, got {len(result.received)}"
        print(f"{transport} via kube-apiserver: 20 MB each way, {2 * 20 / elapsed:.1f} MB/s")
        payloads = [os.urandom(100_000 + i) for i in range(50)]
        results = concurrent_roundtrips("127.0.0.1", local, payloads, timeout=60)
        assert [r.intact for r in results] == [True] * 50
        after = api.get(f"/sessions/{session['id']}").json()
        assert after["status"] == "ready" and after["connection_errors"] == 0, after
        api.delete(f"/sessions/{session['id']}").raise_for_status()
    # ws-channel upgrades once per forwarded connection (51 here), the others once.
    expected = 51 if transport == "ws-channel" else 1
    upgrades = cluster.apiserver.log.wait_for(
        mark, count=expected, user_agent="podgate/", uri=UPGRADE_URI, status=101
    )
    assert {r.verb for r in upgrades} == {verb}
    assert len(upgrades) == expected, upgrades
