"""Real network namespaces for tests: a pod is a netns with loopback up and a server in it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ECHO_SERVER = Path(__file__).with_name("echo_server.py")


@dataclass(frozen=True)
class NetNamespace:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def target(self) -> str:
        """The agent's pod target for this namespace."""
        return f"netns:{self.path}"


@contextmanager
def network_namespace(prefix: str = "podgate-test") -> Iterator[NetNamespace]:
    """`ip netns add` a fresh namespace with `lo` up; deleted afterwards."""
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield NetNamespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextmanager
def echo_server_in(ns: NetNamespace, port: int) -> Iterator[subprocess.Popen[str]]:
    """Run tests/support/echo_server.py inside `ns` on 127.0.0.1 and ::1, port `port`."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, str(ECHO_SERVER), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until READY or until the process dies
        if not line.startswith("READY"):
            raise RuntimeError(f"echo server in {ns.name} failed to start (rc={proc.poll()})")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


#: Where :func:`pod_sandbox` makes pod cgroups: the named systemd hierarchy (cgroup v1),
#: which a root test may write, in the cgroupfs driver's layout.
POD_CGROUPS = Path("/sys/fs/cgroup/systemd/podgate-test")


@contextmanager
def pod_sandbox(uid: str, ns: NetNamespace, *, user: int = 0) -> Iterator[int]:
    """A process in ``ns`` moved into a cgroup named like pod ``uid``'s sandbox
    (``…/kubepods/burstable/pod<uid>/sandbox``), as the kubelet leaves it on a node,
    running as ``user`` (``pause`` runs as 65535). Yields its PID; the process and the
    cgroups go afterwards."""
    if not POD_CGROUPS.parent.is_dir():
        raise RuntimeError(f"needs the writable cgroup hierarchy {POD_CGROUPS.parent} (root)")
    pod = POD_CGROUPS / "kubepods" / "burstable" / f"pod{uid}"
    cgroup = pod / "sandbox"
    cgroup.mkdir(parents=True)
    # It prints once it runs inside the namespace (`ip netns exec` enters it first).
    sandbox = subprocess.Popen(
        [
            *("ip", "netns", "exec", ns.name),
            *("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"),
            *("sh", "-c", "echo in; exec sleep 600"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sandbox.stdout is not None and sandbox.stdout.readline() == "in\n"
        (cgroup / "cgroup.procs").write_text(str(sandbox.pid))
        yield sandbox.pid
    finally:
        sandbox.kill()
        sandbox.wait()
        cgroup.rmdir()
        pod.rmdir()
        for level in (pod.parent, pod.parent.parent, POD_CGROUPS):
            with contextlib.suppress(OSError):  # another sandbox still uses it
                level.rmdir()
