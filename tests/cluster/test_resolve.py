"""`svc/`, `deploy/`, `rs/` and `sts/` targets resolved from real Service, Deployment,
ReplicaSet and StatefulSet objects in kube-apiserver v1.20.2, with several candidate pods in
different states: the pod a podgate session picks (its `pod` field) is the pod kubectl 1.30
and 1.33 pick for the same objects (read from the apiserver's request log: the URI of each
kubectl's portforward request names the pod), and bytes reach it.

Nothing reconciles the workloads: the test creates the pods, with labels and
ownerReferences, and patches their status. Each scenario separates the candidates by one of
kubectl's rules (podutils.ActivePods, reversed): scheduled before unscheduled, Running
before Pending, Ready before not Ready, not Terminating before Terminating, ready for
longer, fewer restarts, older.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import ECHO_PORT, Cluster, PodSpec, owner_reference
from tests.support.echo import roundtrip
from tests.support.kube import kubectl_env, kubectl_path, start_port_forward
from tests.support.podgate import Podgate, create_session, explain_on_failure, wait_for_status

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "resolve"
SERVICE_PORT = 80
KUBECTL_VERSIONS = ["1.30", "1.33"]
_PORTFORWARD_URI = re.compile(rf"^/api/v1/namespaces/{NAMESPACE}/pods/([^/]+)/portforward")


@dataclass(frozen=True)
class Scenario:
    target: str
    port: str  # the remote port as both clients are given it
    winner: str  # the pod kubectl's rules select (checked against kubectl itself)


SCENARIOS = [
    # Ready for longer beats ready recently (even with more restarts); not ready, Pending
    # and unscheduled pods lose whatever their other merits.
    Scenario("svc/web", str(SERVICE_PORT), "web-q7k2m"),
    # Same ready time: fewer restarts win.
    Scenario("deploy/api", str(ECHO_PORT), "api-6f9c4-xw2pd"),
    Scenario("rs/api-6f9c4", str(ECHO_PORT), "api-6f9c4-xw2pd"),
    # Same ready time and restarts: the older pod wins.
    Scenario("sts/db", str(ECHO_PORT), "db-1"),
    # A rollout: the old pod is Terminating (graceful delete), ready for longer; kubectl
    # (1.28+) prefers a pod that is not being deleted.
    Scenario("deploy/roll", str(ECHO_PORT), "roll-new"),
]


def _deployment(name: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "echo", "image": "podgate/echo"}]},
            },
        },
    }


@pytest.fixture(scope="module")
def objects(cluster: Cluster) -> Cluster:
    """The namespace, the Service and workloads, a Node and the candidate pods."""
    cluster.create_namespace(NAMESPACE)
    apps = f"/apis/apps/v1/namespaces/{NAMESPACE}"
    now = datetime.datetime.now(datetime.UTC)
    hour_ago, minutes_ago = now - datetime.timedelta(hours=2), now - datetime.timedelta(minutes=5)
    port = ("echo", ECHO_PORT)

    cluster.create(
        f"/api/v1/namespaces/{NAMESPACE}/services",
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "echo"}],
            },
        },
    )
    web = {"app": "web"}
    web_pods = [
        PodSpec(NAMESPACE, "web-a4n8z", web, phase="Pending", ready=False, ports=[port]),
        PodSpec(NAMESPACE, "web-c2v5t", web, ready=False, ports=[port]),
        PodSpec(NAMESPACE, "web-m3x9p", web, ready_since=minutes_ago, ports=[port]),
        PodSpec(NAMESPACE, "web-q7k2m", web, ready_since=hour_ago, restarts=4, ports=[port]),
    ]

    api_labels = {"app": "api"}
    deployment = cluster.create(f"{apps}/deployments", _deployment("api", api_labels))
    rs_labels = {**api_labels, "pod-template-hash": "6f9c4"}
    rs_body = _deployment("api-6f9c4", rs_labels)
    rs_body["metadata"] = {
        "name": "api-6f9c4",
        "labels": rs_labels,
        "ownerReferences": [owner_reference(deployment)],
    }
    replicaset = cluster.create(f"{apps}/replicasets", rs_body)
    api_pods = [
        PodSpec(NAMESPACE, name, rs_labels, owner_reference(replicaset), [port],
                ready_since=hour_ago, restarts=restarts)
        for name, restarts in [("api-6f9c4-bb8rt", 3), ("api-6f9c4-xw2pd", 1),
                               ("api-6f9c4-k4jzq", 2)]
    ]  # fmt: skip

    db = {"app": "db"}
    sts_body = _deployment("db", db)
    sts_body["spec"] = {**sts_body["spec"], "serviceName": "db"}  # type: ignore[dict-item]
    statefulset = cluster.create(f"{apps}/statefulsets", sts_body)
    db_owner = owner_reference(statefulset)
    db_old = PodSpec(NAMESPACE, "db-1", db, db_owner, [port], ready_since=hour_ago)
    db_new = PodSpec(NAMESPACE, "db-0", db, db_owner, [port], ready_since=hour_ago)
    db_pending = PodSpec(NAMESPACE, "db-2", db, db_owner, [port], phase="Pending", ready=False)

    roll = {"app": "roll"}
    rollout = cluster.create(f"{apps}/deployments", _deployment("roll", roll))
    roll_pods = [
        PodSpec(NAMESPACE, "roll-old", roll, owner_reference(rollout), [port],
                ready_since=hour_ago),
        PodSpec(NAMESPACE, "roll-new", roll, owner_reference(rollout), [port],
                ready_since=minutes_ago),
    ]  # fmt: skip

    node = cluster.add_node(
        [*web_pods, *api_pods, db_old, db_pending, *roll_pods],
        extra_registry=[db_new],
        name="node-resolve",
    )
    cluster.mark_terminating(NAMESPACE, "roll-old")
    # Unscheduled, yet Running and Ready for the longest: it must still lose.
    cluster.create_pod(
        PodSpec(NAMESPACE, "web-z0unsch", web, ready_since=hour_ago, ports=[port]), None
    )
    created = cluster.get_pod(NAMESPACE, "db-1")
    assert created is not None
    cluster.wait_for_server_second_after(created["metadata"]["creationTimestamp"])
    cluster.create_pod(db_new, node)
    return cluster


def _kubectl_choice(
    cluster: Cluster, version: str, scenario: Scenario, kubeconfig: Path, tmp_path: Path
) -> str:
    """The pod kubectl `version` forwards to for the scenario, after a round trip through it."""
    env = kubectl_env(kubeconfig, cache_dir=tmp_path / f"cache-{version}")
    mark = cluster.apiserver.log.mark()
    kubectl = kubectl_path(version)
    args = ["--namespace", NAMESPACE]
    with start_port_forward(kubectl, scenario.target, f"0:{scenario.port}", env=env,
                            extra_args=args) as pf:  # fmt: skip
        assert pf.remote_port == ECHO_PORT  # a service port is translated to the container's
        assert roundtrip("127.0.0.1", pf.local_port, b"kubectl" * 1000, timeout=30).intact
    upgrades = cluster.apiserver.log.wait_for(
        mark, user_agent=f"kubectl.{version}/", uri=_PORTFORWARD_URI, status=101
    )
    pods = {m[1] for r in upgrades if (m := _PORTFORWARD_URI.match(r.uri))}
    assert len(pods) == 1, upgrades
    return pods.pop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.target for s in SCENARIOS])
def test_podgate_picks_the_pod_kubectl_picks(
    scenario: Scenario,
    objects: Cluster,
    kubeconfig: Path,
    podgate: Podgate,
    api: httpx.Client,
    tmp_path: Path,
) -> None:
    kubectl_choices = {
        version: _kubectl_choice(objects, version, scenario, kubeconfig, tmp_path)
        for version in KUBECTL_VERSIONS
    }
    with explain_on_failure(podgate.process):
        session = create_session(
            api, namespace=NAMESPACE, target=scenario.target, ports=[f"0:{scenario.port}"]
        )
        session = wait_for_status(api, session["id"], "ready")
        assert session["ports"][0]["remote_port"] == ECHO_PORT
        local = session["ports"][0]["local_port"]
        assert roundtrip("127.0.0.1", local, b"podgate" * 1000, timeout=30).intact
        api.delete(f"/sessions/{session['id']}").raise_for_status()
    assert kubectl_choices == dict.fromkeys(KUBECTL_VERSIONS, session["pod"])
    # The scenario separates the candidates by the rule it is about.
    assert session["pod"] == scenario.winner
