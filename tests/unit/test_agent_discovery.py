"""`podgate agent --cluster`: registry entries from raw pods, and a pod's network namespace
found from its UID (on a recorded /proc tree, and on this machine's real /proc with a
process of a real network namespace moved into a cgroup named after a pod), then dialled."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from service.agent.dialer import DialError, PodDialer
from service.agent.discovery import PodDiscovery, netns_dialer, pod_entry
from service.agent.netns import NetnsNotFound, find_pod_netns
from service.agent.registry import PodEntry, PodRegistry, PodTarget
from service.upstream import Cluster
from tests.support.echo import echo_server
from tests.support.netns import NetNamespace, echo_server_in, network_namespace, pod_sandbox

UID = "1f6c0d2e-7a3b-4c5d-9e8f-0a1b2c3d4e5f"


def _pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "shop",
            "name": "web-1",
            "uid": UID,
            "labels": {"app": "web"},
        },
        "spec": {
            "containers": [
                {"name": "a", "ports": [{"containerPort": 8080, "name": "http"}]},
                {"name": "b", "ports": [{"containerPort": 9090, "protocol": "UDP"}]},
            ]
        },
        "status": status,
    }


def test_a_running_pod_becomes_an_entry_dialled_by_ip_ipv4_first() -> None:
    entry = pod_entry(
        _pod(
            phase="Running",
            podIPs=[{"ip": "fd00::7"}, {"ip": "10.1.2.7"}],
            conditions=[{"type": "Ready", "status": "True"}],
        ),
    )
    assert entry is not None
    assert (entry.namespace, entry.name, entry.uid) == ("shop", "web-1", UID)
    assert entry.target == PodTarget("pod-ip", "10.1.2.7,fd00::7")
    assert entry.addresses == ("10.1.2.7", "fd00::7")
    assert [(p.container_port, p.name, p.protocol) for p in entry.ports] == [
        (8080, "http", "TCP"),
        (9090, None, "UDP"),
    ]
    assert entry.labels == {"app": "web"}
    assert (entry.phase, entry.ready) == ("Running", True)


def test_a_pod_without_an_address_or_not_running_is_kept_but_not_dialable() -> None:
    pending = pod_entry(_pod(phase="Pending"))
    assert pending is not None
    assert pending.target.kind == "none" and "has no address yet" in pending.target.location
    assert (pending.phase, pending.ready) == ("Pending", False)
    legacy = pod_entry(_pod(phase="Running", podIP="10.1.2.8"))  # no podIPs field
    assert legacy is not None and legacy.target == PodTarget("pod-ip", "10.1.2.8")
    # netns mode: found by UID when dialled, with the IPs to fall back on
    netns = pod_entry(_pod(phase="Running", podIP="10.1.2.8"), "netns")
    assert netns is not None and netns.target == PodTarget("pod-netns", UID)
    assert netns.addresses == ("10.1.2.8",)


def _recorded_proc(tmp_path: Path, processes: dict[int, tuple[str, str]]) -> Path:
    """A /proc as the agent reads it: PID/cgroup and PID/ns/net (a link), and self."""
    proc = tmp_path / "proc"
    for pid, (cgroup, netns) in processes.items():
        (proc / str(pid) / "ns").mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cgroup)
        os.symlink(netns, proc / str(pid) / "ns" / "net")
    (proc / "self" / "ns").mkdir(parents=True)
    os.symlink("net:[4026531840]", proc / "self" / "ns" / "net")
    return proc


@pytest.mark.parametrize(
    "cgroup",
    [
        # cgroupfs driver (cgroup v1), the sandbox of a burstable pod
        f"12:pids:/kubepods/burstable/pod{UID}/3c1f\n1:name=systemd:/kubepods/burstable/pod{UID}/3c1f\n",
        # systemd driver (cgroup v2): dashes become underscores in the slice name
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-3c1f.scope\n",
    ],
    ids=["cgroupfs", "systemd"],
)
def test_the_pods_netns_is_found_from_its_uid(tmp_path: Path, cgroup: str) -> None:
    proc = _recorded_proc(
        tmp_path,
        {
            1: ("0::/init.scope\n", "net:[4026531840]"),
            4711: (cgroup, "net:[4026532456]"),
            4800: (cgroup, "net:[4026532456]"),  # the app container: a later process
        },
    )
    assert find_pod_netns(UID, proc) == str(proc / "4711" / "ns" / "net")


def test_a_pod_not_on_this_node_or_on_the_hosts_network_is_not_found(tmp_path: Path) -> None:
    proc = _recorded_proc(
        tmp_path,
        {
            1: ("0::/init.scope\n", "net:[4026531840]"),
            900: (f"0::/kubepods/pod{UID}/c\n", "net:[4026531840]"),  # hostNetwork: the node's
        },
    )
    with pytest.raises(NetnsNotFound, match="hostNetwork"):
        find_pod_netns(UID, proc)
    with pytest.raises(NetnsNotFound, match="hostPID"):
        find_pod_netns(str(uuid.uuid4()), proc)


@pytest.fixture
def pod_process() -> Iterator[tuple[str, NetNamespace, int]]:
    """A process in a real network namespace, moved into a cgroup named like a pod's."""
    uid = str(uuid.uuid4())
    with network_namespace("podgate-netns-lookup") as ns, pod_sandbox(uid, ns) as pid:
        yield uid, ns, pid


def test_the_netns_of_a_real_process_in_a_pod_cgroup(
    pod_process: tuple[str, NetNamespace, int],
) -> None:
    uid, ns, pid = pod_process
    found = find_pod_netns(uid)
    assert found == f"/proc/{pid}/ns/net"
    assert os.stat(found).st_ino == os.stat(ns.path).st_ino  # the very namespace


def _discovered(uid: str, addresses: tuple[str, ...] = ()) -> PodEntry:
    return PodEntry("shop", "web-1", PodTarget("pod-netns", uid), uid, addresses=addresses)


async def _echoes(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    with sock:
        await loop.sock_sendall(sock, b"ping")
        return await loop.sock_recv(sock, 4)


async def test_a_discovered_pod_is_dialled_inside_its_netns_found_when_dialled() -> None:
    """The lookup happens per dial: a sandbox that restarts (new PID) is found again."""
    uid = str(uuid.uuid4())
    dial = netns_dialer(PodDialer())
    with network_namespace("podgate-netns-dial") as ns, echo_server_in(ns, 7000):
        with pod_sandbox(uid, ns):
            assert await _echoes(await dial(_discovered(uid), 7000)) == b"ping"
        with pytest.raises(DialError, match=r"no process of pod .* hostPID"):
            await dial(_discovered(uid), 7000)  # between sandboxes: nothing to enter
        with pod_sandbox(uid, ns):
            assert await _echoes(await dial(_discovered(uid), 7000)) == b"ping"


async def test_a_pod_whose_netns_is_not_found_is_dialled_by_ip_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uid = str(uuid.uuid4())
    dial = netns_dialer(PodDialer())
    with echo_server("127.0.0.1") as server, caplog.at_level(logging.WARNING):
        for _ in range(2):
            sock = await dial(_discovered(uid, ("127.0.0.1",)), server.port)
            assert await _echoes(sock) == b"ping"
    assert server.connections == 2
    reasons = [r.getMessage() for r in caplog.records if "dialling its IP" in r.getMessage()]
    assert len(reasons) == 1, reasons  # once per pod, not per connection
    assert f"no process of pod {uid}" in reasons[0]


class _Listing:
    """What PodDiscovery reads of the API server for a re-list (a stand-in: the real
    list and watch are in tests/cluster/test_helper_agent.py)."""

    def __init__(self, *items: dict[str, Any]) -> None:
        self.items = list(items)

    async def list_pods_raw(self, namespace: str | None, selector: str) -> tuple[list[Any], str]:
        return self.items, "42"


async def test_a_relist_forgets_deleted_pods_but_not_the_static_ones() -> None:
    static = PodEntry("default", "hello", PodTarget("host", "127.0.0.1"), "uid-static")
    registry = PodRegistry([static])
    listing = _Listing(_pod(phase="Running", podIP="10.1.2.8"))
    discovery = PodDiscovery(cast(Cluster, listing), registry)
    assert await discovery._relist() == "42"
    assert registry.get("shop", "web-1") is not None and discovery.synced.is_set()
    listing.items = []  # web-1 was deleted while no watch ran
    await discovery._relist()
    assert registry.get("shop", "web-1") is None
    assert registry.get("default", "hello") == static  # --pod/--pods entries stay
