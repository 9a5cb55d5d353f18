"""Re-dialling soon after a cluster comes back, without a storm while it is away.

A session whose dial failed waits a backoff delay before the next one (capped exponential,
with jitter). After an API server restart that delay may have grown to many seconds, so
sessions would come back long after the server did. Instead, every session of a cluster
shares one `ClusterRecovery`: a failed dial asks it whether the server is ready
(`GET /readyz`). If it is, the failure was the session's own (an RBAC change, a missing
pod) and the session sleeps its whole delay. If it is not, one prober asks again every
`PROBE_INTERVAL` seconds, whatever the number of sessions, and wakes them all, spread over
`SPREAD` seconds, once the server answers ready again.
"""

from __future__ import annotations

import asyncio
import random
import weakref

from service.aio.tasks import log_failure
from service.upstream import Cluster

#: Seconds between readiness probes while the server is not ready.
PROBE_INTERVAL = 1.0
#: Sessions woken by a recovery re-dial at random within this many seconds.
SPREAD = 1.0
#: A readiness answer younger than this is reused instead of asking again.
FRESH = 1.0


class ClusterRecovery:
    """The readiness of one cluster, as seen by the sessions waiting to re-dial it."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._recovered = asyncio.Event()
        self._prober: asyncio.Task[None] | None = None
        self._checked_at = -FRESH  # loop time of the last answer "ready"
        self._waiters = 0

    async def wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less: until the cluster, found not ready, is ready."""
        loop = asyncio.get_running_loop()
        recovered = self._recovered
        if self._prober is None and loop.time() - self._checked_at >= FRESH:
            self._prober = loop.create_task(self._probe(), name="cluster readiness probe")
            self._prober.add_done_callback(log_failure)
        deadline = loop.time() + delay
        self._waiters += 1
        try:
            async with asyncio.timeout(delay):
                await recovered.wait()
        except TimeoutError:
            return
        finally:
            self._waiters -= 1
        remaining = max(0.0, deadline - loop.time())
        await asyncio.sleep(random.uniform(0.0, min(SPREAD, remaining)))

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            was_down = False
            while not await self._cluster.ready():
                was_down = True
                if not self._waiters:
                    return  # nobody waits any more (sessions stopped or re-dialled)
                await asyncio.sleep(PROBE_INTERVAL)
            self._checked_at = loop.time()
            if was_down:
                recovered, self._recovered = self._recovered, asyncio.Event()
                recovered.set()
        finally:
            self._prober = None


_recoveries: weakref.WeakKeyDictionary[Cluster, ClusterRecovery] = weakref.WeakKeyDictionary()


def cluster_recovery(cluster: Cluster) -> ClusterRecovery:
    recovery = _recoveries.get(cluster)
    if recovery is None:
        recovery = _recoveries[cluster] = ClusterRecovery(cluster)
    return recovery
