"""podgate sessions over every transport, against a real `podgate agent` whose pod is a
real network namespace: 20 MB each way (SHA-256), 50 concurrent connections, an error on
one connection, and `auto` negotiating like kubectl (tunnel, else SPDY)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.echo import roundtrip
from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.podgate import (
    LISTENING_RE,
    PODGATE,
    api_client,
    concurrent_roundtrips,
    create_session,
    podgate_env,
    run_serve,
    wait_for_status,
)
from tests.support.procs import ManagedProcess

ECHO_PORT = 7000
DEAD_PORT = 7999
MB = 1_000_000
TRANSPORTS = ["spdy", "websocket", "ws-channel", "h2"]


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[NetNamespace]:
    with network_namespace() as ns, echo_server_in(ns, ECHO_PORT):
        yield ns


def _agent(pod_netns: NetNamespace, *extra: str) -> ManagedProcess:
    args = [*PODGATE, "agent", "--listen", "127.0.0.1:0", *extra]
    args += ["--pod", f"default/echo={pod_netns.target}"]
    return ManagedProcess(args, env=podgate_env(), name="podgate-agent")


@pytest.fixture(scope="module")
def kubeconfig(pod_netns: NetNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two contexts: `agent` (every transport) and `no-tunnel` (WebSocket tunnel off)."""
    with _agent(pod_netns) as full, _agent(pod_netns, "--no-websocket-tunnel") as plain:
        urls = {
            "agent": full.wait_for_stdout(LISTENING_RE, 20)[1],
            "no-tunnel": plain.wait_for_stdout(LISTENING_RE, 20)[1],
        }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": n, "cluster": {"server": u}} for n, u in urls.items()],
            "users": [{"name": "nobody", "user": {}}],
            "contexts": [
                {"name": n, "context": {"cluster": n, "user": "nobody", "namespace": "default"}}
                for n in urls
            ],
            "current-context": "agent",
        }
        path = tmp_path_factory.mktemp("kube") / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        yield path


@pytest.fixture(scope="module")
def api(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        run_serve(tmp_path_factory.mktemp("data"), kubeconfig) as serve,
        api_client(serve.url) as client,
    ):
        yield client


def _ready(api: httpx.Client, **body: object) -> dict[str, object]:
    session = create_session(api, namespace="default", target="pod/echo", **body)
    return wait_for_status(api, str(session["id"]), "ready")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_20mb_each_way_and_50_concurrent(api: httpx.Client, transport: str) -> None:
    session = _ready(api, ports=[f"0:{ECHO_PORT}"], transport=transport)
    assert session["transport"] == transport
    local = session["ports"][0]["local_port"]  # type: ignore[index]
    payload = os.urandom(20 * MB)
    started = time.perf_counter()
    result = roundtrip("127.0.0.1", local, payload, timeout=120)
    elapsed = time.perf_counter() - started
    assert result.intact, f"{transport}: sent {result.sent}, got {len(result.received)}"
    print(f"{transport}: 20 MB each way at {2 * 20 / elapsed:.1f} MB/s")
    payloads = [os.urandom(100_000 + i) for i in range(50)]
    results = concurrent_roundtrips("127.0.0.1", local, payloads, timeout=60)
    assert all(r.intact for r in results)
    api.delete(f"/sessions/{session['id']}").raise_for_status()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_error_closes_one_connection_only(api: httpx.Client, transport: str) -> None:
    session = _ready(api, ports=[f"0:{ECHO_PORT}", f"0:{DEAD_PORT}"], transport=transport)
    good, dead = (p["local_port"] for p in session["ports"])  # type: ignore[attr-defined]
    # Closed or reset, maybe before our half-close: either way nothing came back.
    try:
        assert roundtrip("127.0.0.1", dead, b"x", timeout=30).received == b""
    except OSError as exc:
        assert exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN), exc
    assert roundtrip("127.0.0.1", good, b"still up" * 1000, timeout=30).intact
    after = api.get(f"/sessions/{session['id']}").json()
    assert after["status"] == "ready"
    assert after["connection_errors"] >= 1
    assert f"error forwarding port {DEAD_PORT} to pod echo" in after["last_error"]
    api.delete(f"/sessions/{session['id']}").raise_for_status()


def test_auto_uses_the_tunnel_when_offered(api: httpx.Client) -> None:
    assert _ready(api, ports=[f"0:{ECHO_PORT}"])["transport"] == "websocket"


def test_auto_falls_back_to_spdy_when_the_tunnel_is_refused(api: httpx.Client) -> None:
    session = _ready(api, ports=[f"0:{ECHO_PORT}"], context="no-tunnel")
    assert session["transport"] == "spdy"
    local = session["ports"][0]["local_port"]  # type: ignore[index]
    assert roundtrip("127.0.0.1", local, b"fallback" * 1000).intact


def test_websocket_only_fails_clearly_when_the_tunnel_is_refused(api: httpx.Client) -> None:
    session = create_session(
        api,
        namespace="default",
        target="pod/echo",
        ports=[f"0:{ECHO_PORT}"],
        transport="websocket",
        context="no-tunnel",
    )
    failed = wait_for_status(api, str(session["id"]), "failed")
    assert "WebSocket upgrade" in failed["last_error"] and "400" in failed["last_error"]
