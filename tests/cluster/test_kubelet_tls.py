"""The agent as the kubelet: kube-apiserver v1.20.2 dials it over TLS with its kubelet client
certificate and verifies the agent's serving certificate against
``--kubelet-certificate-authority``.

The verification is real: an agent whose certificate another CA signed, or whose
certificate the right CA signed for another address, makes the forward fail with the
apiserver's x509 error (podgate sessions and kubectl alike), while the agent with the
right certificate (``node-1``) serves the same requests.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import ECHO_PORT, TIER_NAMESPACE, TIER_POD, Cluster, Node, PodSpec
from tests.support.echo import roundtrip
from tests.support.kube import kubectl_env, kubectl_path
from tests.support.podgate import Podgate, create_session, explain_on_failure, wait_for_status
from tests.support.procs import ManagedProcess
from tests.support.tls import make_ca

pytestmark = pytest.mark.timeout(90)

#: What the apiserver's TLS client (Go crypto/x509) says about each certificate.
X509_ERRORS = {
    "other-ca": "x509: certificate signed by unknown authority",
    "other-ip": "x509: certificate is valid for 127.0.0.2, not 127.0.0.1",
}


def _node_with_cert(cluster: Cluster, case: str, tmp_path: Path) -> tuple[Node, str]:
    """A Node whose agent presents the certificate of ``case``; its pod's name."""
    if case == "other-ca":
        cert = make_ca(tmp_path / "other-ca", "not-the-kubelet-ca").issue(
            tmp_path / "agent", "kubelet", ips=["127.0.0.1"]
        )
    else:
        cert = cluster.pki.kubelet_ca.issue(
            tmp_path / "agent", "kubelet", dns=["elsewhere"], ips=["127.0.0.2"]
        )
    pod = f"echo-{case}"
    return cluster.add_node([PodSpec(TIER_NAMESPACE, pod)], serving_cert=cert), pod


def _upgrade_error(api: httpx.Client, pod: str, transport: str) -> str:
    session = create_session(
        api,
        namespace=TIER_NAMESPACE,
        target=f"pod/{pod}",
        ports=[f"0:{ECHO_PORT}"],
        transport=transport,
        reconnect={"enabled": False},
    )
    session = wait_for_status(api, session["id"], ["ready", "failed"])
    api.delete(f"/sessions/{session['id']}").raise_for_status()
    assert session["status"] == "failed", session
    return str(session["last_error"])


@pytest.mark.parametrize("case", sorted(X509_ERRORS))
def test_the_apiserver_verifies_the_agents_certificate(
    case: str,
    cluster: Cluster,
    kubeconfig: Path,
    podgate: Podgate,
    api: httpx.Client,
    tmp_path: Path,
) -> None:
    node, pod = _node_with_cert(cluster, case, tmp_path)
    with explain_on_failure(podgate.process, node.agent):
        for transport in ("spdy", "websocket"):
            error = _upgrade_error(api, pod, transport)
            assert "error dialing backend" in error and X509_ERRORS[case] in error, error
        # The same requests reach the agent whose certificate the kubelet CA signed for
        # 127.0.0.1.
        good = create_session(
            api, namespace=TIER_NAMESPACE, target=f"pod/{TIER_POD}", ports=[f"0:{ECHO_PORT}"]
        )
        good = wait_for_status(api, good["id"], "ready")
        assert roundtrip("127.0.0.1", good["ports"][0]["local_port"], b"tls" * 10_000).intact
        api.delete(f"/sessions/{good['id']}").raise_for_status()

    # kubectl upgrades before it listens: it exits with the same error.
    env = kubectl_env(kubeconfig, cache_dir=tmp_path / "cache")
    args = [str(kubectl_path("1.30")), "port-forward", f"pod/{pod}", f"0:{ECHO_PORT}"]
    with ManagedProcess(args, env=env, name="kubectl.1.30") as kubectl:
        assert kubectl.wait(30) != 0, kubectl.describe()
    stderr = kubectl.stderr_text()
    assert "error upgrading connection: error dialing backend" in stderr, kubectl.describe()
    assert X509_ERRORS[case] in stderr, kubectl.describe()
    assert node.agent.returncode is None, node.agent.describe()


def test_the_agent_lets_in_only_the_apiservers_client_certificate(
    cluster: Cluster, tier_node: Node, tmp_path: Path
) -> None:
    """The agents run with --client-ca (the kubelet's --client-ca-file): the apiserver's
    kubelet client certificate gets in (every other test of the tier goes that way), a
    client without a certificate or with a user's certificate does not."""

    verify = ssl.create_default_context(cafile=str(cluster.pki.kubelet_ca.cert))
    pod_path = f"/api/v1/namespaces/{TIER_NAMESPACE}/pods/{TIER_POD}"
    # The handshake fails: no certificate.
    with httpx.Client(verify=verify, timeout=10) as anonymous, pytest.raises(httpx.TransportError):
        anonymous.get(f"{tier_node.url}{pod_path}")
    user = cluster.users["alice"].cert  # signed by the cluster CA, not the kubelet client CA
    verify.load_cert_chain(str(user.cert), str(user.key))
    with httpx.Client(verify=verify, timeout=10) as alice, pytest.raises(httpx.TransportError):
        alice.get(f"{tier_node.url}{pod_path}")
    apiserver = ssl.create_default_context(cafile=str(cluster.pki.kubelet_ca.cert))
    client = cluster.pki.kubelet_client
    apiserver.load_cert_chain(str(client.cert), str(client.key))
    with httpx.Client(verify=apiserver, timeout=10) as trusted:
        answer = trusted.get(f"{tier_node.url}{pod_path}")
    assert answer.status_code == 200, answer.text
