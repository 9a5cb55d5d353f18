"""The manifests in deploy/kubernetes/ against a real kube-apiserver v1.20.2: the API server
validates them (`kubectl apply --dry-run=server -k`), stores them for real (nothing
schedules the pod: no controller-manager or scheduler runs), and the ServiceAccount can do
what podgate serve needs and no more; the same for the helper agent's kinds
(deploy/kubernetes/agent/: pod-ip, netns, and serve through it)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import TIER_NAMESPACE, Cluster
from tests.support.kube import run_kubectl

pytestmark = pytest.mark.timeout(120)

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SERVICE_ACCOUNT = "system:serviceaccount:podgate:podgate"


def test_the_manifests_validate_and_apply(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin")
    # A server-side dry run stores nothing: the namespaced objects need their namespace
    # (the helper agent's tests may have made it already: it is the agent's too).
    namespace = str(MANIFESTS / "serve" / "namespace.yaml")
    namespace_path = "/api/v1/namespaces/podgate"
    existed = cluster.admin.request("GET", namespace_path, ok=[404]).status_code == 200
    dry = run_kubectl(kubeconfig, "apply", "--dry-run=server", "-f", namespace)
    assert dry.returncode == 0, dry.stderr
    done = "unchanged" if existed else "created"
    assert f"namespace/podgate {done} (server dry run)" in dry.stdout, dry.stdout
    if not existed:
        assert cluster.admin.request("GET", namespace_path, ok=[404]).status_code == 404
    assert run_kubectl(kubeconfig, "apply", "-f", namespace).returncode == 0
    dry = run_kubectl(kubeconfig, "apply", "--dry-run=server", "-k", str(MANIFESTS))
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

    applied = run_kubectl(kubeconfig, "apply", "-k", str(MANIFESTS))
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
    applied = run_kubectl(kubeconfig, "apply", "-k", str(MANIFESTS))
    assert applied.returncode == 0, applied.stderr
    answer = run_kubectl(
        kubeconfig,
        *("auth", "can-i", verb, *resource.split()),
        *("-n", TIER_NAMESPACE, "--as", SERVICE_ACCOUNT),
    )
    assert answer.stdout.strip() == ("yes" if allowed else "no"), (answer.stdout, answer.stderr)


# --------------------------------------------------------------------------- helper agent

AGENT_SERVICE_ACCOUNT = "system:serviceaccount:podgate:podgate-agent"


@pytest.fixture
def agent_manifests(tmp_path: Path) -> Path:
    """deploy/kubernetes copied, with credentials.sh's credentials in agent/base/."""
    manifests = tmp_path / "kubernetes"
    shutil.copytree(MANIFESTS, manifests)
    made = subprocess.run(
        [str(manifests / "agent" / "credentials.sh")], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    # It refuses to overwrite what it made.
    again = subprocess.run(
        [str(manifests / "agent" / "credentials.sh")], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "already has credentials" in again.stderr
    return manifests / "agent"


def test_the_agent_manifests_validate_and_apply(
    cluster: Cluster, tmp_path: Path, agent_manifests: Path
) -> None:
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin")
    namespace = str(MANIFESTS / "serve" / "namespace.yaml")
    assert run_kubectl(kubeconfig, "apply", "-f", namespace).returncode == 0
    for kind, expected in (
        ("pod-ip", "deployment.apps/podgate-agent"),
        ("netns", "daemonset.apps/podgate-agent"),
        ("serve", "deployment.apps/podgate"),
    ):
        dry = run_kubectl(
            kubeconfig, "apply", "--dry-run=server", "-k", str(agent_manifests / kind)
        )
        assert dry.returncode == 0, (kind, dry.stderr)
        assert re.search(
            rf"^{re.escape(expected)} (created|configured|unchanged)", dry.stdout, re.M
        )
    applied = run_kubectl(kubeconfig, "apply", "-k", str(agent_manifests / "pod-ip"))
    assert applied.returncode == 0, applied.stderr
    for kind in (
        "secret/podgate-agent-tls",
        "secret/podgate-agent-client",
        "service/podgate-agent",
    ):
        assert kind in applied.stdout, applied.stdout
    applied = run_kubectl(kubeconfig, "apply", "-k", str(agent_manifests / "netns"))
    assert applied.returncode == 0, applied.stderr
    assert run_kubectl(kubeconfig, "apply", "-k", str(agent_manifests / "serve")).returncode == 0

    base = "/apis/apps/v1/namespaces/podgate"
    deployment = cluster.admin.get(f"{base}/deployments/podgate-agent")["spec"]["template"]["spec"]
    agent = deployment["containers"][0]
    assert {"--cluster", "--dial=pod-ip", "--allow-target=svc"} <= set(agent["args"])
    assert deployment["securityContext"]["runAsNonRoot"] is True
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent["securityContext"]["readOnlyRootFilesystem"] is True
    daemonset = cluster.admin.get(f"{base}/daemonsets/podgate-agent")["spec"]["template"]["spec"]
    node_agent = daemonset["containers"][0]
    assert daemonset["hostPID"] is True and "--dial=netns" in node_agent["args"]
    assert node_agent["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["SYS_ADMIN", "SYS_PTRACE"],
    }
    assert node_agent["securityContext"]["readOnlyRootFilesystem"] is True
    serve = cluster.admin.get(f"{base}/deployments/podgate")["spec"]["template"]["spec"]
    args = serve["containers"][0]["args"]
    assert "--default-agent=https://podgate-agent.podgate.svc:10250" in args
    assert "--agent-kubeconfig=/etc/podgate-agent/kubeconfig" in args
    volumes = {v["name"]: v for v in serve["volumes"]}
    assert volumes["agent-client"]["secret"]["secretName"] == "podgate-agent-client"
    # serve's kubeconfig for the agent holds the token the agent accepts.
    secret = cluster.admin.get("/api/v1/namespaces/podgate/secrets/podgate-agent-tokens")
    token = base64.b64decode(secret["data"]["tokens.csv"]).decode().split(",")[0]
    client = cluster.admin.get("/api/v1/namespaces/podgate/secrets/podgate-agent-client")
    assert f"token: {token}" in base64.b64decode(client["data"]["kubeconfig"]).decode()


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("list", "pods", True),
        ("watch", "pods", True),
        ("get", "services", True),
        ("get", "endpoints", True),
        # Nothing more: it reaches pods itself, and reads no secrets.
        ("get", "pods", False),
        ("create", "pods --subresource=portforward", False),
        ("create", "pods --subresource=exec", False),
        ("get", "secrets", False),
        ("delete", "pods", False),
    ],
)
def test_the_agents_service_account_may_read_pods_and_services_and_no_more(
    cluster: Cluster, tmp_path: Path, agent_manifests: Path, verb: str, resource: str, allowed: bool
) -> None:
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "admin")
    applied = run_kubectl(kubeconfig, "apply", "-k", str(agent_manifests / "base"))
    assert applied.returncode == 0, applied.stderr
    answer = run_kubectl(
        kubeconfig,
        *("auth", "can-i", verb, *resource.split()),
        *("-n", TIER_NAMESPACE, "--as", AGENT_SERVICE_ACCOUNT),
    )
    assert answer.stdout.strip() == ("yes" if allowed else "no"), (answer.stdout, answer.stderr)
