"""Target resolution (service.upstream.resolve) against a real `podgate agent` whose registry
file holds pods, Services and workloads; and real kubectl 1.30 resolving `svc/…` and
`deploy/…` against the same agent, end to end through an echo server.

The pods' network is `host:127.0.0.2`, where the echo server listens: kubectl's listeners on
127.0.0.1 can never be mistaken for the pod's port. No mocks; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.ports import PortMapping, parse_port_specs
from service.upstream import (
    Cluster,
    InvalidTarget,
    NoRunningPod,
    PodNotFound,
    PodNotRunning,
    PortNotFound,
    Resolution,
    TargetNotFound,
    UnsupportedProtocol,
    UpstreamError,
    parse_target,
    resolve_target,
)
from tests.support.echo import EchoServer, echo_server, roundtrip
from tests.support.kube import kubectl_env, kubectl_path, start_port_forward, write_kubeconfig
from tests.support.procs import ManagedProcess

pytestmark = pytest.mark.timeout(60)

POD_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with echo_server(POD_HOST) as server:
        yield server


def _pod(name: str, labels: dict[str, str], port: int, **extra: Any) -> dict[str, Any]:
    return {
        "namespace": "default",
        "name": name,
        "target": f"host:{POD_HOST}",
        "labels": labels,
        "ports": [{"name": "http", "containerPort": port}],
        **extra,
    }


def _registry(echo_port: int) -> dict[str, Any]:
    web, db, rs = {"app": "web"}, {"app": "db"}, {"app": "rs", "tier": "a"}
    idle, nothing = {"app": "idle"}, {"app": "x"}
    return {
        "pods": [
            # Listed first, so only the ordering can make the ready pod win.
            _pod("web-starting", web, echo_port, ready=False),
            _pod("web-pending", web, echo_port, phase="Pending"),
            _pod("web-1", web, echo_port),
            _pod("db-1", db, echo_port, ready=False),
            _pod("db-0", db, echo_port),
            _pod("rs-x", rs, echo_port, ready=False),
            _pod("rs-y", rs, echo_port),
            _pod("rs-other", {"app": "rs", "tier": "b"}, echo_port),
            _pod("idle-0", idle, echo_port, phase="Pending"),
            {
                "namespace": "default",
                "name": "dns",
                "target": f"host:{POD_HOST}",
                "labels": {"app": "dns"},
                "ports": [
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"name": "mdns-udp", "containerPort": 5353, "protocol": "UDP"},
                    {"name": "mdns-tcp", "containerPort": 5353, "protocol": "TCP"},
                    {"name": "stats", "containerPort": 9153},
                ],
            },
        ],
        "services": [
            {
                "namespace": "default",
                "name": "web",
                "selector": web,
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "plain", "port": 81, "targetPort": echo_port},
                    {"name": "same", "port": echo_port},
                    {"name": "missing", "port": 82, "targetPort": "grpc"},
                ],
            },
            {
                "namespace": "default",
                "name": "dns",
                "selector": {"app": "dns"},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp-target", "port": 54, "targetPort": "dns"},
                    {"name": "metrics", "port": 9153},
                ],
            },
            {"namespace": "default", "name": "external", "ports": [{"port": 80}]},
            {
                "namespace": "default",
                "name": "web-headless",
                "clusterIP": "None",
                "selector": web,
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
            {"namespace": "default", "name": "idle", "selector": idle, "ports": [80]},
        ],
        "workloads": [
            {"namespace": "default", "kind": "Deployment", "name": "web", "selector": web},
            {"namespace": "default", "kind": "StatefulSet", "name": "db", "selector": db},
            {"namespace": "default", "kind": "ReplicaSet", "name": "rs-a", "selector": rs},
            {"namespace": "default", "kind": "Deployment", "name": "idle", "selector": idle},
            {"namespace": "default", "kind": "Deployment", "name": "gone", "selector": nothing},
        ],
    }


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory: pytest.TempPathFactory, echo: EchoServer) -> Iterator[str]:
    pods = tmp_path_factory.mktemp("agent") / "registry.yaml"
    pods.write_text(yaml.safe_dump(_registry(echo.port)))
    args = [sys.executable, "-m", "service.cli", "agent", "--listen", "127.0.0.1:0"]
    args += ["--pods", str(pods)]
    with ManagedProcess(args, name="podgate-agent") as agent:
        yield agent.wait_for_stdout(r"^Listening on (http://\S+)$", 20)[1]
        agent.popen.terminate()
        assert agent.wait(20) == 0, agent.describe()


@pytest.fixture
async def cluster(agent_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    loaded = await Cluster.load(str(write_kubeconfig(tmp_path / "kubeconfig", agent_url)))
    try:
        yield loaded
    finally:
        await loaded.close()


async def _resolve(cluster: Cluster, target: str, *specs: str) -> Resolution:
    mappings = parse_port_specs(list(specs), allow_names=True)
    return await resolve_target(cluster, "default", parse_target(target), mappings)


def _ports(resolution: Resolution) -> list[tuple[int, int]]:
    assert all(m.remote_name is None for m in resolution.mappings)
    return [(m.local_port, m.remote_port) for m in resolution.mappings]


# --------------------------------------------------------------------------- pods


async def test_pod_named_and_numeric_ports(cluster: Cluster, echo: EchoServer) -> None:
    got = await _resolve(cluster, "pod/web-1", "8080:http", "http", ":http", "7000")
    assert got.pod.name == "web-1" and got.pod.phase == "Running"
    assert _ports(got) == [(8080, echo.port), (echo.port, echo.port), (0, echo.port), (7000, 7000)]
    assert [m.spec for m in got.mappings] == ["8080:http", "http", ":http", "7000"]
    # A bare name is a pod too.
    assert (await _resolve(cluster, "web-1", "http")).pod.name == "web-1"


async def test_pod_without_that_named_port(cluster: Cluster) -> None:
    with pytest.raises(PortNotFound) as caught:
        await _resolve(cluster, "pod/web-1", "8080:grpc")
    assert str(caught.value) == "Pod 'web-1' does not have a named port 'grpc'"
    assert not caught.value.retryable


async def test_pod_errors_keep_their_types(cluster: Cluster) -> None:
    with pytest.raises(PodNotFound) as missing:
        await _resolve(cluster, "pod/nope", "80")
    assert not missing.value.retryable
    with pytest.raises(PodNotRunning) as pending:
        await _resolve(cluster, "pod/web-pending", "80")
    assert pending.value.retryable


# --------------------------------------------------------------------------- services


async def test_service_port_to_named_target_port(cluster: Cluster, echo: EchoServer) -> None:
    got = await _resolve(cluster, "svc/web", "80", "0:80", "9000:80")
    assert got.pod.name == "web-1"  # Running and Ready, over web-starting and web-pending
    # kubectl: the local port of a bare "80" is the service port, the remote the targetPort.
    assert _ports(got) == [(80, echo.port), (0, echo.port), (9000, echo.port)]


async def test_service_port_to_numeric_and_default_target_port(
    cluster: Cluster, echo: EchoServer
) -> None:
    got = await _resolve(cluster, "service/web", "81", f":{echo.port}")
    assert _ports(got) == [(81, echo.port), (0, echo.port)]


async def test_service_port_by_name(cluster: Cluster, echo: EchoServer) -> None:
    got = await _resolve(cluster, "services/web", "http", "9000:http", ":plain", "same")
    # A bare name listens on the *service* port's number, as kubectl does.
    assert _ports(got) == [(80, echo.port), (9000, echo.port), (0, echo.port), (echo.port,) * 2]


async def test_service_port_errors(cluster: Cluster) -> None:
    with pytest.raises(PortNotFound, match=r"^Service web does not have a service port 99$"):
        await _resolve(cluster, "svc/web", "99")
    with pytest.raises(PortNotFound, match=r"^Service 'web' does not have a named port 'grpc'$"):
        await _resolve(cluster, "svc/web", "grpc")
    with pytest.raises(PortNotFound, match=r"^Pod 'web-1' does not have a named port 'grpc'$"):
        await _resolve(cluster, "svc/web", "82")  # its targetPort names no container port


async def test_headless_service_ports_are_not_translated(cluster: Cluster) -> None:
    got = await _resolve(cluster, "svc/web-headless", "80", "7000")
    assert _ports(got) == [(80, 80), (7000, 7000)]


async def test_service_without_selector(cluster: Cluster) -> None:
    with pytest.raises(InvalidTarget) as caught:
        await _resolve(cluster, "svc/external", "80")
    assert str(caught.value) == (
        "invalid service 'external': Service is defined without a selector"
    )
    assert not caught.value.retryable


async def test_unknown_service_and_workloads_are_not_found(cluster: Cluster) -> None:
    for target, text in [
        ("svc/nope", 'service "nope" not found in namespace "default"'),
        ("deploy/nope", 'deployment "nope" not found in namespace "default"'),
        ("sts/nope", 'statefulset "nope" not found in namespace "default"'),
        ("rs/nope", 'replicaset "nope" not found in namespace "default"'),
    ]:
        with pytest.raises(TargetNotFound) as caught:
            await _resolve(cluster, target, "80")
        assert str(caught.value) == text
        assert (caught.value.status, caught.value.retryable) == (404, False)


# --------------------------------------------------------------------------- workloads


@pytest.mark.parametrize(
    ("target", "pod"),
    [
        ("deploy/web", "web-1"),
        ("deployment.apps/web", "web-1"),
        ("sts/db", "db-0"),
        ("rs/rs-a", "rs-y"),  # rs-other has app=rs but not tier=a
    ],
)
async def test_workloads_pick_the_running_ready_pod(
    cluster: Cluster, echo: EchoServer, target: str, pod: str
) -> None:
    got = await _resolve(cluster, target, "0:http", "7000")
    assert got.pod.name == pod
    assert got.pod.phase == "Running"
    assert _ports(got) == [(0, echo.port), (7000, 7000)]


async def test_no_running_pod_is_retryable(cluster: Cluster) -> None:
    with pytest.raises(NoRunningPod) as pending:
        await _resolve(cluster, "deploy/idle", "80")
    assert pending.value.retryable
    assert str(pending.value).startswith('no running pod for deployment "idle"')
    assert '"idle-0" is Pending' in str(pending.value)
    with pytest.raises(NoRunningPod) as empty:
        await _resolve(cluster, "deploy/gone", "80")
    assert empty.value.retryable
    assert "no pod matches the selector app=x" in str(empty.value)
    with pytest.raises(NoRunningPod, match='no running pod for service "idle"'):
        await _resolve(cluster, "svc/idle", "80")


async def test_a_wrong_service_port_fails_at_once_even_without_a_running_pod(
    cluster: Cluster,
) -> None:
    with pytest.raises(PortNotFound):
        await _resolve(cluster, "svc/idle", "81")


# --------------------------------------------------------------------------- UDP


async def test_udp_only_ports_are_refused(cluster: Cluster) -> None:
    cases = [
        ("pod/dns", "53", "UDP protocol is not supported for 53"),
        ("pod/dns", "5300:dns", "UDP protocol is not supported for dns"),
        ("svc/dns", "53", "UDP protocol is not supported for 53"),
        ("svc/dns", "dns", "UDP protocol is not supported for dns"),
        # TCP service port whose targetPort is a UDP-only container port.
        ("svc/dns", "54", "UDP protocol is not supported for 54"),
    ]
    for target, spec, text in cases:
        with pytest.raises(UnsupportedProtocol) as caught:
            await _resolve(cluster, target, spec)
        assert str(caught.value).startswith(text), (target, spec, caught.value)
        assert not caught.value.retryable


async def test_a_port_that_is_udp_and_tcp_is_allowed(cluster: Cluster) -> None:
    got = await _resolve(cluster, "pod/dns", "5353", "mdns-udp", "stats")
    assert _ports(got) == [(5353, 5353), (5353, 5353), (9153, 9153)]
    assert _ports(await _resolve(cluster, "svc/dns", "metrics")) == [(9153, 9153)]


# --------------------------------------------------------------------------- agent emulation


def _get(agent_url: str, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(agent_url + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            return exc.code, json.loads(exc.read())


def test_agent_pod_list_takes_equality_selectors_only(agent_url: str) -> None:
    code, body = _get(agent_url, "/api/v1/namespaces/default/pods?labelSelector=app%3Drs,tier==a")
    assert (code, body["kind"]) == (200, "PodList")
    assert sorted(item["metadata"]["name"] for item in body["items"]) == ["rs-x", "rs-y"]
    for selector in ("app!%3Dweb", "app%20in%20(web)", "app"):
        code, body = _get(agent_url, f"/api/v1/namespaces/default/pods?labelSelector={selector}")
        assert (code, body["reason"]) == (400, "BadRequest")
        assert "only equality selectors" in body["message"]
    code, body = _get(agent_url, "/api/v1/namespaces/default/pods?watch=true")
    assert code == 400 and "watch is not supported" in body["message"]


def test_agent_discovery_lists_the_apps_group(agent_url: str) -> None:
    code, body = _get(agent_url, "/apis")
    assert code == 200 and [g["name"] for g in body["groups"]] == ["apps"]
    code, body = _get(agent_url, "/apis/apps/v1")
    assert sorted(r["name"] for r in body["resources"]) == [
        "deployments",
        "replicasets",
        "statefulsets",
    ]
    code, body = _get(agent_url, "/apis/apps/v1/namespaces/default/deployments/nope")
    assert (code, body["message"], body["details"]["kind"]) == (
        404,
        'deployments.apps "nope" not found',
        "deployments",
    )


# --------------------------------------------------------------------------- kubectl


@pytest.mark.parametrize(
    ("target", "spec"),
    [("svc/web", "0:80"), ("svc/web", "0:http"), ("deploy/web", "0:http"), ("sts/db", "0:http")],
)
def test_kubectl_resolves_against_the_agent(
    agent_url: str, echo: EchoServer, tmp_path: Path, target: str, spec: str
) -> None:
    env = kubectl_env(write_kubeconfig(tmp_path / "kubeconfig", agent_url), websockets=False)
    before = echo.connections
    with start_port_forward(kubectl_path("1.30"), target, spec, env=env) as forward:
        assert forward.remote_port == echo.port  # kubectl translated the port like we do
        payload = os.urandom(300_000)
        assert roundtrip("127.0.0.1", forward.local_port, payload, timeout=30).intact
    assert echo.connections == before + 1


def test_mapping_type_is_what_sessions_get() -> None:
    # resolve_target hands back plain numeric PortMappings, ready for the listeners.
    mapping = PortMapping("http", 0, 0, remote_name="http").with_remote_port(8080)
    assert (mapping.local_port, mapping.remote_port, mapping.remote_name) == (8080, 8080, None)
    assert issubclass(TargetNotFound, UpstreamError) and issubclass(NoRunningPod, UpstreamError)
