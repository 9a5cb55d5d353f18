"""The manifests in deploy/kubernetes/ against a real kube-apiserver v1.20.2: the API server
validates them (`kubectl apply --dry-run=server -k`), stores them for real (nothing
schedules the pod: no controller-manager or scheduler runs), and the ServiceAccount can do
what podgate serve needs and no more."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import TIER_NAMESPACE, Cluster
from tests.support.kube import kubectl_env, kubectl_path

pytestmark = pytest.mark.timeout(120)

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SERVICE_ACCOUNT = "system:serviceaccount:podgate:podgate"


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl_path("1.33")), *args],
        env=kubectl_env(kubeconfig),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_manifests_validate_and_apply(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin")
    # A server-side dry run stores nothing: the namespaced objects need their namespace.
    namespace = str(MANIFESTS / "namespace.yaml")
    dry = _kubectl(kubeconfig, "apply", "--dry-run=server", "-f", namespace)
    assert dry.returncode == 0, dry.stderr
    assert "namespace/podgate created (server dry run)" in dry.stdout, dry.stdout
    assert cluster.admin.request("GET", "/api/v1/namespaces/podgate", ok=[404]).status_code == 404
    assert _kubectl(kubeconfig, "apply", "-f", namespace).returncode == 0
    dry = _kubectl(kubeconfig, "apply", "--dry-run=server", "-k", str(MANIFESTS))
    assert dry.returncode == 0, dry.stderr
    assert "namespace/podgate unchanged (server dry run)" in dry.stdout, dry.stdout
    for kind in (
        "serviceaccount/podgate",
        "clusterrole.rbac.authorization.k8s.io/podgate",
        "clusterrolebinding.rbac.authorization.k8s.io/podgate",
        "persistentvolumeclaim/podgate-data",
        "deployment.apps/podgate",
        "service/podgate",
    ):
        assert f"{kind} created (server dry run)" in dry.stdout, dry.stdout
    deployment_path = "/apis/apps/v1/namespaces/podgate/deployments/podgate"
    assert cluster.admin.request("GET", deployment_path, ok=[404]).status_code == 404

    applied = _kubectl(kubeconfig, "apply", "-k", str(MANIFESTS))
    assert applied.returncode == 0, applied.stderr
    deployment = cluster.admin.get(deployment_path)
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--auth=kubernetes" in container["args"]
    assert cluster.admin.get("/api/v1/namespaces/podgate/services/podgate")["spec"]["ports"]


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("get", "pods", True),
        ("watch", "pods", True),
        ("create", "pods --subresource=portforward", True),
        ("get", "pods --subresource=portforward", True),
        ("list", "services", True),
        ("get", "deployments.apps", True),
        ("create", "tokenreviews.authentication.k8s.io", True),
        ("create", "subjectaccessreviews.authorization.k8s.io", True),
        # Nothing more: no writes to workloads, no secrets, no exec.
        ("delete", "pods", False),
        ("create", "pods --subresource=exec", False),
        ("get", "secrets", False),
        ("update", "deployments.apps", False),
    ],
)
def test_the_service_account_may_do_what_podgate_needs_and_no_more(
    cluster: Cluster, tmp_path: Path, verb: str, resource: str, allowed: bool
) -> None:
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin")
    applied = _kubectl(kubeconfig, "apply", "-k", str(MANIFESTS))
    assert applied.returncode == 0, applied.stderr
    answer = _kubectl(
        kubeconfig,
        *("auth", "can-i", verb, *resource.split()),
        *("-n", TIER_NAMESPACE, "--as", SERVICE_ACCOUNT),
    )
    assert answer.stdout.strip() == ("yes" if allowed else "no"), (answer.stdout, answer.stderr)
