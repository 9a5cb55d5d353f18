"""Noticing at once that the pod a session is connected to went away.

While a session is ready, the pod it dialled is watched (`Cluster.watch_pod`, from the
resourceVersion the resolution read). A pod that is deleted, replaced (another uid under
the same name) or no longer Running ends the wait with a reason, and the session closes
its link with that reason and takes the reconnect path: the target is resolved again.

Servers that refuse the watch (podgate's agent answers `watch` with 400; an RBAC role may
allow `get` but not `watch`) are polled instead: GET pod every `poll_interval` seconds,
one request at a time, each bounded by the cluster timeout. Sessions polling the same pod
share one GET (`SharedPodReads`), and each starts at a random phase of the interval, so
1000 sessions on one pod cost a few GETs per interval, not 1000 back to back. Errors other
than "not found" prove nothing about the pod (the link's keepalive judges the connection),
so they are logged and the watch or poll goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from service.runner.backoff import backoff_delays
from service.upstream import (
    WATCH_TIMEOUT,
    Cluster,
    PodInfo,
    PodNotFound,
    UpstreamError,
    WatchExpired,
    WatchRefused,
)

log = logging.getLogger("podgate.runner")

#: A watch that ends this soon without an event is re-opened only after a backoff delay.
QUICK_END = 1.0


@dataclass(frozen=True, slots=True)
class PodChange:
    """Why the session's pod is no longer the one to use. ``graceful``: it still serves
    (Terminating): connections open on it may finish, new ones go elsewhere."""

    reason: str
    graceful: bool = False


def _deleted(pod: PodInfo) -> PodChange:
    return PodChange(f'pod "{pod.name}" was deleted')


def judge(pod: PodInfo, current: PodInfo, *, follow: bool = False) -> PodChange | None:
    """Why `current` (the pod read now) is not the pod the session dialled, or None.

    ``follow``: the session's target is a Service or workload, whose next pod may be
    another one: a pod that starts terminating is then a (graceful) change, since kubectl
    would choose a pod that is not being deleted.
    """
    if pod.uid and current.uid and current.uid != pod.uid:
        return PodChange(f'pod "{pod.name}" was replaced (uid {current.uid})')
    if current.phase != "Running":
        return PodChange(f'pod "{pod.name}" is no longer running (phase {current.phase})')
    if follow and current.deleting and not pod.deleting:
        return PodChange(f'pod "{pod.name}" is terminating', graceful=True)
    return None


async def wait_until_gone(
    cluster: Cluster,
    namespace: str,
    pod: PodInfo,
    *,
    poll_interval: float,
    watch_timeout: int = WATCH_TIMEOUT,
    follow: bool = False,
) -> PodChange:
    """Return (only) once `pod` is deleted, replaced or not Running (or, with ``follow``,
    terminating): what changed (see `judge`).

    Runs until cancelled otherwise; every wait in it is interruptible by cancellation.
    """
    resource_version = pod.resource_version
    delays: Iterator[float] | None = None
    while True:
        opened = asyncio.get_running_loop().time()
        events = 0
        stream = cluster.watch_pod(
            namespace, pod.name, resource_version=resource_version, timeout_seconds=watch_timeout
        )
        try:
            async with contextlib.aclosing(stream):  # closes the response on an early return
                async for kind, obj in stream:
                    events += 1
                    delays = None
                    resource_version = _resource_version(obj) or resource_version
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        return _deleted(pod)
                    reason = judge(pod, PodInfo.from_json(obj), follow=follow)
                    if reason is not None:
                        return reason
        except WatchRefused as exc:
            log.info("pod %s/%s: %s; polling every %g s", namespace, pod.name, exc, poll_interval)
            reason = await poll_until_gone(
                cluster,
                namespace,
                pod,
                poll_interval=poll_interval,
                duration=watch_timeout,
                follow=follow,
            )
            if reason is not None:
                return reason
            continue  # polled for a watch timeout: the watch may be served by now
        except WatchExpired:
            # Our resourceVersion is older than the server's watch cache (after every API
            # server restart for a pod that has not changed since). Like client-go's
            # reflector: list, then watch from the list's resourceVersion.
            try:
                current, listed_at = await cluster.list_pod(namespace, pod.name)
            except UpstreamError as exc:
                log.debug("pod %s/%s: list failed: %s", namespace, pod.name, exc)
            else:
                if current is None:
                    return _deleted(pod)
                reason = judge(pod, current, follow=follow)
                if reason is not None:
                    return reason
                resource_version = listed_at or current.resource_version
        except UpstreamError as exc:
            log.debug("pod %s/%s: watch failed: %s", namespace, pod.name, exc)
            events = 0
        # The server ended the watch (its timeout), it failed or it expired: watch again,
        # after a growing delay while it keeps ending at once without an event.
        if events == 0 and asyncio.get_running_loop().time() - opened < QUICK_END:
            delays = delays or backoff_delays(base=1.0, cap=30.0)
            await asyncio.sleep(next(delays))


class SharedPodReads:
    """GET pod results shared by every session polling the same pod of one cluster.

    A read younger than `max_age`, or still in flight, is handed to every caller; each
    caller then judges it against its own pod. Entries of pods nobody asked about for a
    while are dropped when a new one is added, so the table stays as small as the set of
    polled pods.
    """

    def __init__(self) -> None:
        self._reads: dict[tuple[str, str], tuple[float, asyncio.Task[PodInfo]]] = {}

    async def get(self, cluster: Cluster, namespace: str, name: str, max_age: float) -> PodInfo:
        loop = asyncio.get_running_loop()
        now = loop.time()
        key = (namespace, name)
        entry = self._reads.get(key)
        if entry is None or now - entry[0] > max_age:
            task = loop.create_task(cluster.get_pod(namespace, name))
            # Why: a failed read that nobody awaits any more must not log "never retrieved".
            task.add_done_callback(_consume_exception)
            self._forget_older_than(now - 10 * max_age)
            self._reads[key] = entry = (now, task)
        # shield: a cancelled session must not cancel the read other sessions wait on.
        return await asyncio.shield(entry[1])

    def _forget_older_than(self, limit: float) -> None:
        for key in [k for k, (started, task) in self._reads.items() if started < limit]:
            if self._reads[key][1].done():
                del self._reads[key]


def _consume_exception(task: asyncio.Task[PodInfo]) -> None:
    if not task.cancelled():
        task.exception()


_shared_reads: weakref.WeakKeyDictionary[Cluster, SharedPodReads] = weakref.WeakKeyDictionary()


def shared_reads(cluster: Cluster) -> SharedPodReads:
    reads = _shared_reads.get(cluster)
    if reads is None:
        reads = _shared_reads[cluster] = SharedPodReads()
    return reads


async def poll_until_gone(
    cluster: Cluster,
    namespace: str,
    pod: PodInfo,
    *,
    poll_interval: float,
    duration: float | None = None,
    follow: bool = False,
) -> PodChange | None:
    """The fallback for servers that do not serve watches: GET the pod periodically, for
    ``duration`` seconds (None: until it is gone), then None."""
    reads = shared_reads(cluster)
    loop = asyncio.get_running_loop()
    end = None if duration is None else loop.time() + duration
    # A random first phase: sessions started together would otherwise poll in lockstep.
    delay = poll_interval * random.uniform(0.5, 1.5)
    while end is None or loop.time() + delay < end:
        await asyncio.sleep(delay)
        delay = poll_interval
        try:
            current = await reads.get(cluster, namespace, pod.name, max_age=poll_interval / 2)
        except PodNotFound:
            return _deleted(pod)
        except UpstreamError as exc:
            log.debug("pod %s/%s: poll failed: %s", namespace, pod.name, exc)
            continue
        reason = judge(pod, current, follow=follow)
        if reason is not None:
            return reason
    return None


def _resource_version(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else ""
