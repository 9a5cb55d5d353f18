"""The private-cluster fixture does what restart tests rely on, against the real apiserver:
request counting from its ``--v=3`` log, a pod left Terminating, restarts (SIGKILL and
SIGTERM) on the same port with the same etcd data, a watch from an unchanged pod's
resourceVersion refused as too old after a restart (what the pod-watch tests need),
force-deleting and recreating a pod, and port-forwarding through the restarted apiserver to
the recreated pod."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.support.cluster import ECHO_PORT, TIER_NAMESPACE, TIER_POD, Cluster, PodSpec
from tests.support.echo import roundtrip
from tests.support.kube import kubectl_env, kubectl_path, start_port_forward

pytestmark = pytest.mark.timeout(120)

POD_URI = f"^/api/v1/namespaces/{TIER_NAMESPACE}/pods/{TIER_POD}$"


def test_restart_terminating_recreate_and_count(private_cluster: Cluster, tmp_path: Path) -> None:
    cluster = private_cluster
    log = cluster.apiserver.log
    mark = log.mark()
    for _ in range(3):
        cluster.admin.get(f"/api/v1/namespaces/{TIER_NAMESPACE}/pods/{TIER_POD}")
    found = log.wait_for(mark, count=3, user_agent="podgate-tests", verb="GET", uri=POD_URI)
    assert [(r.verb, r.status, r.is_watch) for r in found] == [("GET", 200, False)] * 3
    # A watch is logged when it ends (here: the client closes it), as a GET.
    pods = f"/api/v1/namespaces/{TIER_NAMESPACE}/pods"
    with cluster.admin.client.stream("GET", pods, params={"watch": "true"}) as watch:
        assert watch.status_code == 200
    [logged] = log.wait_for(mark, user_agent="podgate-tests", watch=True)
    assert logged.verb == "GET" and logged.path == pods

    before = cluster.get_pod(TIER_NAMESPACE, TIER_POD)
    assert before is not None
    terminating = cluster.mark_terminating(TIER_NAMESPACE, TIER_POD)
    cluster.create_namespace("later")  # writes after the pod's last change
    port = cluster.apiserver.port
    for sig in (signal.SIGKILL, signal.SIGTERM):
        mark = log.mark()
        cluster.apiserver.restart(sig)
        assert cluster.apiserver.port == port and cluster.apiserver.running
        after = cluster.get_pod(TIER_NAMESPACE, TIER_POD)
        assert after is not None, "the pod did not survive the restart (etcd data lost?)"
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        # No kubelet finishes the graceful delete: it stays Terminating.
        assert (
            after["metadata"]["deletionTimestamp"] == (terminating["metadata"]["deletionTimestamp"])
        )
        assert log.count(mark, user_agent="podgate-tests", verb="GET", uri=POD_URI) == 1
        # The watch cache starts past the pod's resourceVersion: 410 Expired, in a 200 watch.
        params = {
            "watch": "true",
            "resourceVersion": after["metadata"]["resourceVersion"],
            "fieldSelector": f"metadata.name={TIER_POD}",
        }
        with cluster.admin.client.stream("GET", pods, params=params) as watch:
            event = json.loads(next(watch.iter_lines()))
        assert (event["type"], event["object"]["code"]) == ("ERROR", 410), event
        [expired] = log.wait_for(mark, user_agent="podgate-tests", watch=True)
        assert expired.latency_seconds < 5, expired

    cluster.delete_pod(TIER_NAMESPACE, TIER_POD)
    assert cluster.get_pod(TIER_NAMESPACE, TIER_POD) is None
    recreated = cluster.create_pod(PodSpec(TIER_NAMESPACE, TIER_POD), "node-1")
    assert recreated["metadata"]["uid"] != before["metadata"]["uid"]
    assert recreated["status"]["phase"] == "Running"
    assert "deletionTimestamp" not in recreated["metadata"]

    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "alice", namespace=TIER_NAMESPACE)
    env = kubectl_env(kubeconfig)
    target = f"pod/{TIER_POD}"
    with start_port_forward(kubectl_path("1.30"), target, f"0:{ECHO_PORT}", env=env) as pf:
        assert roundtrip("127.0.0.1", pf.local_port, b"after restarts" * 1000).intact
