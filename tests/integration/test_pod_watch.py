"""The runner's pod watch (service/runner/podwatch.py) over real HTTP, against a small
API-server stand-in that serves what podgate's agent does not: a pod watch
(`?watch=true&fieldSelector=metadata.name=NAME`, one JSON event per line, chunked).
The same stand-in refuses watches with 400, as the agent does, for the polling fallback.
The client side is the real `Cluster` (kubernetes_asyncio, aiohttp), loaded from a
kubeconfig."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service.runner.podwatch import judge, shared_reads, wait_until_gone
from service.upstream import Cluster, PodInfo
from tests.support.kube import write_kubeconfig

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0


def pod_json(uid: str = "uid-1", phase: str = "Running", version: str = "5") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": "web", "namespace": "default", "uid": uid, "resourceVersion": version},
        "spec": {"containers": [{"name": "main", "ports": [{"containerPort": 80}]}]},
        "status": {"phase": phase},
    }


def not_found() -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "NotFound",
        "code": 404,
        "message": 'pods "web" not found',
        "details": {"name": "web", "kind": "pods"},
    }


class ApiServer:
    """GET pod and a pod watch whose events the test pushes (None ends the watch)."""

    def __init__(self) -> None:
        self.pod: dict[str, Any] | None = pod_json()
        self.refuse_watches = False
        #: Watches from an older resourceVersion get 410 Gone, as from an API server whose
        #: watch cache started (after a restart) later than the pod's last change.
        self.oldest_watchable: int | None = None
        self.list_version = "100"  # the list's metadata.resourceVersion
        self.watches: list[dict[str, str]] = []  # the query of every watch request
        self.lists: list[dict[str, str]] = []  # the query of every list request
        self.gets = 0
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.changed = asyncio.Event()
        self.url = ""

    async def get_pod(self, request: web.Request) -> web.Response:
        self.gets += 1
        self.changed.set()
        if self.pod is None:
            return web.json_response(not_found(), status=404)
        return web.json_response(self.pod)

    async def list_pods(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if query.get("watch", "").lower() not in ("true", "1"):
            self.lists.append(query)
            self.changed.set()
            assert query.get("fieldSelector") == "metadata.name=web"
            items = [] if self.pod is None else [self.pod]
            metadata = {"resourceVersion": self.list_version}
            return web.json_response({"kind": "PodList", "metadata": metadata, "items": items})
        self.watches.append(query)
        self.changed.set()
        if self.refuse_watches:  # what podgate's agent answers
            body = {"kind": "Status", "code": 400, "message": "watch is not supported"}
            return web.json_response(body, status=400)
        version = int(query.get("resourceVersion") or 0)
        if self.oldest_watchable is not None and version < self.oldest_watchable:
            message = f"too old resource version: {version} ({self.oldest_watchable})"
            body = {"kind": "Status", "code": 410, "reason": "Expired", "message": message}
            return web.json_response(body, status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while (event := await self.events.get()) is not None:
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response

    async def wait_for(self, condition: Any, what: str) -> None:
        async with asyncio.timeout(WAIT):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def server() -> AsyncIterator[ApiServer]:
    api = ApiServer()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/default/pods/web", api.get_pod)
    app.router.add_get("/api/v1/namespaces/default/pods", api.list_pods)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    api.url = f"http://{host}:{port}"
    try:
        yield api
    finally:
        await api.events.put(None)
        await runner.cleanup()


@pytest.fixture
async def cluster(server: ApiServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    async with await Cluster.load(str(kubeconfig)) as loaded:
        yield loaded


@contextlib.asynccontextmanager
async def watching(cluster: Cluster, pod: PodInfo) -> AsyncIterator[asyncio.Task[str]]:
    task = asyncio.create_task(wait_until_gone(cluster, "default", pod, poll_interval=0.05))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_a_deleted_pod_ends_the_watch(server: ApiServer, cluster: Cluster) -> None:
    pod = await cluster.get_pod("default", "web")
    assert pod.resource_version == "5"
    async with watching(cluster, pod) as task:
        await server.wait_for(lambda: server.watches, "a watch")
        query = server.watches[0]
        assert query["fieldSelector"] == "metadata.name=web"
        assert query["resourceVersion"] == "5"  # from the pod the session dialled
        # Changes that leave the pod Running (and the same pod) do not end it...
        await server.events.put({"type": "MODIFIED", "object": pod_json(version="6")})
        await server.events.put(
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}}
        )
        # ...and after the server ends the watch, it is watched again from where it was.
        await server.events.put(None)
        await server.wait_for(lambda: len(server.watches) == 2, "a second watch")
        assert server.watches[1]["resourceVersion"] == "7"
        await server.events.put({"type": "DELETED", "object": pod_json(version="8")})
        async with asyncio.timeout(WAIT):
            assert (await task).reason == 'pod "web" was deleted'


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        (pod_json(phase="Succeeded"), 'pod "web" is no longer running (phase Succeeded)'),
        (pod_json(uid="uid-2"), 'pod "web" was replaced (uid uid-2)'),
    ],
)
async def test_a_pod_that_stops_or_is_replaced_ends_the_watch(
    server: ApiServer, cluster: Cluster, changed: dict[str, Any], reason: str
) -> None:
    pod = await cluster.get_pod("default", "web")
    async with watching(cluster, pod) as task:
        await server.events.put({"type": "MODIFIED", "object": changed})
        async with asyncio.timeout(WAIT):
            assert (await task).reason == reason


async def test_a_terminating_pod_is_a_graceful_change_when_the_target_follows(
    server: ApiServer, cluster: Cluster
) -> None:
    pod = await cluster.get_pod("default", "web")
    terminating = pod_json(version="6")
    terminating["metadata"]["deletionTimestamp"] = "2026-12-05T12:00:00Z"
    follower = asyncio.create_task(
        wait_until_gone(cluster, "default", pod, poll_interval=0.05, follow=True)
    )
    try:
        await server.wait_for(lambda: server.watches, "a watch")
        await server.events.put({"type": "MODIFIED", "object": terminating})
        async with asyncio.timeout(WAIT):
            change = await follower
    finally:
        follower.cancel()
        await asyncio.wait({follower})
    assert (change.reason, change.graceful) == ('pod "web" is terminating', True)
    current = PodInfo.from_json(terminating)
    assert current.deleting
    # A pod/NAME target has no other pod to go to: it stays (as kubectl's forward does).
    assert judge(pod, current) is None
    # A pod that was already terminating when the session dialled it is no change either.
    assert judge(current, current, follow=True) is None


async def test_410_gone_lists_the_pod_again(server: ApiServer, cluster: Cluster) -> None:
    pod = await cluster.get_pod("default", "web")
    gets = server.gets
    async with watching(cluster, pod) as task:
        await server.wait_for(lambda: server.watches, "a watch")
        server.pod = pod_json(uid="uid-3", version="40")  # replaced while we were not looking
        gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
        await server.events.put({"type": "ERROR", "object": gone})
        async with asyncio.timeout(WAIT):
            assert (await task).reason == 'pod "web" was replaced (uid uid-3)'
    assert len(server.lists) == 1
    assert server.gets == gets


async def test_410_for_an_unchanged_pod_watches_from_the_lists_version(
    server: ApiServer, cluster: Cluster
) -> None:
    """After an API server restart its watch cache starts later than the pod's own
    resourceVersion: watching from that again and again was a storm of requests (hundreds
    per second per session). The list's resourceVersion is served."""
    server.oldest_watchable = 50
    pod = await cluster.get_pod("default", "web")
    assert pod.resource_version == "5"
    async with watching(cluster, pod) as task:
        await server.wait_for(lambda: len(server.watches) >= 2, "a second watch")
        # The second watch is being served (held open): nothing more is requested.
        await server.events.put({"type": "MODIFIED", "object": pod_json(version="101")})
        await server.events.put({"type": "DELETED", "object": pod_json(version="102")})
        async with asyncio.timeout(WAIT):
            assert (await task).reason == 'pod "web" was deleted'
    assert [w.get("resourceVersion") for w in server.watches] == ["5", "100"]
    assert len(server.lists) == 1


async def test_a_refused_watch_falls_back_to_polling(server: ApiServer, cluster: Cluster) -> None:
    server.refuse_watches = True
    pod = await cluster.get_pod("default", "web")
    async with watching(cluster, pod) as task:
        await server.wait_for(lambda: server.gets >= 3, "polls")  # every 0.05 s here
        assert len(server.watches) == 1  # refused once, not retried
        assert not task.done()
        server.pod = None
        async with asyncio.timeout(WAIT):
            assert (await task).reason == 'pod "web" was deleted'


async def test_a_refused_watch_is_tried_again_after_a_watch_timeout_of_polling(
    server: ApiServer, cluster: Cluster
) -> None:
    """A refusal may be passing (an RBAC change, a server starting up): polling is not
    for ever; the watch is asked for again after one watch timeout."""
    server.refuse_watches = True
    pod = await cluster.get_pod("default", "web")
    task = asyncio.create_task(
        wait_until_gone(cluster, "default", pod, poll_interval=0.05, watch_timeout=1)
    )
    try:
        await server.wait_for(lambda: server.gets >= 3, "polls")
        server.refuse_watches = False
        await server.wait_for(lambda: len(server.watches) >= 2, "the watch asked for again")
        polls = server.gets
        await server.events.put({"type": "DELETED", "object": pod_json(version="8")})
        async with asyncio.timeout(WAIT):
            assert (await task).reason == 'pod "web" was deleted'
        assert server.gets == polls  # ended by the watch, not by a poll
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_concurrent_reads_of_one_pod_share_one_get(
    server: ApiServer, cluster: Cluster
) -> None:
    reads = shared_reads(cluster)
    assert shared_reads(cluster) is reads  # one table per cluster
    results = await asyncio.gather(
        *(reads.get(cluster, "default", "web", max_age=60) for _ in range(50))
    )
    assert server.gets == 1
    assert {r.uid for r in results} == {"uid-1"}
    await reads.get(cluster, "default", "web", max_age=0)  # too old now: read again
    assert server.gets == 2


async def test_a_cancelled_reader_does_not_cancel_the_shared_get(
    server: ApiServer, cluster: Cluster
) -> None:
    reads = shared_reads(cluster)
    first = asyncio.create_task(reads.get(cluster, "default", "web", max_age=60))
    second = asyncio.create_task(reads.get(cluster, "default", "web", max_age=60))
    await asyncio.sleep(0)  # both are waiting on the one read now
    first.cancel()
    async with asyncio.timeout(WAIT):
        assert (await second).uid == "uid-1"
    assert first.cancelled()
    assert server.gets == 1


async def test_many_pollers_of_one_pod_all_see_it_deleted(
    server: ApiServer, cluster: Cluster
) -> None:
    server.refuse_watches = True
    pod = await cluster.get_pod("default", "web")
    tasks = [
        asyncio.create_task(wait_until_gone(cluster, "default", pod, poll_interval=0.05))
        for _ in range(20)
    ]
    try:
        await server.wait_for(lambda: server.gets >= 4, "polls")
        server.pod = None
        async with asyncio.timeout(WAIT):
            reasons = await asyncio.gather(*tasks)
        assert [r.reason for r in reasons] == ['pod "web" was deleted'] * 20
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
