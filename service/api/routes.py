"""The `/sessions` routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from service.api.problems import ProblemError, problem_responses
from service.api.schemas import (
    Health,
    PortPublic,
    SessionCreate,
    SessionPublic,
    SessionsPublic,
)
from service.ports import (
    ListenAddressError,
    PortSpecError,
    format_forwarding_lines,
    parse_listen_addresses,
    parse_port_specs,
    require_local_port_for_names,
)
from service.runner.listeners import ListenError
from service.runner.session import ForwardSession
from service.runner.supervisor import CreateRequest, SessionConflict, Supervisor
from service.upstream.targets import TargetError, parse_target

router = APIRouter()



def get_supervisor(request: Request) -> Supervisor:
    supervisor: Supervisor = request.app.state.supervisor
    return supervisor


SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]


def to_public(session: ForwardSession) -> SessionPublic:
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
            )
        )
        shown = remote_port or mapping.remote_name or "?"
        forwarding += [format_forwarding_lines(a, local_port, shown) for a in addresses]
    counters = session.counters
    return SessionPublic(
        id=spec.id,
        name=spec.name,
        namespace=spec.namespace,
        target=spec.target,
        pod=session.pod,
        status=session.status,  # type: ignore[arg-type]
        transport=session.transport_name,
        last_error=session.last_error,
        created_at=spec.created_at,
        ready_since=session.ready_since,
        ports=ports,
        forwarding=forwarding,
        connections_active=counters.connections_active,
        connections_total=counters.connections_total,
        connection_errors=counters.connection_errors,
        bytes_in=counters.bytes_in,
        bytes_out=counters.bytes_out,
    )


def _create_request(body: SessionCreate) -> CreateRequest:
    try:
        target = parse_target(body.target)
        mappings = parse_port_specs(body.ports, allow_names=True)
        require_local_port_for_names(mappings)
        parse_listen_addresses(body.addresses)
    except (TargetError, PortSpecError, ListenAddressError) as exc:
        raise ProblemError(422, str(exc)) from None
    del target  # validated here; the runner resolves it to a pod
    return CreateRequest(
        namespace=body.namespace,
        target=body.target,
        mappings=tuple(mappings),
        addresses=tuple(body.addresses),
        name=body.name,
        context=body.context,
        transport=body.transport,
    )


@router.post(
    "/sessions",
    response_model=SessionPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": SessionPublic, "description": "A session with this name and spec exists"},
        **problem_responses(409, 422),
    },
    summary="Create a forward session",
)
async def create_session(
    body: SessionCreate, supervisor: SupervisorDep, response: Response
) -> SessionPublic:
    """Binds the local listeners (so `local_port` is known) before answering; the
    connection to the cluster is made in the background and shows in `status`."""
    request = _create_request(body)
    try:
        session, created = await supervisor.create(request)
    except ListenError as exc:
        raise ProblemError(409 if exc.port_in_use else 422, str(exc)) from None
    except SessionConflict as exc:
        raise ProblemError(409, str(exc)) from None
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/sessions/{session.spec.id}"
    return to_public(session)


@router.get("/sessions", response_model=SessionsPublic, summary="List forward sessions")
async def list_sessions(supervisor: SupervisorDep) -> SessionsPublic:
    sessions = [to_public(s) for s in supervisor.list()]
    return SessionsPublic(data=sessions, count=len(sessions))


def _unknown(session_id: str) -> ProblemError:
    return ProblemError(404, f'session "{session_id}" does not exist')


@router.get(
    "/sessions/{session_id}",
    response_model=SessionPublic,
    responses=problem_responses(404),
    summary="Get one forward session",
)
async def get_session(session_id: str, supervisor: SupervisorDep) -> SessionPublic:
    session = supervisor.get(session_id)
    if session is None:
        raise _unknown(session_id)
    return to_public(session)


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404),
    summary="Delete a forward session",
)
async def delete_session(session_id: str, supervisor: SupervisorDep) -> Response:
    """Closes the listeners and every in-flight connection, then removes the session."""
    if not await supervisor.delete(session_id):
        raise _unknown(session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz(supervisor: SupervisorDep) -> Health:
    return Health(status="ok", sessions=len(supervisor.sessions))
