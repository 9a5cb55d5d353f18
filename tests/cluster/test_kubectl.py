"""Real kubectl 1.27, 1.30 and 1.33 → kube-apiserver v1.20.2 → `podgate agent` (the kubelet,
over TLS) → the pod's network namespace: 20 MB each way, SHA-256 equal.

1.27 and 1.30 upgrade with SPDY (POST); 1.33 with the WebSocket tunnel (GET), which a 1.20
apiserver passes through to the agent unchanged. The apiserver's request log shows which.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.cluster import ECHO_PORT, TIER_NAMESPACE, TIER_POD, Cluster
from tests.support.echo import roundtrip
from tests.support.kube import kubectl_env, kubectl_path, start_port_forward

pytestmark = pytest.mark.timeout(120)

MB = 1_000_000
#: The verb each kubectl uses for the upgrade (WebSocket tunnel from 1.31 on).
UPGRADE_VERB = {"1.27": "POST", "1.30": "POST", "1.33": "GET"}


@pytest.mark.parametrize("version", sorted(UPGRADE_VERB))
def test_20mb_each_way_through_the_apiserver(
    version: str, cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    env = kubectl_env(kubeconfig, cache_dir=tmp_path / "cache")
    payload = os.urandom(20 * MB)
    mark = cluster.apiserver.log.mark()
    with start_port_forward(
        kubectl_path(version), f"pod/{TIER_POD}", f"0:{ECHO_PORT}", env=env
    ) as pf:
        started = time.perf_counter()
        result = roundtrip("127.0.0.1", pf.local_port, payload, timeout=90)
        elapsed = time.perf_counter() - started
        assert result.intact, (
            f"sent {result.sent} bytes (sha256 {result.sent_sha256}), got {len(result.received)}"
            f"\n{pf.process.describe()}"
        )
    print(f"kubectl {version} via kube-apiserver: 20 MB each way, {2 * 20 / elapsed:.1f} MB/s")
    upgrades = cluster.apiserver.log.wait_for(
        mark,
        user_agent=f"kubectl.{version}/",
        uri=f"^/api/v1/namespaces/{TIER_NAMESPACE}/pods/{TIER_POD}/portforward",
    )
    assert [(r.verb, r.status) for r in upgrades] == [(UPGRADE_VERB[version], 101)], upgrades
