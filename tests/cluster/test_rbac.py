"""RBAC of a real kube-apiserver v1.20.2 against podgate sessions, one user per context of the
same kubeconfig (static tokens; tests/support/cluster.py `setup_tier`):

- carol may do nothing: every transport fails at the pod GET with the apiserver's 403 text.
- bob may get pods, not port-forward: the upgrade is refused with 403 and the session fails
  (auto, spdy, websocket; auto tries the tunnel, is refused, falls back to SPDY, is refused),
  for every transport: ws-channel asks before its first connection (a GET without an
  upgrade, which the apiserver authorizes first), and h2 finds no podgate agent there.
- alice may get/list/watch pods and *create* pods/portforward (a POST, SPDY). A WebSocket
  upgrade is a GET, which a 1.20 apiserver authorizes as `get` on pods/portforward: alice's
  `websocket` session fails, and `auto` falls back to SPDY as kubectl does, and works.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.cluster import ECHO_PORT, TIER_NAMESPACE, TIER_POD, Cluster
from tests.support.echo import roundtrip
from tests.support.podgate import Podgate, create_session, explain_on_failure, wait_for_status

pytestmark = pytest.mark.timeout(60)

FORBIDDEN = (
    'pods "{pod}" is forbidden: User "{user}" cannot {verb} resource "{resource}" '
    f'in API group "" in the namespace "{TIER_NAMESPACE}"'
)


def _session(api: httpx.Client, user: str, transport: str) -> dict[str, Any]:
    session = create_session(
        api,
        namespace=TIER_NAMESPACE,
        target=f"pod/{TIER_POD}",
        ports=[f"0:{ECHO_PORT}"],
        transport=transport,
        context=user,
        reconnect={"enabled": True, "max_attempts": 3},
    )
    return wait_for_status(api, session["id"], ["ready", "failed"])


def _forbidden(user: str, verb: str, resource: str) -> str:
    return FORBIDDEN.format(pod=TIER_POD, user=user, verb=verb, resource=resource)


@pytest.mark.parametrize("transport", ["auto", "spdy", "websocket", "ws-channel", "h2"])
def test_carol_without_get_pods_fails_with_the_apiservers_forbidden(
    transport: str, podgate: Podgate, api: httpx.Client
) -> None:
    with explain_on_failure(podgate.process):
        session = _session(api, "carol", transport)
        assert session["status"] == "failed", session
        assert "403" in session["last_error"], session
        assert _forbidden("carol", "get", "pods") in session["last_error"], session
        api.delete(f"/sessions/{session['id']}").raise_for_status()


@pytest.mark.parametrize(
    ("transport", "verb"), [("auto", "create"), ("spdy", "create"), ("websocket", "get")]
)
def test_bob_without_portforward_fails_with_the_apiservers_forbidden(
    transport: str, verb: str, cluster: Cluster, podgate: Podgate, api: httpx.Client
) -> None:
    mark = cluster.apiserver.log.mark()
    with explain_on_failure(podgate.process):
        session = _session(api, "bob", transport)
        assert session["status"] == "failed", session
        assert "403" in session["last_error"], session
        assert _forbidden("bob", verb, "pods/portforward") in session["last_error"], session
        api.delete(f"/sessions/{session['id']}").raise_for_status()
    # A refused session is not re-dialled: 403 is final (auto: one GET, then one POST).
    expected = 2 if transport == "auto" else 1
    refused = cluster.apiserver.log.wait_for(
        mark,
        count=expected,
        user_agent="podgate/",
        uri=f"/pods/{TIER_POD}/portforward$",
        status=403,
    )
    assert len(refused) == expected, refused


def test_bob_without_portforward_fails_with_ws_channel_too(
    cluster: Cluster, podgate: Podgate, api: httpx.Client
) -> None:
    """ws-channel dials per local connection: it stayed `ready` and reset every connection
    with the 403. It now asks at connect time, with a GET that the apiserver authorizes
    before it answers "Upgrade request required"."""
    with explain_on_failure(podgate.process):
        session = _session(api, "bob", "ws-channel")
        assert session["status"] == "failed", session
        assert _forbidden("bob", "get", "pods/portforward") in session["last_error"], session
        api.delete(f"/sessions/{session['id']}").raise_for_status()


@pytest.mark.parametrize("user", ["bob", "alice", "admin"])
def test_h2_through_an_apiserver_fails_it_is_not_a_podgate_agent(
    user: str, cluster: Cluster, podgate: Podgate, api: httpx.Client
) -> None:
    """h2 needs `podgate agent` as the server. Through the apiserver the session said
    `ready` and local clients got the apiserver's 403 body as pod data."""
    mark = cluster.apiserver.log.mark()
    with explain_on_failure(podgate.process):
        session = _session(api, user, "h2")
        assert session["status"] == "failed", session
        assert f"{cluster.server} is not a podgate agent" in session["last_error"], session
        assert "GET /v1/agent" in session["last_error"], session
        api.delete(f"/sessions/{session['id']}").raise_for_status()
    # The handshake, like every request of podgate's, carries its User-Agent.
    [handshake] = cluster.apiserver.log.wait_for(mark, uri="^/v1/agent$")
    assert handshake.user_agent.startswith("podgate/"), handshake
    assert handshake.status in (403, 404), handshake


@pytest.mark.parametrize(("transport", "negotiated"), [("auto", "spdy"), ("spdy", "spdy")])
def test_alice_may_port_forward(
    transport: str, negotiated: str, podgate: Podgate, api: httpx.Client
) -> None:
    with explain_on_failure(podgate.process):
        session = _session(api, "alice", transport)
        assert session["status"] == "ready", session
        assert session["transport"] == negotiated
        local = session["ports"][0]["local_port"]
        assert roundtrip("127.0.0.1", local, b"alice " * 100_000, timeout=30).intact
        api.delete(f"/sessions/{session['id']}").raise_for_status()


@pytest.mark.parametrize("transport", ["websocket", "ws-channel"])
def test_alice_websocket_needs_get_on_portforward_with_a_120_apiserver(
    transport: str, podgate: Podgate, api: httpx.Client
) -> None:
    with explain_on_failure(podgate.process):
        session = _session(api, "alice", transport)
        assert session["status"] == "failed", session
        assert _forbidden("alice", "get", "pods/portforward") in session["last_error"], session
        api.delete(f"/sessions/{session['id']}").raise_for_status()
