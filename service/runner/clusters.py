"""Clusters by kubeconfig context, loaded once and shared by the sessions that use them."""

from __future__ import annotations

import asyncio

from service.upstream import Cluster


class ClusterPool:
    """`await pool(context)` gives the `Cluster` for a context (None: the default one)."""

    def __init__(self, kubeconfig: str | None = None, default_context: str | None = None) -> None:
        self.kubeconfig = kubeconfig or None
        self.default_context = default_context or None
        self._clusters: dict[str | None, Cluster] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, context: str | None) -> Cluster:
        key = context or self.default_context
        cluster = self._clusters.get(key)
        if cluster is not None:
            return cluster
        async with self._lock:
            cluster = self._clusters.get(key)
            if cluster is None:
                # UpstreamError (not retryable) for a missing kubeconfig or context.
                cluster = await Cluster.load(self.kubeconfig, key)
                cluster.start_refresh()
                self._clusters[key] = cluster
            return cluster

    async def close(self) -> None:
        clusters, self._clusters = list(self._clusters.values()), {}
        for cluster in clusters:
            await cluster.close()
