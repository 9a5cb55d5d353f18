"""`GET /sessions` renders from per-session templates (only the counters per request): the
bytes must equal what FastAPI's JSONResponse sends for the `to_public` models, whatever
the sessions' state, and stay equal as counters and state change between listings."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from fastapi.responses import JSONResponse

from service.api.routes import render_listing, render_session, to_public
from service.api.schemas import SessionsPublic
from service.model import SessionStatus, Transport
from service.ports import parse_port_specs
from service.runner.session import ForwardSession
from service.runner.spec import SessionPolicy, SessionSpec
from tests.api.conftest import Api
from tests.support.echo import EchoServer

PENDING, READY, RECONNECTING, FAILED, STOPPED = SessionStatus
CREATED = datetime.datetime(2026, 11, 25, 16, 24, 38, 123456, tzinfo=datetime.UTC)
ODD_TEXT = 'naïve-\u2603-"q"\\\n\x01\x7f 100% %d %s %% {} \u2028'

Factory = Callable[..., ForwardSession]


async def _no_cluster(context: str | None) -> object:
    raise AssertionError("rendering must not dial")


@pytest.fixture
def make_session() -> Iterator[Factory]:
    """Sessions that are never started: real listeners (unless bind=False), set states."""
    made: list[ForwardSession] = []
    ids = itertools.count()

    def make(
        ports: tuple[str, ...] = ("0:80",),
        *,
        policy: SessionPolicy | None = None,
        name: str = "web",
        bind: bool = True,
    ) -> ForwardSession:
        spec = SessionSpec(
            id=f"s{next(ids)}",
            name=name,
            namespace="default",
            target="pod/web",
            mappings=tuple(parse_port_specs(list(ports), allow_names=True)),
            addresses=("127.0.0.1",),
            optional_addresses=(),
            context=None,
            transport=Transport.AUTO,
            created_at=CREATED,
        )
        session = ForwardSession(spec, _no_cluster, on_change=lambda s: None, policy=policy)
        made.append(session)
        if bind:
            session.bind()
        return session

    yield make
    for session in made:
        session.close_listeners()


def expected(sessions: list[ForwardSession]) -> bytes:
    listing = SessionsPublic(data=[to_public(s) for s in sessions], count=len(sessions))
    return JSONResponse(listing.model_dump(mode="json")).body


def assert_renders(sessions: list[ForwardSession]) -> None:
    assert render_listing(sessions) == expected(sessions)
    for session in sessions:
        assert (
            render_session(session) == JSONResponse(to_public(session).model_dump(mode="json")).body
        )


def test_empty_listing() -> None:
    assert_renders([])


def test_every_status_and_none_values(make_session: Factory) -> None:
    sessions = []
    for status, error in [
        (PENDING, None),
        (READY, None),
        (RECONNECTING, "link lost: EOF"),
        (FAILED, ODD_TEXT),
        (STOPPED, "ttl expired"),
    ]:
        session = make_session(name=f"n-{status}")
        session.status, session.last_error = status, error
        if status in (READY, RECONNECTING):
            session.pod, session.transport = "web-7d9f", Transport.SPDY
            session.ready_since = CREATED + datetime.timedelta(seconds=1)
        if status == STOPPED:
            session.close_listeners()  # listening nowhere: no addresses, no forwarding lines
        sessions.append(session)
    assert_renders(sessions)


@pytest.mark.parametrize(
    "seconds", [0.25, 1 / 3, 1e-4, 9.99e-5, 1e-5, 1e-7, 123456789.125, 3600.0, 315360000.0]
)
def test_float_edge_cases(make_session: Factory, seconds: float) -> None:
    policy = SessionPolicy(
        max_attempts=3,
        max_backoff=seconds,
        keepalive=seconds,
        connect_wait=seconds,
        ttl=seconds,
        idle_timeout=seconds,
        channel_linger=seconds,
    )
    assert_renders([make_session(policy=policy), make_session(policy=SessionPolicy(ttl=None))])


def test_odd_strings_and_ready_since_forms(make_session: Factory) -> None:
    session = make_session(name=ODD_TEXT)
    session.status, session.pod, session.last_error = READY, ODD_TEXT, ODD_TEXT
    session.transport = Transport.WS_CHANNEL
    assert_renders([session])
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    for since in [
        CREATED,
        CREATED.astimezone(plus_two),  # the same instant, another zone: renders differently
        CREATED.replace(microsecond=0),  # the same instant, another zone: renders differently
        datetime.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=plus_two),
        None,
    ]:
        session.ready_since = since
        assert_renders([session])


def test_strings_that_look_like_template_markers(make_session: Factory) -> None:
    # A template's counters are first rendered as strings NUL SALT ":" INDEX.
    session = make_session(name="\x000:x")
    session.pod, session.last_error = "\x000:0", "\x002:"
    session.spec = replace(session.spec, target="\x001:3")
    session.port_counters[0].bytes_in = 5
    assert_renders([session])


def test_counters_change_between_listings(make_session: Factory) -> None:
    first = make_session(("0:80", "0:http", ":443"))
    second = make_session()
    sessions = [first, second]
    assert_renders(sessions)
    for step in range(1, 4):
        for position, counters in enumerate(first.port_counters):
            counters.connections_active = step
            counters.connections_total = step * 10 + position
            counters.connection_errors = position
            counters.bytes_in = step * 2**40 + position
            counters.bytes_out = step * 7
        second.port_counters[0].bytes_in = 2**70 + step  # beyond 64 bits
        assert_renders(sessions)


def test_state_changes_between_listings(make_session: Factory) -> None:
    session = make_session(("0:http", "0:80"))
    assert_renders([session])  # a named port: remote_port 0, "?" in the forwarding lines
    # One attribute at a time, as the runner changes them: each must show in the next listing.
    for attribute, value in [
        ("remote_ports", [8080, 80]),
        ("pod", "web-1"),
        ("transport", Transport.WEBSOCKET),
        ("status", READY),
        ("ready_since", CREATED + datetime.timedelta(seconds=2)),
        ("status", RECONNECTING),
        ("last_error", "connection reset"),
        ("reconnects", 1),
        ("pod", "web-2"),
        ("last_error", None),
        ("status", READY),
    ]:
        setattr(session, attribute, value)
        assert_renders([session])
    session.close_listeners()
    assert_renders([session])


def test_ports_that_could_not_be_restored(make_session: Factory) -> None:
    # Restore after a restart failed to bind: the stored ports, listening nowhere.
    session = make_session(("8080:80", "9090:http"), bind=False)
    session.status, session.last_error = FAILED, "cannot listen on 127.0.0.1:8080"
    assert_renders([session])


def test_rebinding_changes_the_rendering(make_session: Factory) -> None:
    session = make_session()
    before = render_session(session)
    session.close_listeners()
    session.bind()  # new sockets on a new OS-chosen port
    assert render_session(session) != before
    assert_renders([session])


async def test_get_sessions_route(api: Api, echo: EchoServer) -> None:
    for ports in (["0:7000"], ["0:7001", "0:http"]):
        response = await api.create(ports=ports, connect_wait_seconds=0, ttl_seconds=60)
        assert response.status_code == 201, response.text
    response = await api.client.get("/sessions")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == expected(api.app.state.supervisor.list())
    assert response.json()["count"] == 2
