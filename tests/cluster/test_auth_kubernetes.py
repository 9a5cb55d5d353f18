"""`podgate serve --auth kubernetes` against a real kube-apiserver v1.20.2 (issue 11).

podgate's kubeconfig is admin's (it creates TokenReviews and SubjectAccessReviews); the
callers present their own bearer tokens: alice's, bob's and carol's static tokens
(tests/support/cluster.py `setup_tier`: alice may port-forward in `tier`, bob may only get
pods, carol nothing) and service-account tokens from the TokenRequest API with RBAC of
their own. The cluster decides who the caller is and what it may create; the session's
owner is the name the cluster gives.
"""

from __future__ import annotations

import secrets
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
    Podgate,
    api_client,
    explain_on_failure,
    run_serve,
    wait_for_status,
)

pytestmark = pytest.mark.timeout(60)

PROBLEM_JSON = "application/problem+json"
BODY = {"namespace": TIER_NAMESPACE, "target": f"pod/{TIER_POD}", "ports": [f"0:{ECHO_PORT}"]}


@pytest.fixture(scope="module")
def guarded(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podgate]:
    """`podgate serve --auth kubernetes` on the tier's kubeconfig (admin is current)."""
    data = tmp_path_factory.mktemp("podgate-auth-data")
    with run_serve(data, kubeconfig, extra_args=["--auth", "kubernetes"]) as serve:
        serve.process.wait_for_stderr(r"authentication: bearer tokens checked by the cluster", 5)
        yield serve


@pytest.fixture(scope="module")
def client(guarded: Podgate) -> Iterator[httpx.Client]:
    with api_client(guarded.url) as api:
        yield api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def as_user(cluster: Cluster, user: str) -> dict[str, str]:
    return bearer(cluster.users[user].token)


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    detail: str = response.json()["detail"]
    return detail


def service_account(cluster: Cluster, rules: list[dict[str, Any]] | None) -> tuple[str, str]:
    """A new service account in the tier namespace, granted `rules` (if any): its user
    name and a TokenRequest token."""
    name = f"forwarder-{secrets.token_hex(3)}"
    cluster.create_service_account(TIER_NAMESPACE, name)
    if rules is not None:
        cluster.grant(name, TIER_NAMESPACE, rules, kind="ServiceAccount")
    token = cluster.service_account_token(TIER_NAMESPACE, name, expiration_seconds=3600)
    return f"system:serviceaccount:{TIER_NAMESPACE}:{name}", token


def test_alices_session_is_hers_and_forwards_bytes(
    cluster: Cluster, guarded: Podgate, client: httpx.Client
) -> None:
    alice, bob = as_user(cluster, "alice"), as_user(cluster, "bob")
    with explain_on_failure(guarded.process):
        created = client.post("/sessions", json=BODY, headers=alice)
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["owner"] == "alice"
        with httpx.Client(base_url=guarded.url, headers=alice, timeout=10) as hers:
            session = wait_for_status(hers, session["id"], "ready")
        local = session["ports"][0]["local_port"]
        assert roundtrip("127.0.0.1", local, b"alice through the cluster" * 1000).intact
        # Bob is authenticated, but alice's session does not exist for him.
        assert client.get("/sessions", headers=bob).json() == {"data": [], "count": 0}
        problem(client.get(f"/sessions/{session['id']}", headers=bob), 404)
        problem(client.delete(f"/sessions/{session['id']}", headers=bob), 404)
        listed = client.get("/sessions", headers=alice).json()
        assert [s["id"] for s in listed["data"]] == [session["id"]]
        assert client.delete(f"/sessions/{session['id']}", headers=alice).status_code == 204


@pytest.mark.parametrize("token", [None, "not-a-token", "alice"])
def test_no_token_or_one_the_cluster_refuses_is_401(
    cluster: Cluster, client: httpx.Client, token: str | None
) -> None:
    if token == "alice":
        token = cluster.users["alice"].token[:-1]  # one character short
    headers = {} if token is None else bearer(token)
    for method, path in [("GET", "/sessions"), ("POST", "/sessions"), ("GET", "/events")]:
        response = client.request(
            method, path, headers=headers, json=BODY if method == "POST" else None
        )
        assert "bearer token" in problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/healthz").json()["sessions"] == 0


@pytest.mark.parametrize(
    ("user", "namespace", "missing"),
    [
        ("bob", TIER_NAMESPACE, f'create "pods/portforward" in namespace "{TIER_NAMESPACE}"'),
        ("carol", TIER_NAMESPACE, f'get "pods" in namespace "{TIER_NAMESPACE}"'),
        ("alice", "default", 'get "pods" in namespace "default"'),
    ],
)
def test_a_missing_permission_is_403_naming_it(
    cluster: Cluster, client: httpx.Client, user: str, namespace: str, missing: str
) -> None:
    headers = as_user(cluster, user)
    response = client.post("/sessions", json={**BODY, "namespace": namespace}, headers=headers)
    assert problem(response, 403) == (
        f'user "{user}" may not {missing}, which port-forwarding needs'
    )
    assert client.get("/sessions", headers=headers).json()["count"] == 0
    assert client.get("/healthz").json()["sessions"] == 0  # nothing was created


def test_a_service_account_with_its_own_rbac(
    cluster: Cluster, guarded: Podgate, client: httpx.Client
) -> None:
    user, token = service_account(cluster, PORT_FORWARD_RULES)
    with explain_on_failure(guarded.process):
        created = client.post("/sessions", json=BODY, headers=bearer(token))
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["owner"] == user
        with httpx.Client(base_url=guarded.url, headers=bearer(token), timeout=10) as its:
            session = wait_for_status(its, session["id"], "ready")
        assert roundtrip("127.0.0.1", session["ports"][0]["local_port"], b"sa" * 5000).intact
        # Alice does not see it; the account does.
        assert client.get("/sessions", headers=as_user(cluster, "alice")).json()["count"] == 0
        assert client.delete(f"/sessions/{session['id']}", headers=bearer(token)).status_code == 204
    # An account the cluster authenticates but gives no rights to.
    idle, idle_token = service_account(cluster, None)
    response = client.post("/sessions", json=BODY, headers=bearer(idle_token))
    assert problem(response, 403) == (
        f'user "{idle}" may not get "pods" in namespace "{TIER_NAMESPACE}", '
        "which port-forwarding needs"
    )


@pytest.mark.parametrize("context", ["alice", "admin", "no-such-context"])
def test_a_context_other_than_the_default_is_refused(
    cluster: Cluster, client: httpx.Client, context: str
) -> None:
    """A session dials with podgate's own credentials: a caller must not pick others
    (`admin` would be an escalation)."""
    response = client.post(
        "/sessions", json={**BODY, "context": context}, headers=as_user(cluster, "alice")
    )
    assert "leave out context" in problem(response, 403)
    assert client.get("/healthz").json()["sessions"] == 0
