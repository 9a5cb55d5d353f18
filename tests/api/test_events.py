"""Live events (SSE), per-session policies, idle/TTL expiry and stored counters, through
the ASGI app with its real lifespan, a real SQLite file and a real (in-process) agent
whose registry the tests change to make a pod stop running. No mocks; every wait is on
an event or a status with a hard deadline.

The agent answers pod watches with 400, so these tests also cover the runner's fallback:
polling GET pod (every 0.1 s here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from service.agent.registry import PodEntry, PodRegistry, PodTarget, parse_pod_flag
from service.agent.server import Agent
from service.config import Settings
from service.store import SessionRepository, make_engine
from tests.api.conftest import POD_HOST, WAIT, Api, running_api
from tests.api.test_sessions_api import closed_without_data, exchange, refused
from tests.support.echo import EchoServer, refused_port
from tests.support.sse import AsgiEventStream, SseEvent

pytestmark = pytest.mark.timeout(60)

#: How long a test keeps a pod from running once its session has reported the loss: the
#: least outage the `reconnect` event may report.
OUTAGE_HOLD = 0.5
#: `outage_seconds` is rounded to the millisecond; allow that and clock granularity.
CLOCK_SLACK = 0.005


# ------------------------------------------------------------------------ fixtures


@pytest.fixture
def registry() -> PodRegistry:
    """`default/echo` (Running, on POD_HOST) and `default/waiting` (Pending)."""
    waiting = PodEntry(
        namespace="default",
        name="waiting",
        target=PodTarget.parse(f"host:{POD_HOST}"),
        uid="6f1c7c8e-0000-4000-8000-000000000001",
        phase="Pending",
    )
    return PodRegistry([parse_pod_flag(f"default/echo=host:{POD_HOST}"), waiting])


@pytest.fixture
async def agent(registry: PodRegistry) -> AsyncIterator[Agent]:
    """conftest's agent, over a registry the tests can change while it runs."""
    agent = Agent(registry, host="127.0.0.1", port=0)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.shutdown(drain_timeout=1.0)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short periods: pods polled every 0.1 s, counters flushed every 0.2 s."""
    return settings.model_copy(
        update={
            "pod_poll_interval_seconds": 0.1,
            "counters_flush_seconds": 0.2,
            "sse_keepalive_seconds": 0.5,
        }
    )


def stored(settings: Settings, session_id: str) -> Any:
    engine = make_engine(settings.db_url)
    try:
        return SessionRepository(engine).get(session_id)
    finally:
        engine.dispose()


def statuses(events: list[SseEvent], session_id: str) -> list[tuple[str, str]]:
    return [(e.data["old"], e.data["new"]) for e in events if e.is_status(session_id)]


@contextlib.contextmanager
def pod_phase(registry: PodRegistry, name: str, phase: str) -> Iterator[PodEntry]:
    """The pod reads `phase` until the block ends (then it is Running again)."""
    original = registry.get("default", name)
    assert original is not None
    registry.add(replace(original, phase=phase))
    try:
        yield original
    finally:
        registry.add(original)


# ------------------------------------------------------------------- transitions


async def test_a_pod_that_stops_running_is_noticed_and_the_session_comes_back(
    api: Api, registry: PodRegistry, echo: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="podgate.runner")
    async with AsgiEventStream(api.app, "/events") as stream:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        response = await api.create(ports=[f"0:{echo.port}"])
        created = response.json()
        sid, local = created["id"], created["ports"][0]["local_port"]
        first = await stream.next()
        assert (first.event, first.data["session_id"], first.data["name"]) == (
            "created",
            sid,
            created["name"],
        )
        assert first.data["local_ports"] == [local]
        await stream.wait_for(lambda e: e.is_status(sid, "ready"), WAIT, "ready")
        assert await exchange("127.0.0.1", local, b"before") == b"before"

        failed_at = time.monotonic()  # the outage cannot start before the pod fails
        with pod_phase(registry, "echo", "Failed"):
            lost = await stream.wait_for(lambda e: e.is_status(sid, "reconnecting"), WAIT)
            assert lost.data["last_error"] == 'pod "echo" is no longer running (phase Failed)'
            # Re-resolved on every dial: the pod is not running, so it stays reconnecting.
            session = (await api.client.get(f"/sessions/{sid}")).json()
            assert session["status"] == "reconnecting" and session["last_error"]
            assert session["ports"][0]["local_port"] == local
            # The outage this test causes: the pod stays down OUTAGE_HOLD s after the loss
            # was reported, and the session re-dials (every <= 0.1 s) without coming back.
            await stream.expect_none(lambda e: e.is_status(sid, "ready"), OUTAGE_HOLD, "ready")
            running_again_at = time.monotonic()  # just before the pod runs again
        back = await stream.wait_for(lambda e: e.is_status(sid, "ready"), WAIT, "ready again")
        reconnect = await stream.wait_for(lambda e: e.event == "reconnect", WAIT)
        assert reconnect.data["reconnects"] == 1 == back.data["reconnects"]
        assert (reconnect.data["pod"], reconnect.data["previous_pod"]) == ("echo", "echo")
        # The session lost its link after the pod failed and before it said so (`lost`), and
        # was ready again after the pod ran again and before it said so (`reconnect`).
        shortest = running_again_at - lost.received
        longest = reconnect.received - failed_at
        assert shortest >= OUTAGE_HOLD
        outage = reconnect.data["outage_seconds"]
        assert shortest - CLOCK_SLACK <= outage <= longest + CLOCK_SLACK, (shortest, longest)
        assert await exchange("127.0.0.1", local, b"after") == b"after"

    assert statuses(stream.events, sid) == [
        ("pending", "ready"),
        ("ready", "reconnecting"),
        ("reconnecting", "ready"),
    ]
    ids = [int(e.id) for e in stream.events if e.id is not None]
    assert len(ids) == len(stream.events) and ids == sorted(set(ids))
    session = (await api.client.get(f"/sessions/{sid}")).json()
    assert (session["status"], session["reconnects"], session["last_error"]) == ("ready", 1, None)
    # The agent refuses watches; the runner said so and polled instead.
    assert "polling every 0.1 s" in caplog.text


async def test_last_event_id_resumes_from_the_buffer(api: Api, echo: EchoServer) -> None:
    with refused_port(POD_HOST) as dead:
        async with AsgiEventStream(api.app, "/events") as first:
            created = (await api.create(ports=[f"0:{echo.port}", f"0:{dead}"])).json()
            sid = created["id"]
            dead_local = created["ports"][1]["local_port"]
            await first.wait_for(lambda e: e.is_status(sid, "ready"), WAIT, "ready")
            assert await closed_without_data("127.0.0.1", dead_local)
            error = await first.wait_for(lambda e: e.event == "connection_error", WAIT)
        assert error.data["port"] == dead_local and error.data["remote_port"] == dead
        assert "connection refused" in error.data["text"]
    seen = list(first.events)
    assert [e.event for e in seen] == ["created", "status", "connection_error"]

    # A client that saw the first event gets the rest, identical, then live ones.
    async with AsgiEventStream(api.app, "/events", {"Last-Event-ID": str(seen[0].id)}) as again:
        for expected in seen[1:]:
            got = await again.next()
            assert (got.id, got.event, got.data) == (expected.id, expected.event, expected.data)
        other = (await api.create(ports=[f"0:{echo.port}"])).json()
        live = await again.next()
        assert (live.event, live.data["session_id"]) == ("created", other["id"])
        assert int(live.id or 0) > int(seen[-1].id or 0)

    # The same with the query parameter, on the session's own stream (the other is absent).
    path = f"/sessions/{sid}/events?last_event_id={seen[0].id}"
    async with AsgiEventStream(api.app, path) as own:
        assert [(await own.next()).id for _ in seen[1:]] == [e.id for e in seen[1:]]
        assert (await api.client.delete(f"/sessions/{sid}")).status_code == 204
        deleted = await own.next()
        assert (deleted.event, deleted.data["session_id"]) == ("deleted", sid)
        await own.wait_until(lambda: own.ended, WAIT, "the end of the deleted session's stream")
    assert not [e for e in own.events if e.data["session_id"] != sid]


async def test_a_client_too_far_behind_is_told_so(settings: Settings, echo: EchoServer) -> None:
    async with running_api(settings.model_copy(update={"event_buffer_size": 4})) as api:
        async with AsgiEventStream(api.app, "/events") as live:
            for _ in range(3):
                sid = (await api.create(ports=[f"0:{echo.port}"])).json()["id"]
                await live.wait_for(lambda e, sid=sid: e.is_status(sid, "ready"), WAIT)
        assert len(live.events) == 6  # created + pending -> ready, three times
        first_id = int(live.events[0].id or 0)
        async with AsgiEventStream(api.app, "/events", {"Last-Event-ID": str(first_id)}) as late:
            resync = await late.next()
            assert resync.event == "resync" and resync.id is None
            buffered = live.events[-4:]
            assert resync.data["last_event_id"] == first_id
            assert resync.data["first_available_id"] == int(buffered[0].id or 0)
            assert [(await late.next()).id for _ in buffered] == [e.id for e in buffered]
        # Resuming within the buffer is not a gap.
        async with AsgiEventStream(
            api.app, "/events", {"Last-Event-ID": str(buffered[0].id)}
        ) as recent:
            assert (await recent.next()).id == buffered[1].id


async def test_a_client_that_does_not_read_is_dropped_and_blocks_nothing(
    settings: Settings, echo: EchoServer
) -> None:
    async with running_api(settings.model_copy(update={"event_queue_size": 4})) as api:
        gate = asyncio.Event()
        async with (
            AsgiEventStream(api.app, "/events", gate=gate) as slow,
            AsgiEventStream(api.app, "/events") as fast,
        ):
            ids = []
            for _ in range(5):  # 10 events: more than the 4 a client may leave unread
                async with asyncio.timeout(WAIT):  # the API answers while `slow` is stuck
                    sid = (await api.create(ports=[f"0:{echo.port}"])).json()["id"]
                ids.append(sid)
                await fast.wait_for(lambda e, sid=sid: e.is_status(sid, "ready"), WAIT)
            assert [e.data["session_id"] for e in fast.events if e.event == "created"] == ids
            assert api.app.state.supervisor.events.dropped_clients == 1
            gate.set()  # the slow client reads again: it learns it was dropped, and the end
            dropped = await slow.wait_for(lambda e: e.event == "dropped", WAIT)
            assert "Last-Event-ID" in dropped.data["detail"]
            await slow.wait_until(lambda: slow.ended, WAIT, "the end of the dropped stream")
            assert not fast.ended


async def test_events_of_an_unknown_session_are_404(api: Api) -> None:
    async with AsgiEventStream(api.app, "/sessions/nope/events") as stream:
        await stream.wait_until(lambda: stream.ended, WAIT, "the end")
    assert stream.status == 404
    assert stream.headers["content-type"] == "application/problem+json"
    assert b'session \\"nope\\" does not exist' in stream.body


# ------------------------------------------------------------------------ expiry


async def test_ttl_expiry_stops_the_session_and_it_stays_stopped(
    settings: Settings, echo: EchoServer
) -> None:
    async with running_api(settings) as api:
        async with AsgiEventStream(api.app, "/events") as stream:
            created = (await api.create(ports=[f"0:{echo.port}"], ttl_seconds=1)).json()
            sid, local = created["id"], created["ports"][0]["local_port"]
            assert created["ttl_seconds"] == 1
            expires_at = datetime.fromisoformat(created["expires_at"])
            created_at = datetime.fromisoformat(created["created_at"])
            assert expires_at == created_at + timedelta(seconds=1)
            await stream.wait_for(lambda e: e.is_status(sid, "ready"), WAIT)
            expired = await stream.wait_for(lambda e: e.event == "expired", WAIT)
        assert expired.data["reason"] == "expired: ttl 1 s reached"
        assert statuses(stream.events, sid)[-1] == ("ready", "stopped")
        session = (await api.client.get(f"/sessions/{sid}")).json()
        assert session["status"] == "stopped"
        assert session["last_error"] == "expired: ttl 1 s reached"
        assert session["ports"][0]["addresses"] == [] and session["forwarding"] == []
        for host in ("127.0.0.1", "::1"):
            assert await refused(host, local)

    # Stopped sessions are not restarted at start-up; the row stays until DELETE.
    async with running_api(settings) as api:
        session = (await api.client.get(f"/sessions/{sid}")).json()
        assert (session["status"], session["last_error"]) == (
            "stopped",
            "expired: ttl 1 s reached",
        )
        assert session["ports"][0]["local_port"] == local
        assert await refused("127.0.0.1", local)
        assert (await api.client.delete(f"/sessions/{sid}")).status_code == 204
        assert (await api.client.get(f"/sessions/{sid}")).status_code == 404


async def test_idle_expiry_waits_for_the_last_connection(api: Api, echo: EchoServer) -> None:
    async with AsgiEventStream(api.app, "/events") as stream:
        created = (await api.create(ports=[f"0:{echo.port}"], idle_timeout_seconds=1)).json()
        sid, local = created["id"], created["ports"][0]["local_port"]
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
        try:
            writer.write(b"still here")
            async with asyncio.timeout(WAIT):
                assert await reader.readexactly(10) == b"still here"
            # The scenario, not a synchronisation: open (if silent) for longer than the timeout.
            await asyncio.sleep(1.3)
            session = (await api.client.get(f"/sessions/{sid}")).json()
            assert session["status"] == "ready", session
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        closed_at = asyncio.get_running_loop().time()
        expired = await stream.wait_for(lambda e: e.event == "expired", WAIT)
    assert expired.data["reason"] == "expired: idle for 1 s"
    assert expired.received - closed_at >= 0.25
    session = (await api.client.get(f"/sessions/{sid}")).json()
    assert (session["status"], session["last_error"]) == ("stopped", "expired: idle for 1 s")
    assert await refused("127.0.0.1", local)


# ------------------------------------------------------------------------ policies


async def test_policy_defaults_values_and_validation(api: Api, echo: EchoServer) -> None:
    default = (await api.create(ports=[f"0:{echo.port}"])).json()
    assert default["reconnect"] == {
        "enabled": True,
        "max_attempts": None,
        "max_backoff_seconds": 1.0,  # the service's setting (tests/api/conftest.py)
    }
    assert (default["keepalive_seconds"], default["connect_wait_seconds"]) == (5.0, 5.0)
    assert (default["ttl_seconds"], default["idle_timeout_seconds"]) == (None, None)
    assert default["expires_at"] is None and default["reconnects"] == 0

    body: dict[str, Any] = {
        "name": "tuned",
        "ports": [f"0:{echo.port}"],
        "reconnect": {"enabled": True, "max_attempts": 7, "max_backoff_seconds": 2.5},
        "keepalive_seconds": 1.5,
        "connect_wait_seconds": 3,
        "idle_timeout_seconds": 600,
    }
    tuned = await api.create(**body)
    assert tuned.status_code == 201, tuned.text
    session = tuned.json()
    assert session["reconnect"] == body["reconnect"]
    assert (session["keepalive_seconds"], session["connect_wait_seconds"]) == (1.5, 3.0)
    assert session["idle_timeout_seconds"] == 600.0
    # Idempotent by name with the same policy; a different policy is another spec.
    assert (await api.create(**body)).status_code == 200
    changed = await api.create(**{**body, "keepalive_seconds": 2.0})
    assert changed.status_code == 409, changed.text

    for bad, fragment in [
        ({"reconnect": {"max_attempts": 0}}, "reconnect.max_attempts"),
        ({"reconnect": {"retries": 3}}, "reconnect.retries"),
        ({"reconnect": {"max_backoff_seconds": 0}}, "reconnect.max_backoff_seconds"),
        # The floors: nothing may spin (1e-6 s keepalives pinned a core; 1 ms backoffs sent
        # 514 dials/s at the cluster).
        ({"reconnect": {"max_backoff_seconds": 0.001}}, "reconnect.max_backoff_seconds"),
        ({"keepalive_seconds": 0}, "keepalive_seconds"),
        ({"keepalive_seconds": 1e-6}, "keepalive_seconds"),
        ({"connect_wait_seconds": -1}, "connect_wait_seconds"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": 0.5}, "ttl_seconds"),
        ({"idle_timeout_seconds": 0.5}, "idle_timeout_seconds"),
        ({"idle_timeout_seconds": "soon"}, "idle_timeout_seconds"),
    ]:
        response = await api.create(ports=[f"0:{echo.port}"], **bad)
        assert response.status_code == 422, (bad, response.text)
        assert fragment in response.json()["detail"]


async def test_max_attempts_gives_up(api: Api, echo: EchoServer) -> None:
    created = await api.create(
        target="pod/waiting",  # Pending: every dial fails, retryably
        ports=[f"0:{echo.port}"],
        reconnect={"max_attempts": 3},
    )
    failed = await api.wait_status(created.json()["id"], "failed")
    assert failed["last_error"].startswith("gave up after 3 attempt(s): ")
    assert "pod is not running. Current status=Pending" in failed["last_error"]


async def test_reconnect_disabled_fails_when_the_pod_goes(
    api: Api, registry: PodRegistry, echo: EchoServer
) -> None:
    async with AsgiEventStream(api.app, "/events") as stream:
        created = (await api.create(ports=[f"0:{echo.port}"], reconnect={"enabled": False})).json()
        sid, local = created["id"], created["ports"][0]["local_port"]
        await stream.wait_for(lambda e: e.is_status(sid, "ready"), WAIT)
        with pod_phase(registry, "echo", "Succeeded"):
            failed = await stream.wait_for(lambda e: e.is_status(sid, "failed"), WAIT)
    assert failed.data["last_error"] == (
        'pod "echo" is no longer running (phase Succeeded) (reconnect is disabled)'
    )
    assert statuses(stream.events, sid) == [("pending", "ready"), ("ready", "failed")]
    session = (await api.client.get(f"/sessions/{sid}")).json()
    assert (session["status"], session["reconnects"]) == ("failed", 0)
    assert await closed_without_data("127.0.0.1", local)  # still bound, nothing forwarded


# ------------------------------------------------------------------------ counters


async def test_counters_per_mapping_are_stored_and_survive_a_restart(
    settings: Settings, registry: PodRegistry, echo: EchoServer
) -> None:
    async with running_api(settings) as api:
        created = (await api.create(ports=[f"0:{echo.port}", f"0:{echo.port}"])).json()
        sid = created["id"]
        first, second = (p["local_port"] for p in created["ports"])
        await api.wait_status(sid, "ready")
        for payload in (b"a" * 3000, b"b" * 5000):
            assert await exchange("127.0.0.1", first, payload) == payload
        assert await exchange("::1", second, b"c" * 7000) == b"c" * 7000
        # One re-dial, so that `reconnects` is stored too.
        with pod_phase(registry, "echo", "Unknown"):
            await api.wait_status(sid, "reconnecting")
        await api.wait_status(sid, "ready")

        def done(s: dict[str, Any]) -> bool:
            return s["connections_total"] == 3 and s["connections_active"] == 0

        deadline = asyncio.get_running_loop().time() + WAIT
        while not done(before := (await api.client.get(f"/sessions/{sid}")).json()):
            assert asyncio.get_running_loop().time() < deadline, before
            await asyncio.sleep(0.02)
        by_port = [p["counters"] for p in before["ports"]]
        assert by_port[0] == {
            "connections_active": 0,
            "connections_total": 2,
            "connection_errors": 0,
            "bytes_in": 8000,
            "bytes_out": 8000,
            "connections_refused": 0,
        }
        assert (by_port[1]["connections_total"], by_port[1]["bytes_in"]) == (1, 7000)
        assert (before["bytes_in"], before["bytes_out"], before["reconnects"]) == (15000, 15000, 1)
        # Written by the periodic flush while the service runs (every 0.2 s here).
        deadline = asyncio.get_running_loop().time() + WAIT
        while ((record := stored(settings, sid)).bytes_in, record.reconnects) != (15000, 1):
            assert asyncio.get_running_loop().time() < deadline, "counters never stored"
            await asyncio.sleep(0.05)
        assert (record.connections_total, record.reconnects) == (3, 1)
        assert [(m.connections_total, m.bytes_out) for m in record.mappings] == [
            (2, 8000),
            (1, 7000),
        ]

    async with running_api(settings) as api:
        after = await api.wait_status(sid, "ready")
        for key in ("connections_total", "connection_errors", "bytes_in", "bytes_out"):
            assert after[key] == before[key], key
        assert after["reconnects"] == 1
        assert [p["counters"] for p in after["ports"]] == by_port
        assert await exchange("127.0.0.1", first, b"d" * 1000) == b"d" * 1000
        more = await api.wait_status(sid, "ready")
        deadline = asyncio.get_running_loop().time() + WAIT
        while more["bytes_in"] != 16000:  # counting goes on from the stored values
            assert asyncio.get_running_loop().time() < deadline, more
            await asyncio.sleep(0.02)
            more = (await api.client.get(f"/sessions/{sid}")).json()
