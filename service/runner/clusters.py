"""Clusters by kubeconfig context, loaded once and shared by the sessions that use them;
and the helper agents sessions go through (``via``), by URL and credentials context."""

from __future__ import annotations

import asyncio

from service.upstream import Cluster


class ClusterPool:
    """`await pool(context)` gives the `Cluster` for a context (None: the default one)."""

    def __init__(
        self,
        kubeconfig: str | None = None,
        default_context: str | None = None,
        *,
        agent_kubeconfig: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig or None
        self.default_context = default_context or None
        self.agent_kubeconfig = agent_kubeconfig or self.kubeconfig
        self._clusters: dict[str | None, Cluster] = {}
        self._agents: dict[tuple[str, str | None], Cluster] = {}
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

    async def agent(self, url: str, context: str | None) -> Cluster:
        """The agent at ``url``, dialled with the credentials of ``context`` of the agents'
        kubeconfig (a context describing the agent: its CA, a token or a client
        certificate; None: none)."""
        key = (url, context or None)
        agent = self._agents.get(key)
        if agent is None:
            credentials = await Cluster.load(self.agent_kubeconfig, context) if context else None
            agent = self._agents.setdefault(key, Cluster.for_agent(url, credentials))
        return agent

    async def close(self) -> None:
        for agent in self._agents.values():
            await agent.close()
        self._agents = {}
        clusters, self._clusters = list(self._clusters.values()), {}
        for cluster in clusters:
            await cluster.close()
