"""Finding a pod's network namespace on its node from the pod's UID, the way people who
use `nsenter` do: a process of the pod (its sandbox, `pause`) sits in a cgroup whose
path carries the UID; its `/proc/PID/ns/net` is the pod's network namespace.

The cgroup path spells the UID with dashes (cgroupfs driver: `…/kubepods/burstable/
pod1f6c…-…/…`) or with underscores (systemd driver: `…/kubepods-burstable-pod1f6c…_….slice/
…`). The agent needs the host's PID namespace (`hostPID`) to see the pods' processes.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NetnsNotFound", "find_pod_netns", "names_pod"]


class NetnsNotFound(LookupError):
    """No process of the pod is visible (why, for the log)."""


def _uid_forms(uid: str) -> tuple[str, ...]:
    return (f"pod{uid}", f"pod{uid.replace('-', '_')}")


def names_pod(process: Path, uid: str) -> bool:
    """Whether the process at ``process`` (``/proc/PID``) is in a cgroup of pod ``uid``."""
    try:
        cgroups = (process / "cgroup").read_text()
    except OSError:
        return False  # gone meanwhile, or not ours to read
    return any(form in cgroups for form in _uid_forms(uid))


def find_pod_netns(uid: str, proc: Path = Path("/proc")) -> str:
    """The path of the network namespace of the pod with ``uid``: ``/proc/PID/ns/net`` of
    the oldest (lowest PID) process whose cgroup path names the pod."""
    if not uid:
        raise NetnsNotFound("the pod has no uid")
    try:
        entries = sorted(int(e.name) for e in os.scandir(proc) if e.name.isdigit())
    except OSError as exc:
        raise NetnsNotFound(f"cannot read {proc}: {exc.strerror}") from None
    own = _netns_id(proc / "self" / "ns" / "net")
    for pid in entries:
        if not names_pod(proc / str(pid), uid):
            continue
        path = proc / str(pid) / "ns" / "net"
        netns = _netns_id(path)
        if netns is None:
            continue
        if own is not None and netns == own:
            raise NetnsNotFound(f"pod {uid} shares the node's network (hostNetwork)")
        return str(path)
    raise NetnsNotFound(
        f"no process of pod {uid} is visible in {proc} (is the pod on another node? "
        "does the agent run with hostPID?)"
    )


def _netns_id(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
