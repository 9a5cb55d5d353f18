"""Fixtures for the API tests: the real app with its real lifespan, a SQLite file in
tmp_path, and a real cluster (an in-process podgate agent) whose pod `default/echo`
lives on host address 127.0.0.2, where a threaded echo server listens. No mocks.

Why 127.0.0.2 and not 127.0.0.1: the pod then does not share the listeners' addresses
(127.0.0.1, ::1), as a real pod in its own network namespace does not. With the pod on
127.0.0.1, a `"5000"` spec (local = remote) would forward into its own listener: every
connection makes the agent dial the session again, without end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.agent.registry import PodEntry, PodRegistry, PodTarget, parse_pod_flag
from service.agent.server import Agent
from service.api.app import create_app
from service.config import Settings
from tests.support.echo import EchoServer, echo_server
from tests.support.kube import write_kubeconfig

#: Where the test pods listen (see the module docstring).
POD_HOST = "127.0.0.2"
#: Bound for any single wait in the API tests.
WAIT = 10.0
#: Poll interval while waiting for a session's status (bounded by WAIT).
POLL = 0.02


@dataclass
class Api:
    """A running app (lifespan entered) and an HTTP client speaking to it over ASGI."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    async def create(self, **body: Any) -> httpx.Response:
        body.setdefault("namespace", "default")
        body.setdefault("target", "pod/echo")
        return await self.client.post("/sessions", json=body)

    async def wait_status(
        self, session_id: str, *statuses: str, timeout: float = WAIT
    ) -> dict[str, Any]:
        """Poll GET /sessions/{id} until its status is one of `statuses` (hard deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            response = await self.client.get(f"/sessions/{session_id}")
            assert response.status_code == 200, response.text
            session: dict[str, Any] = response.json()
            if session["status"] in statuses:
                return session
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"session {session_id} is {session['status']!r}, not {statuses} "
                    f"after {timeout}s: {session}"
                )
            await asyncio.sleep(POLL)


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    """Create the app, run its lifespan (migrations, supervisor) and give a client."""
    app = create_app(settings)
    async with asyncio.timeout(WAIT):
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield Api(app, client, settings)
    finally:
        # Leaving the lifespan stops every session; it must not hang either.
        async with asyncio.timeout(WAIT):
            await lifespan.__aexit__(None, None, None)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """The pod's port: an echo server on POD_HOST whose port is free on 127.0.0.1 and ::1,
    so that the `"PORT"` spec form (local port = remote port) can be used with it."""
    for _ in range(50):
        with echo_server(POD_HOST) as server:
            if port_free(server.port, "127.0.0.1") and port_free(server.port, "::1"):
                yield server
                return
    raise RuntimeError(f"no echo port on {POD_HOST} that is free on 127.0.0.1 and ::1")


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    """The cluster: `default/echo` (Running, on POD_HOST), `default/waiting` (Pending)."""
    waiting = PodEntry(
        namespace="default",
        name="waiting",
        target=PodTarget.parse(f"host:{POD_HOST}"),
        uid="6f1c7c8e-0000-4000-8000-000000000001",
        phase="Pending",
    )
    registry = PodRegistry([parse_pod_flag(f"default/echo=host:{POD_HOST}"), waiting])
    agent = Agent(registry, host="127.0.0.1", port=0)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.shutdown(drain_timeout=1.0)


@pytest.fixture
def settings(tmp_path: Path, agent: Agent) -> Settings:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", agent.url)
    return Settings(
        data_dir=tmp_path / "data",
        database_url="",
        kubeconfig=str(kubeconfig),
        context="",
        demo=False,
        connect_wait_seconds=5.0,
        keepalive_seconds=5.0,
        max_backoff_seconds=1.0,
    )


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with running_api(settings) as running:
        yield running


def free_port() -> int:
    """A port free on 127.0.0.1 and ::1 right now (for the `5000`-style specs in tests)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4:
            v4.bind(("127.0.0.1", 0))
            port: int = v4.getsockname()[1]
            if port_free(port):  # v4 is still bound here; only ::1 is probed
                return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


def port_free(port: int, host: str = "::1") -> bool:
    """Whether `host:port` can be bound (and listened on) right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
    return True
