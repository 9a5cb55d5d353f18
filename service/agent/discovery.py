"""`podgate agent --cluster`: the pod registry filled from the API server.

Like client-go's reflector: list the pods (every namespace, or those on ``--node``), then
watch from the list's resourceVersion; on 410 Gone or a broken watch, list again, with a
growing delay while errors repeat. Each pod becomes a registry entry with its ports,
labels, phase, readiness and IPs, and where to dial it:

- ``--dial pod-ip``: its ``status.podIPs`` (IPv4 first), for an agent that runs anywhere
  in the cluster (a Deployment);
- ``--dial netns``: its network namespace on this node, found from its UID when a
  connection is dialled (``netns.py``; a sandbox that restarts has a new PID), for an
  agent that runs on every node with ``hostPID`` (a DaemonSet); a pod whose namespace
  cannot be found is dialled by IP, and the reason is logged.

Pods that are not Running stay in the registry (GET pod shows their phase) but are not
dialled (``dialer.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any, Literal

from service.agent.dialer import DialError, DialFunction, PodDialer
from service.agent.netns import NetnsNotFound, find_pod_netns, names_pod
from service.agent.registry import ContainerPort, PodEntry, PodRegistry, PodTarget
from service.upstream import Cluster, UpstreamError, WatchExpired, WatchRefused

__all__ = ["DialMode", "PodDiscovery", "netns_dialer", "pod_entry"]

log = logging.getLogger("podgate.agent")

DialMode = Literal["pod-ip", "netns"]
#: How long one watch request lasts before it is renewed.
WATCH_TIMEOUT = 300


def _ready(status: dict[str, Any]) -> bool:
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _ips(status: dict[str, Any]) -> list[str]:
    found = [str(entry.get("ip")) for entry in status.get("podIPs") or [] if entry.get("ip")]
    if not found and status.get("podIP"):
        found = [str(status["podIP"])]
    return sorted(found, key=lambda ip: ":" in ip)  # IPv4 first, like the kubelet's dial


def pod_entry(pod: dict[str, Any], dial: DialMode = "pod-ip") -> PodEntry | None:
    """A registry entry for a raw pod, dialled as ``dial`` says."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return None
    uid = str(metadata.get("uid") or "")
    ports = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if isinstance(port, dict) and isinstance(port.get("containerPort"), int):
                ports.append(
                    ContainerPort(
                        port["containerPort"], port.get("name"), port.get("protocol") or "TCP"
                    )
                )
    phase = str(status.get("phase") or "Unknown")
    ips = _ips(status)
    if dial == "netns":
        where = PodTarget("pod-netns", uid)
    elif ips:
        where = PodTarget("pod-ip", ",".join(ips))
    else:
        where = PodTarget("none", f"pod {namespace}/{name} has no address yet")
    return PodEntry(
        namespace=namespace,
        name=name,
        target=where,
        uid=uid,
        ports=tuple(ports),
        labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
        phase=phase,
        ready=phase == "Running" and _ready(status),
        addresses=tuple(ips),
    )


def netns_dialer(dialer: PodDialer, proc: Path = Path("/proc")) -> DialFunction:
    """The dial function of ``pod-netns`` targets: inside the pod's network namespace,
    found from its UID under ``proc``, else its IPs (the reason logged once per pod)."""
    known: dict[str, str] = {}  # uid -> /proc/PID/ns/net, rechecked before each use
    fallbacks: set[str] = set()

    def lookup(uid: str) -> str:
        path = known.get(uid)
        if path is not None and names_pod(Path(path).parent.parent, uid):
            return path
        if len(known) > 4096:
            known.clear()  # bounded: pods come and go for months
        known[uid] = path = find_pod_netns(uid, proc)
        return path

    async def dial(pod: PodEntry, port: int) -> socket.socket:
        try:
            path = await asyncio.get_running_loop().run_in_executor(None, lookup, pod.uid)
        except NetnsNotFound as exc:
            known.pop(pod.uid, None)
            if not pod.addresses:
                raise DialError(
                    f"pod {pod.namespace}/{pod.name}: {exc}, and it has no IP"
                ) from None
            if pod.uid not in fallbacks:
                fallbacks.add(pod.uid)
                log.warning("pod %s/%s: %s; dialling its IP", pod.namespace, pod.name, exc)
            return await dialer.dial_addresses(list(pod.addresses), port)
        return await dialer.dial_netns(path, port)

    return dial


class PodDiscovery:
    """Keeps ``registry`` in step with the pods the API server reports."""

    def __init__(
        self,
        cluster: Cluster,
        registry: PodRegistry,
        *,
        node: str | None = None,
        dial: DialMode = "pod-ip",
        watch_timeout: int = WATCH_TIMEOUT,
    ) -> None:
        self.cluster = cluster
        self.registry = registry
        self.node = node
        self.dial = dial
        self.watch_timeout = watch_timeout
        self.synced = asyncio.Event()  # set once the first list is in the registry
        self._discovered: set[tuple[str, str]] = set()  # not the static --pod/--pods ones

    @property
    def field_selector(self) -> str:
        return f"spec.nodeName={self.node}" if self.node else ""

    def _apply(self, kind: str, pod: dict[str, Any]) -> None:
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        if kind == "DELETED":
            self._forget(key)
            return
        entry = pod_entry(pod, self.dial)
        if entry is not None:
            self.registry.add(entry)
            self._discovered.add(key)

    def _forget(self, key: tuple[str, str]) -> None:
        if key in self._discovered:
            self._discovered.discard(key)
            self.registry.remove(*key)

    async def _relist(self) -> str:
        items, version = await self.cluster.list_pods_raw(None, self.field_selector)
        seen = set()
        for item in items:
            self._apply("ADDED", item)
            metadata = item.get("metadata") or {}
            seen.add((str(metadata.get("namespace")), str(metadata.get("name"))))
        for key in self._discovered - seen:
            self._forget(key)  # deleted while we were not watching
        self.synced.set()
        log.info("discovered %d pod(s) from the API server", len(items))
        return version

    async def run(self) -> None:
        """List and watch until cancelled; errors are logged and retried with backoff."""
        delay = 1.0
        version = ""
        loop = asyncio.get_running_loop()
        while True:
            opened = loop.time()
            try:
                if not version:
                    version = await self._relist()
                stream = self.cluster.watch_pods(
                    None,
                    self.field_selector,
                    resource_version=version,
                    timeout_seconds=self.watch_timeout,
                )
                async with contextlib.aclosing(stream):
                    async for kind, obj in stream:
                        delay = 1.0
                        rv = (obj.get("metadata") or {}).get("resourceVersion")
                        version = str(rv) if rv else version
                        if kind != "BOOKMARK":
                            self._apply(kind, obj)
                continue  # the server ended the watch: watch again from where it was
            except WatchExpired:
                version = ""  # too old: list again (and watch from the list's version)
                if loop.time() - opened > 1.0:
                    continue  # not a loop: no delay
            except (WatchRefused, UpstreamError) as exc:
                log.warning("pod discovery: %s; again in %g s", exc, delay)
                version = ""
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
