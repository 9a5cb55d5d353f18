"""Every task the agent starts is named and owned (design.md, supervision).

A pod whose dial function raises something nobody expected (not a DialError, not an
OSError) must not disappear with its task: the failure is logged with the task's name,
the forwarded connection gets its error on the client's wire and ends, and the session
keeps nothing of it (no pair, no task). One test per session kind; the tunnel runs the
SPDY session.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from service.agent.dialer import PodDialer
from service.agent.registry import ContainerPort, PodEntry, PodRegistry, PodTarget
from service.agent.server import Agent
from service.protocols.spdy import RstStatus
from service.protocols.websocket import (
    ChannelClient,
    ConnectionTerminated,
    ErrorTextReceived,
    HandshakeAccepted,
)
from tests.support.h2link import H2Link
from tests.support.spdy_client import spdy_session

pytestmark = pytest.mark.timeout(30)

POD_PORT = 8080
UID = "00000000-0000-4000-8000-00000000b0b0"
CANCEL = int(RstStatus.CANCEL)


async def _dial_explodes(pod: PodEntry, port: int) -> socket.socket:
    raise RuntimeError("the dialer exploded")


@asynccontextmanager
async def agent_with_a_broken_pod() -> AsyncIterator[Agent]:
    broken = PodEntry(
        namespace="default",
        name="broken",
        target=PodTarget("broken", "anywhere"),
        uid=UID,
        ports=(ContainerPort(POD_PORT, "http"),),
    )
    dialer = PodDialer(kinds={"broken": _dial_explodes})
    agent = Agent(PodRegistry([broken]), host="127.0.0.1", port=0, dialer=dialer)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.shutdown(drain_timeout=1.0)


def _assert_logged_with_its_name(caplog: pytest.LogCaptureFixture, task_name: str) -> None:
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in failures] == [f"task {task_name!r} failed"]
    assert failures[0].exc_info is not None
    assert str(failures[0].exc_info[1]) == "the dialer exploded"


def _only_session(agent: Agent) -> Any:
    (connection,) = agent.connections
    assert connection.session is not None
    return connection.session


def _assert_nothing_kept(session: Any) -> None:
    assert not session.tasks, "a dial task is still owned"
    assert getattr(session, "pairs", {}) == {}
    assert getattr(session, "by_stream", {}) == {}
    assert not session.client_reads.blocked


async def test_spdy_pair_gets_the_error_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        agent_with_a_broken_pod() as agent,
        spdy_session(agent.port, "/portForward/default/broken") as client,
    ):
        error_sid, data_sid = await client.open_pair(POD_PORT, 0)
        await client.wait_reset(error_sid)
        assert client.streams[error_sid].data.decode() == (
            f"error forwarding port {POD_PORT} to pod broken, uid {UID}: the dialer exploded"
        )
        assert client.streams[data_sid].reset_status == CANCEL
        assert client.streams[error_sid].reset_status == CANCEL
        _assert_logged_with_its_name(caplog, f"dial broken:{POD_PORT} req=0")
        _assert_nothing_kept(_only_session(agent))


async def test_h2_pair_gets_502_and_the_error_text(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        agent_with_a_broken_pod() as agent,
        H2Link.connect("127.0.0.1", agent.port) as link,
    ):
        pair = await link.open_pair("default", "broken", POD_PORT)
        assert await link.status(pair.error) == 200
        assert await link.read_all(pair.error) == (
            f"error forwarding port {POD_PORT}: the dialer exploded".encode()
        )
        assert await link.status(pair.data) == 502
        assert await link.read_all(pair.data) == b""
        (name,) = {r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR}
        assert name.startswith(f"task 'h2 dial broken:{POD_PORT} req=")
        _assert_nothing_kept(_only_session(agent))


async def test_channel_port_gets_the_error_text(caplog: pytest.LogCaptureFixture) -> None:
    async with agent_with_a_broken_pod() as agent:
        path = "/api/v1/namespaces/default/pods/broken/portforward"
        cc = ChannelClient(f"127.0.0.1:{agent.port}", path, [POD_PORT])
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
        writer.write(cc.initiate())
        events: list[object] = []
        async with asyncio.timeout(10):
            while data := await reader.read(65536):
                events += cc.receive_data(data)
        assert isinstance(events[0], HandshakeAccepted)
        errors = [e.text for e in events if isinstance(e, ErrorTextReceived)]
        assert errors == [
            f"error forwarding port {POD_PORT} to pod broken, uid {UID}: the dialer exploded"
        ]
        closed = [e for e in events if isinstance(e, ConnectionTerminated)]
        assert [c.error_code for c in closed] == [1000]  # its only port finished: Close, then EOF
        _assert_logged_with_its_name(caplog, f"dial broken:{POD_PORT}")
        assert not agent.connections  # the session ended with its connection
        writer.close()
