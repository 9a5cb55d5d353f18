"""podgate authenticates to a real kube-apiserver v1.20.2 with the credentials users have:
a static bearer token, a client certificate, an exec credential plugin, and the in-cluster
service account (a real token from the TokenRequest API, RBAC-bound to the account).

Each runs its own `podgate serve`. The identity carries RBAC rights to port-forward in
namespace `tier` and nothing else, so a session that becomes ready and carries bytes proves
the apiserver authenticated it (anonymous requests are forbidden).

In-cluster: kubernetes_asyncio reads the fixed directory
/var/run/secrets/kubernetes.io/serviceaccount. That `podgate serve` runs in a private mount
namespace (`unshare --mount`) where a tmpfs covers /run and the test's token directory is
bind-mounted there: nothing is written outside the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
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
    LISTENING_RE,
    PODGATE,
    START_TIMEOUT,
    Podgate,
    api_client,
    create_session,
    explain_on_failure,
    podgate_env,
    run_serve,
    wait_for_status,
)
from tests.support.procs import ManagedProcess

pytestmark = pytest.mark.timeout(90)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _forward_works(api: httpx.Client, podgate: Podgate, **body: Any) -> dict[str, Any]:
    """A session to pod/echo becomes ready and round-trips 600 kB; returns it."""
    with explain_on_failure(podgate.process):
        session = create_session(
            api,
            namespace=TIER_NAMESPACE,
            target=f"pod/{TIER_POD}",
            ports=[f"0:{ECHO_PORT}"],
            **body,
        )
        session = wait_for_status(api, session["id"], ["ready", "failed"])
        assert session["status"] == "ready", session
        local = session["ports"][0]["local_port"]
        assert roundtrip("127.0.0.1", local, b"credentials " * 50_000, timeout=30).intact
        return session


@pytest.mark.parametrize("auth", ["token", "cert", "exec"])
def test_alice_with_a_kubeconfig_credential(auth: str, cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "alice", auth=auth)
    text = kubeconfig.read_text()
    assert ("token:" in text) == (auth == "token")
    assert ("client-certificate:" in text) == (auth == "cert")
    with run_serve(tmp_path / "data", kubeconfig) as serve, api_client(serve.url) as api:
        _forward_works(api, serve)
    if auth == "exec":
        calls = tmp_path / "kubeconfig.exec-alice.calls"
        assert calls.exists(), "the exec plugin never ran"
        assert calls.read_text().count("called") >= 1


@contextlib.contextmanager
def _in_cluster_serve(
    cluster: Cluster, service_account_dir: Path, workdir: Path
) -> Iterator[Podgate]:
    """`podgate serve` with no kubeconfig anywhere, KUBERNETES_SERVICE_HOST/PORT pointing at
    the apiserver and ``service_account_dir`` mounted at SERVICE_ACCOUNT_DIR, privately."""
    if shutil.which("unshare") is None:
        raise FileNotFoundError("unshare not found: install util-linux")
    home = workdir / "home"  # no ~/.kube/config there
    home.mkdir()
    script = (
        "set -e; mount -t tmpfs podgate-test-run /run; "
        f"mkdir -p {SERVICE_ACCOUNT_DIR}; "
        f'mount --bind "$PODGATE_TEST_SA_DIR" {SERVICE_ACCOUNT_DIR}; exec "$@"'
    )
    args = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]
    args += [*PODGATE, "serve", "--port", "0", "--data-dir", str(workdir / "data")]
    env = podgate_env()
    env.update(
        HOME=str(home),
        PODGATE_TEST_SA_DIR=str(service_account_dir),
        KUBERNETES_SERVICE_HOST="127.0.0.1",
        KUBERNETES_SERVICE_PORT=str(cluster.apiserver.port),
    )
    with ManagedProcess(args, env=env, name="podgate-serve-in-cluster") as proc:
        yield Podgate(proc, proc.wait_for_stdout(LISTENING_RE, START_TIMEOUT)[1])


def test_in_cluster_service_account(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create_service_account(TIER_NAMESPACE, "podgate")
    cluster.grant(
        "podgate", TIER_NAMESPACE, PORT_FORWARD_RULES, kind="ServiceAccount", name="sa-podgate"
    )
    token = cluster.service_account_token(TIER_NAMESPACE, "podgate")
    assert token.count(".") == 2, "a TokenRequest answers a JWT"
    secrets_dir = tmp_path / "serviceaccount"
    secrets_dir.mkdir()
    (secrets_dir / "token").write_text(token)
    (secrets_dir / "namespace").write_text(TIER_NAMESPACE)
    shutil.copy(cluster.ca_cert, secrets_dir / "ca.crt")
    with (
        _in_cluster_serve(cluster, secrets_dir, tmp_path) as serve,
        api_client(serve.url) as api,
    ):
        _forward_works(api, serve)
    assert not Path(SERVICE_ACCOUNT_DIR).exists() or not any(
        p.read_bytes() == token.encode() for p in Path(SERVICE_ACCOUNT_DIR).glob("*")
    ), f"the token leaked into the host's {SERVICE_ACCOUNT_DIR}"
