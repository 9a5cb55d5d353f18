"""The `/sessions` routes and the live event streams."""

from __future__ import annotations

import asyncio
import json
import operator
import re
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from itertools import chain, count
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import format_sse_event
from starlette.background import BackgroundTask

from service.api.metrics import CONTENT_TYPE
from service.api.problems import ProblemError, problem_responses
from service.api.schemas import (
    Counters,
    Health,
    PortPublic,
    ReconnectPublic,
    SessionCreate,
    SessionPublic,
    SessionsPublic,
    Via,
)
from service.api.security import ANONYMOUS, Authenticator, Caller
from service.config import Settings
from service.ports import format_forwarding_lines
from service.runner.events import EventHub, Subscription
from service.runner.listeners import ListenError
from service.runner.local import TrafficCounters
from service.runner.policy import PolicyError
from service.runner.session import ForwardSession
from service.runner.spec import OPTION_FIELDS, RequestError, SessionRequest, build_request
from service.runner.supervisor import SessionConflict, SessionLimit, Supervisor
from service.upstream import UpstreamError

router = APIRouter()


def get_supervisor(request: Request) -> Supervisor:
    supervisor: Supervisor = request.app.state.supervisor
    return supervisor


SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

#: `Authorization: Bearer TOKEN`; documented as the operations' security scheme.
bearer = HTTPBearer(
    scheme_name="bearer",
    description="A token of `--token-file`, or with `--auth kubernetes` a token the cluster "
    "accepts (TokenReview). Not needed when podgate runs without authentication (loopback).",
    auto_error=False,
)


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """Who is asking: `Authorization: Bearer TOKEN`, checked as configured (security.py)."""
    authenticator: Authenticator = request.app.state.authenticator
    if not authenticator.enabled:
        return ANONYMOUS
    token = credentials.credentials.strip() if credentials is not None else ""
    challenge = {"WWW-Authenticate": 'Bearer realm="podgate"'}
    if not token:
        raise ProblemError(
            401, "a bearer token is required (Authorization: Bearer TOKEN)", challenge
        )
    try:
        caller = await authenticator.caller(token)
    except UpstreamError as exc:
        raise ProblemError(503, f"the token cannot be checked now: {exc}") from None
    if caller is None:
        raise ProblemError(401, "the bearer token is not valid", challenge)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
#: The problems every authenticated route can answer (503: `--auth kubernetes` could not
#: reach the cluster to check the token).
AUTH_PROBLEMS = (401, 503)


#: The counters, in the order of `Counters` (and of the session's own counter fields).
_COUNTER_FIELDS = tuple(Counters.model_fields)
_counter_values = operator.attrgetter(*_COUNTER_FIELDS)


def _counter_fields(counters: TrafficCounters) -> dict[str, Any]:
    """The counters by field name: a port's `Counters`, or a session's own fields."""
    return dict(zip(_COUNTER_FIELDS, _counter_values(counters), strict=True))


def _counters(counters: TrafficCounters) -> Counters:
    return Counters(**_counter_fields(counters))


def to_public(session: ForwardSession) -> SessionPublic:
    # A new field that can change over a session's life must also go into `_state` below.
    spec = session.spec
    ports: list[PortPublic] = []
    forwarding: list[str] = []
    for position, mapping in enumerate(spec.mappings):
        # The pod port once resolved (a service port or a port name maps to it).
        remote_port = session.remote_ports[position] or mapping.remote_port
        if position < len(session.bound):
            bound = session.bound[position]
            local_port, addresses = bound.local_port, bound.addresses
        else:  # listeners that could not be restored: stored ports, listening nowhere
            local_port, addresses = mapping.local_port, []
        ports.append(
            PortPublic(
                spec=mapping.spec,
                local_port=local_port,
                remote_port=remote_port,
                remote_name=mapping.remote_name,
                addresses=addresses,
                counters=_counters(session.port_counters[position]),
            )
        )
        shown = remote_port or mapping.remote_name or "?"
        forwarding += [format_forwarding_lines(a, local_port, shown) for a in addresses]
    policy = session.policy
    return SessionPublic(
        id=spec.id,
        name=spec.name,
        owner=spec.owner,
        namespace=spec.namespace,
        target=spec.target,
        pod=session.pod,
        status=session.status,
        transport=session.transport,
        last_error=session.last_error,
        created_at=spec.created_at,
        ready_since=session.ready_since,
        ports=ports,
        forwarding=forwarding,
        **_counter_fields(session.counters),
        reconnects=session.reconnects,
        reconnect=ReconnectPublic(
            enabled=policy.reconnect,
            max_attempts=policy.max_attempts,
            max_backoff_seconds=policy.max_backoff,
        ),
        keepalive_seconds=policy.keepalive,
        connect_wait_seconds=policy.connect_wait,
        ttl_seconds=policy.ttl,
        idle_timeout_seconds=policy.idle_timeout,
        channel_linger_seconds=policy.channel_linger,
        via=Via(agent=spec.via[0], context=spec.via[1]) if spec.via is not None else None,
        expires_at=session.expires_at,
    )


def _create_request(body: SessionCreate, caller: Caller, settings: Settings) -> SessionRequest:
    options = body.model_dump(include=set(OPTION_FIELDS))
    if body.via is None and settings.default_agent:
        options["via"] = {
            "agent": settings.default_agent,
            "context": settings.default_agent_context or None,
        }
    try:
        return build_request(
            body.namespace,
            body.target,
            body.ports,
            body.addresses,
            name=body.name,
            context=body.context,
            transport=body.transport,
            options=options,
            owner=caller.owner,
        )
    except RequestError as exc:
        raise ProblemError(422, str(exc)) from None


@router.post(
    "/sessions",
    response_model=SessionPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": SessionPublic, "description": "A session with this name and spec exists"},
        **problem_responses(*AUTH_PROBLEMS, 403, 409, 422, 429),
    },
    summary="Create a forward session",
)
async def create_session(
    body: SessionCreate,
    supervisor: SupervisorDep,
    settings: SettingsDep,
    response: Response,
    caller: CallerDep,
    request: Request,
) -> SessionPublic:
    """Binds the local listeners (so `local_port` is known) before answering; the
    connection to the cluster is made in the background and shows in `status`."""
    authenticator: Authenticator = request.app.state.authenticator
    try:
        missing = await authenticator.may_create(caller, body.namespace)
    except UpstreamError as exc:
        raise ProblemError(503, f"the permission cannot be checked now: {exc}") from None
    if missing is not None:
        raise ProblemError(
            403,
            f'user "{caller.user}" may not {missing}, which port-forwarding needs',
        )
    if caller.from_cluster and (body.context or body.via):
        raise ProblemError(
            403,
            "with --auth kubernetes a session uses the cluster that authenticated its caller "
            "(and the service's default agent, if any): leave out context and via",
        )
    session_request = _create_request(body, caller, settings)
    try:
        session, created = await supervisor.create(session_request)
    except ListenError as exc:
        raise ProblemError(409 if exc.port_in_use else 422, str(exc)) from None
    except SessionConflict as exc:
        raise ProblemError(409, str(exc)) from None
    except SessionLimit as exc:
        raise ProblemError(429, str(exc)) from None
    except PolicyError as exc:
        raise ProblemError(exc.status, str(exc)) from None
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/sessions/{session.spec.id}"
    return to_public(session)


@router.get(
    "/sessions",
    response_model=SessionsPublic,
    responses=problem_responses(*AUTH_PROBLEMS),
    summary="List forward sessions",
)
async def list_sessions(supervisor: SupervisorDep, caller: CallerDep) -> Response:
    """The caller's own sessions (every session for members of `podgate:admin`, and when
    no authentication is configured)."""
    sessions = supervisor.list()
    if not caller.sees_all:
        sessions = [s for s in sessions if s.spec.owner == caller.user]
    # Why a ready Response: FastAPI would re-validate and re-dump 1000 sessions.
    return Response(render_listing(sessions), media_type="application/json")


# ------------------------------------------------- the GET /sessions rendering
# Each session's JSON is kept as a template with a %d per counter: only the counters
# are rendered per request; the rest is rebuilt when anything else of the session changes.


@dataclass(frozen=True, slots=True)
class _Hole:
    """A counter in a template; `index` is its place in `_counter_row`."""

    index: int


def _counter_row(session: ForwardSession) -> tuple[int, ...]:
    """The values of a template's holes: each port's counters, then the session's."""
    return tuple(
        chain.from_iterable(map(_counter_values, [*session.port_counters, session.counters]))
    )


def _template(session: ForwardSession) -> bytes:
    """``to_public(session)`` as FastAPI's JSONResponse renders it (json.dumps), with
    ``%d`` for each counter (the rest ``%``-escaped)."""
    doc = to_public(session).model_dump(mode="json")
    holes = count()
    for counters in [*(port["counters"] for port in doc["ports"]), doc]:
        counters.update({name: _Hole(next(holes)) for name in _COUNTER_FIELDS})
    indices = [str(i) for i in range(next(holes))]
    # Each hole is rendered as the string MARKER+index, then replaced: take a marker that
    # occurs nowhere else in the text (with a NUL in it: practically always the first).
    for salt in count():
        marker = f"\x00{salt}:"

        def as_text(hole: _Hole, marker: str = marker) -> str:
            return f"{marker}{hole.index}"

        text = json.dumps(
            doc,
            default=as_text,
            ensure_ascii=False,
            allow_nan=False,
            indent=None,
            separators=(",", ":"),
        )
        escaped = json.dumps(marker)[1:-1]
        if text.count(escaped) == len(indices):
            break
    pieces = re.split(f'"{re.escape(escaped)}(\\d+)"', text)
    if pieces[1::2] != indices:  # a schema change moved the ports after the counters
        raise RuntimeError("session counters out of the order _counter_row gives them in")
    return "%d".join(piece.replace("%", "%%") for piece in pieces[::2]).encode()


def _state(session: ForwardSession) -> tuple[object, ...]:
    """What `to_public` reads besides the counters (spec and policy never change).

    ``ready_since`` also by identity (held here, so its id is not reused): equal instants
    in two time zones render differently.
    """
    since = session.ready_since
    return (
        session.status,
        session.pod,
        session.transport,
        session.last_error,
        since,
        id(since),
        session.reconnects,
        tuple(session.remote_ports),
        # The sockets by identity: a socket's address never changes, closing drops it.
        tuple((b.local_port, *b.sockets) for b in session.bound),
    )


#: Per live session: the `_state` its template was made in, and the template.
_templates: weakref.WeakKeyDictionary[ForwardSession, tuple[tuple[object, ...], bytes]] = (
    weakref.WeakKeyDictionary()
)


def render_session(session: ForwardSession) -> bytes:
    """The session's JSON, byte for byte what FastAPI's JSONResponse sends for
    ``to_public(session)``."""
    state = _state(session)
    cached = _templates.get(session)
    if cached is None or cached[0] != state:
        cached = _templates[session] = (state, _template(session))
    return cached[1] % _counter_row(session)


def render_listing(sessions: Sequence[ForwardSession]) -> bytes:
    """``SessionsPublic`` of these sessions, as FastAPI's JSONResponse would send it."""
    data = b",".join([render_session(s) for s in sessions])
    return b'{"data":[%b],"count":%d}' % (data, len(sessions))


def _unknown(session_id: str) -> ProblemError:
    return ProblemError(404, f'session "{session_id}" does not exist')


def existing_session(
    session_id: str, supervisor: SupervisorDep, caller: CallerDep
) -> ForwardSession:
    """The session, if it exists and the caller may see it (others' are "not found")."""
    session = supervisor.get(session_id)
    if session is None or not caller.may_see(session.spec.owner):
        raise _unknown(session_id)
    return session


SessionDep = Annotated[ForwardSession, Depends(existing_session)]


@router.get(
    "/sessions/{session_id}",
    response_model=SessionPublic,
    responses=problem_responses(*AUTH_PROBLEMS, 404),
    summary="Get one forward session",
)
async def get_session(session: SessionDep) -> SessionPublic:
    return to_public(session)


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(*AUTH_PROBLEMS, 404),
    summary="Delete a forward session",
)
async def delete_session(session: SessionDep, supervisor: SupervisorDep) -> Response:
    """Closes the listeners and every in-flight connection, then removes the session."""
    if not await supervisor.delete(session.spec.id):
        raise _unknown(session.spec.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- live events

LAST_EVENT_ID_DOC = (
    "Resume after this event id (what `EventSource` sends on reconnect): the buffered "
    "events after it come first. When some are no longer buffered, a `resync` event says so."
)
LastEventIdHeader = Annotated[
    int | None, Header(alias="Last-Event-ID", ge=0, description=LAST_EVENT_ID_DOC)
]
LastEventIdQuery = Annotated[
    int | None,
    Query(
        alias="last_event_id",
        ge=0,
        description="The same as the `Last-Event-ID` header, for a first connection.",
    ),
]
EVENTS_DOC = """Server-Sent Events (`text/event-stream`). Each event has an `id:` (increasing),
an `event:` type and a JSON `data:` object with `type`, `session_id`, `name`, `time` and:

- `created`: `namespace`, `target`, `status`, `local_ports`;
- `status`: `old`, `new`, `last_error`, `pod`, `transport`, `reconnects`;
- `reconnect`: `reconnects`, `pod`, `previous_pod`, `transport`, `outage_seconds`;
- `connection_error`: `port` (local), `remote_port`, `text`;
- `expired`: `reason`; `deleted`.

Stream-level events have no `id:`: `resync` (events after `Last-Event-ID` were lost:
`last_event_id`, `first_available_id`; re-read the sessions) and `dropped` (this client
left too many events unread and is disconnected; reconnect with `Last-Event-ID`). A
comment line is sent every 15 s while nothing happens."""


#: One event of the stream as a client parses it (OpenAPI 3.1: the `schema` of a
#: `text/event-stream` response describes each event).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {
            "type": "string",
            "enum": [
                "created", "status", "reconnect", "connection_error", "expired", "deleted",
                "resync", "dropped",
            ],
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "A JSON object (see the operation's description).",
        },
        "id": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "required": ["event", "data"],
}  # fmt: skip
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The event stream",
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    }
}


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` (the route's documented media type)."""

    media_type = "text/event-stream"


def _frame(
    event: str | None = None, data: dict[str, Any] | None = None, id_: int | None = None
) -> bytes:
    return format_sse_event(
        event=event,
        data_str=None if data is None else json.dumps(data, separators=(",", ":")),
        id=None if id_ is None else str(id_),
    )


async def _event_stream(
    hub: EventHub, subscription: Subscription, keepalive: float
) -> AsyncIterator[bytes]:
    """Replay, then live events; ends when the client is dropped or its session deleted.

    Served by a plain StreamingResponse (not FastAPI's SSE pipeline, whose buffers would
    hide a client that stopped reading, and which fails on a disconnect mid-item).
    """
    try:
        yield b": podgate events\n\n"
        if subscription.gap is not None:
            last, first = subscription.gap
            yield _frame(
                "resync",
                {
                    "last_event_id": last,
                    "first_available_id": first,
                    "detail": "events after last_event_id are no longer buffered: "
                    "re-read GET /sessions",
                },
            )
        for event in subscription.backlog:
            yield _frame(event.type, event.data, event.id)
            if subscription.session_id is not None and event.type == "deleted":
                return
        while not subscription.dropped:
            try:
                event = await asyncio.wait_for(subscription.queue.get(), keepalive)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if subscription.closing:
                return  # the server is stopping; the client resumes with Last-Event-ID
            yield _frame(event.type, event.data, event.id)
            if subscription.session_id is not None and event.type == "deleted":
                return
        yield _frame(
            "dropped",
            {
                "detail": f"more than {hub.queue_size} events unread: reconnect with "
                "Last-Event-ID to resume"
            },
        )
    finally:
        hub.unsubscribe(subscription)


class EventStreams:
    """What both event routes take (a dependency): the hub, the limits, the caller and
    where to resume; ``open`` answers with the stream."""

    def __init__(
        self,
        supervisor: SupervisorDep,
        settings: SettingsDep,
        caller: CallerDep,
        last_event_id: LastEventIdHeader = None,
        last_event_id_query: LastEventIdQuery = None,
    ) -> None:
        self.hub = supervisor.events
        self.settings = settings
        self.caller = caller
        self.last_event_id = last_event_id if last_event_id is not None else last_event_id_query

    def open(self, session_id: str | None) -> EventStreamResponse:
        """The events of ``session_id`` (None: of every session the caller may see)."""
        hub, settings, caller = self.hub, self.settings, self.caller
        if hub.subscribers >= settings.max_event_subscribers:
            raise ProblemError(
                429,
                f"{hub.subscribers} event streams are open, the most allowed "
                "(--max-event-subscribers): close one, or try again later",
                {"Retry-After": "5"},
            )
        # Subscribed before the answer starts: nothing published from now on is missed.
        owner = None if caller.sees_all else caller.user
        subscription = hub.subscribe(session_id, self.last_event_id, owner)
        keepalive = settings.sse_keepalive_seconds
        return EventStreamResponse(
            _event_stream(hub, subscription, keepalive),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            # Also when the stream never started (a client gone at once).
            background=BackgroundTask(hub.unsubscribe, subscription),
        )


EventStreamsDep = Annotated[EventStreams, Depends()]


@router.get(
    "/events",
    response_class=EventStreamResponse,
    responses={**SSE_RESPONSE, **problem_responses(*AUTH_PROBLEMS, 429)},
    summary="Live events of every session (Server-Sent Events)",
    description=EVENTS_DOC,
)
async def all_events(streams: EventStreamsDep) -> EventStreamResponse:
    return streams.open(None)


@router.get(
    "/sessions/{session_id}/events",
    response_class=EventStreamResponse,
    responses={**SSE_RESPONSE, **problem_responses(*AUTH_PROBLEMS, 404, 429)},
    summary="Live events of one session (Server-Sent Events)",
    description=EVENTS_DOC + "\n\nThe stream ends after the session's `deleted` event.",
)
async def session_events(session: SessionDep, streams: EventStreamsDep) -> EventStreamResponse:
    return streams.open(session.spec.id)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
        **problem_responses(*AUTH_PROBLEMS, 403),
    },
    summary="Prometheus metrics",
)
async def metrics(request: Request, caller: CallerDep) -> Response:
    """The text exposition of prometheus-client: per-session and per-port traffic,
    statuses, dial latency by transport, process metrics. Every session's series: for
    callers who see every session (members of `podgate:admin`, or no authentication)."""
    if not caller.sees_all:
        raise ProblemError(403, "the metrics cover every session: a podgate:admin token is needed")
    rendered = request.app.state.metrics.render()
    return Response(rendered, media_type=CONTENT_TYPE)


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz(supervisor: SupervisorDep) -> Health:
    return Health(status="ok", sessions=len(supervisor.sessions))
