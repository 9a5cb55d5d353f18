"""Real kubectl binaries against `podgate agent`, with the pod in a real network namespace.

kubectl 1.27 and 1.30 speak SPDY/3.1; 1.33 uses the WebSocket tunnel by default (its
fallback to SPDY against `--no-websocket-tunnel` is in test_agent_transports.py).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.echo import roundtrip
from tests.support.kube import kubectl_env, kubectl_path, write_kubeconfig
from tests.support.netns import NetNamespace, echo_server_in, network_namespace
from tests.support.procs import ManagedProcess

VERSIONS = ["1.27", "1.30", "1.33"]
ECHO_PORT = 7000
SECOND_ECHO_PORT = 7001
DEAD_PORT = 7999  # nothing listens on it inside the namespace
MB = 1_000_000


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[NetNamespace]:
    with (
        network_namespace() as ns,
        echo_server_in(ns, ECHO_PORT),
        echo_server_in(ns, SECOND_ECHO_PORT),
    ):
        yield ns


@pytest.fixture(scope="module")
def agent_url(pod_netns: NetNamespace) -> Iterator[str]:
    args = [sys.executable, "-m", "service.cli", "agent", "--listen", "127.0.0.1:0"]
    args += ["--pod", f"default/echo={pod_netns.target}"]
    with ManagedProcess(args, name="podgate-agent") as agent:
        yield agent.wait_for_stdout(r"^Listening on (http://\S+)$", 20)[1]
        agent.popen.terminate()
        assert agent.wait(20) == 0, agent.describe()


@pytest.fixture
def kube_env(agent_url: str, tmp_path: Path) -> dict[str, str]:
    return kubectl_env(write_kubeconfig(tmp_path / "kubeconfig", agent_url))


def _port_forward(version: str, env: dict[str, str], *specs: str) -> ManagedProcess:
    args = [str(kubectl_path(version)), "port-forward", "pod/echo", *specs]
    return ManagedProcess(args, env=env, name=f"kubectl.{version}")


def _forwarded_ports(proc: ManagedProcess, count: int) -> list[tuple[int, int]]:
    """Local/remote ports of the next `count` IPv4 `Forwarding from` lines."""
    found = []
    for _ in range(count):
        match = proc.wait_for_stdout(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$", 30)
        found.append((int(match[1]), int(match[2])))
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("version", VERSIONS)
def test_20mb_each_way_through_a_network_namespace(version: str, kube_env: dict[str, str]) -> None:
    payload = os.urandom(20 * MB)
    with _port_forward(version, kube_env, f"0:{ECHO_PORT}") as kubectl:
        [(local, remote)] = _forwarded_ports(kubectl, 1)
        assert remote == ECHO_PORT
        # kubectl also listens on [::1] with the same port, as `oc port-forward` does.
        kubectl.wait_for_stdout(rf"^Forwarding from \[::1\]:{local} -> {ECHO_PORT}$", 10)
        started = time.perf_counter()
        result = roundtrip("127.0.0.1", local, payload, timeout=60)
        elapsed = time.perf_counter() - started
        assert result.intact, f"sent {result.sent} bytes, got {len(result.received)} back"
        print(f"kubectl {version}: 20 MB each way, {2 * 20 / elapsed:.1f} MB/s")
        if version == "1.33":
            # 1.33 uses the WebSocket tunnel (test_agent_transports.py checks which).
            assert "error" not in kubectl.stderr_text().lower(), kubectl.describe()


@pytest.mark.parametrize("version", VERSIONS)
def test_fixed_local_port_and_two_ports_at_once(version: str, kube_env: dict[str, str]) -> None:
    fixed = _free_port()
    with _port_forward(version, kube_env, f"{fixed}:{ECHO_PORT}", f":{SECOND_ECHO_PORT}") as kc:
        ports = dict((remote, local) for local, remote in _forwarded_ports(kc, 2))
        assert ports[ECHO_PORT] == fixed
        assert ports[SECOND_ECHO_PORT] not in (0, fixed)
        for remote, local in ports.items():
            payload = f"to {remote} ".encode() * 1000
            assert roundtrip("127.0.0.1", local, payload).intact


@pytest.mark.parametrize("version", VERSIONS)
def test_50_concurrent_connections(version: str, kube_env: dict[str, str]) -> None:
    payloads = [os.urandom(200_000 + i) for i in range(50)]
    with _port_forward(version, kube_env, f"0:{ECHO_PORT}") as kubectl:
        [(local, _)] = _forwarded_ports(kubectl, 1)
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(
                pool.map(lambda p: roundtrip("127.0.0.1", local, p, timeout=60), payloads)
            )
    assert all(r.intact for r in results)


@pytest.mark.parametrize("version", VERSIONS)
def test_refused_pod_port_reports_the_agents_error_text(
    version: str, kube_env: dict[str, str], pod_netns: NetNamespace
) -> None:
    with _port_forward(version, kube_env, f"0:{DEAD_PORT}") as kubectl:
        [(local, _)] = _forwarded_ports(kubectl, 1)
        with socket.create_connection(("127.0.0.1", local), timeout=30) as sock:
            sock.settimeout(30)
            assert sock.recv(1) == b""  # kubectl closes the local connection
        match = kubectl.wait_for_stderr(r"error forwarding port (\d+) to pod echo, uid .*", 30)
        assert match[1] == str(DEAD_PORT)
        text = match[0].replace('\\"', '"')  # 1.33 logs structured, quotes escaped
        assert f'network namespace "{pod_netns.path}"' in text
        assert f"dial tcp4 127.0.0.1:{DEAD_PORT}: connect: connection refused" in text
        assert f"dial tcp6 [::1]:{DEAD_PORT}: connect: connection refused" in text
