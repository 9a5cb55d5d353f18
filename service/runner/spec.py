"""What a session is asked to be: the request (as the API and the CLI take it), the spec
(immutable for the session's life) and its policy (its own settings, else the service's).

`build_request` is the one place where a target, port specs and listen addresses given by
a person are checked and turned into a `SessionRequest`; the API and `podgate forward`
both call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from service.model import Transport
from service.ports import (
    ListenAddressError,
    PortMapping,
    PortSpecError,
    parse_listen_addresses,
    parse_port_specs,
    require_local_port_for_names,
)
from service.upstream.targets import AGENT_KINDS, TargetError, parse_target

if TYPE_CHECKING:
    from service.config import Settings
    from service.store import SessionRecord

__all__ = [
    "OPTION_FIELDS",
    "RequestError",
    "SessionPolicy",
    "SessionRequest",
    "SessionSpec",
    "build_request",
    "normalize_options",
]

#: The per-session settings of a request, stored in `SessionRecord.options`.
OPTION_FIELDS = frozenset(
    {
        "reconnect",
        "keepalive_seconds",
        "connect_wait_seconds",
        "ttl_seconds",
        "idle_timeout_seconds",
        "channel_linger_seconds",
        "via",
    }
)


class RequestError(ValueError):
    """A target, port spec or listen address that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a client asked for; immutable for the session's life."""

    id: str
    name: str
    namespace: str
    target: str  # as given: NAME, pod/NAME, svc/NAME, deploy/NAME, ...
    mappings: tuple[PortMapping, ...]
    addresses: tuple[str, ...]  # resolved IPs (localhost → 127.0.0.1, ::1)
    optional_addresses: tuple[str, ...]  # may fail to bind alone (kubectl's localhost rule)
    context: str | None
    transport: Transport
    created_at: datetime
    owner: str = ""  # who created it ("" without authentication)
    #: A podgate agent to dial instead of the cluster: (URL, credentials context).
    via: tuple[str, str | None] | None = None


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """A checked request for a session, before it has an id."""

    namespace: str
    target: str
    mappings: tuple[PortMapping, ...]
    addresses: tuple[str, ...]  # as requested, e.g. ("localhost",)
    name: str | None = None
    context: str | None = None
    transport: Transport = Transport.AUTO
    #: Per-session settings (`OPTION_FIELDS`), in the shape of `normalize_options`.
    options: dict[str, Any] = field(default_factory=dict)
    owner: str = ""

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        """The addresses it will listen on (``localhost`` is 127.0.0.1 and ::1)."""
        return tuple(a.host for a in parse_listen_addresses(self.addresses))

    def spec(self, session_id: str, name: str, created_at: datetime) -> SessionSpec:
        listen = parse_listen_addresses(self.addresses)
        return SessionSpec(
            id=session_id,
            name=name,
            namespace=self.namespace,
            target=self.target,
            mappings=self.mappings,
            addresses=tuple(a.host for a in listen),
            optional_addresses=tuple(a.host for a in listen if not a.required),
            context=self.context,
            transport=self.transport,
            created_at=created_at,
            owner=self.owner,
            via=_via_pair(self.options.get("via")),
        )

    def same_as(self, record: SessionRecord) -> bool:
        """Whether an existing session was created from an equal request."""
        return (
            record.namespace == self.namespace
            and record.target == self.target
            and [m.spec for m in record.mappings] == [m.spec for m in self.mappings]
            and list(record.addresses) == list(self.addresses)
            and record.context == self.context
            and record.transport_requested == self.transport
            and normalize_options(record.options) == normalize_options(self.options)
        )


def build_request(
    namespace: str,
    target: str,
    ports: Sequence[str],
    addresses: Sequence[str] = ("localhost",),
    *,
    name: str | None = None,
    context: str | None = None,
    transport: Transport = Transport.AUTO,
    options: Mapping[str, Any] | None = None,
    owner: str = "",
) -> SessionRequest:
    """Check a request as a person wrote it; `RequestError` names what is wrong."""
    normalized = normalize_options(options)
    try:
        kind = parse_target(target).kind
        mappings = parse_port_specs(ports, allow_names=True)
        require_local_port_for_names(mappings)
        parse_listen_addresses(addresses)
    except (TargetError, PortSpecError, ListenAddressError) as exc:
        raise RequestError(str(exc)) from None
    if kind in ("ip", "host") and normalized["via"] is None:
        raise RequestError(f'target "{target}": {kind}/ targets go through a podgate agent (via)')
    if normalized["via"] is not None and kind in AGENT_KINDS:
        named = [m.spec for m in mappings if m.remote_name]
        if named:
            raise RequestError(
                f"the agent dials {target} itself: give its port as a number, not {named[0]}"
            )
    if normalized["via"] is not None and transport == Transport.AUTO:
        transport = Transport.H2  # podgate's own link is the fast path to an agent
    return SessionRequest(
        namespace=namespace,
        target=target,
        mappings=tuple(mappings),
        addresses=tuple(addresses),
        name=name,
        context=context,
        transport=Transport(transport),
        options=normalized,
        owner=owner,
    )


def normalize_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stored shape of a session's settings; None means "the service's default".

    ``{"reconnect": {"enabled", "max_attempts", "max_backoff_seconds"}, "keepalive_seconds",
    "connect_wait_seconds", "ttl_seconds", "idle_timeout_seconds", "channel_linger_seconds"}``
    (rows from before these settings existed have ``{}``: every default).
    """
    options = options or {}
    reconnect = options.get("reconnect") or {}
    return {
        "reconnect": {
            "enabled": bool(reconnect.get("enabled", True)),
            "max_attempts": reconnect.get("max_attempts"),
            "max_backoff_seconds": reconnect.get("max_backoff_seconds"),
        },
        "keepalive_seconds": options.get("keepalive_seconds"),
        "connect_wait_seconds": options.get("connect_wait_seconds"),
        "ttl_seconds": options.get("ttl_seconds"),
        "idle_timeout_seconds": options.get("idle_timeout_seconds"),
        "channel_linger_seconds": options.get("channel_linger_seconds"),
        "via": _normalize_via(options.get("via")),
    }


def _normalize_via(via: Any) -> dict[str, Any] | None:
    """``{"agent": URL, "context": NAME | None}`` or None (dial the cluster itself)."""
    if not via:
        return None
    return {"agent": str(via["agent"]).rstrip("/"), "context": via.get("context") or None}


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How a session behaves (per session: the POST body, else the service's defaults)."""

    reconnect: bool = True  # off: the first failure (dial or drop) makes the session failed
    max_attempts: int | None = None  # consecutive failed dials before failing; None: no limit
    max_backoff: float = 30.0  # cap of the redial backoff, seconds
    keepalive: float = 5.0  # ping interval; the peer is dead after 3 unanswered pings
    connect_wait: float = 30.0  # how long a connection accepted while not ready is held
    ttl: float | None = None  # stopped this long after creation
    idle_timeout: float | None = None  # stopped after this long without a local connection
    channel_linger: float = 0.5  # ws-channel: quiet time after a local half-close
    max_connections: int = 1000  # open local connections; more are closed and counted
    pod_poll_interval: float = 2.0  # GET pod period when the server refuses watches; <= 0: off
    pod_watch_timeout: int = 300  # seconds one pod watch request lasts before it is renewed

    @classmethod
    def of(cls, options: Mapping[str, Any] | None, settings: Settings) -> SessionPolicy:
        """A session's effective settings: its own, else the service's defaults."""
        stored = normalize_options(options)
        reconnect = stored["reconnect"]
        ttl, idle = stored["ttl_seconds"], stored["idle_timeout_seconds"]
        return cls(
            reconnect=reconnect["enabled"],
            max_attempts=reconnect["max_attempts"],
            max_backoff=_or(reconnect["max_backoff_seconds"], settings.max_backoff_seconds),
            keepalive=_or(stored["keepalive_seconds"], settings.keepalive_seconds),
            connect_wait=_or(stored["connect_wait_seconds"], settings.connect_wait_seconds),
            ttl=None if ttl is None else float(ttl),
            idle_timeout=None if idle is None else float(idle),
            channel_linger=_or(stored["channel_linger_seconds"], settings.channel_linger_seconds),
            pod_poll_interval=settings.pod_poll_interval_seconds,
            pod_watch_timeout=settings.pod_watch_timeout_seconds,
            max_connections=settings.max_connections_per_session,
        )


def _via_pair(via: dict[str, Any] | None) -> tuple[str, str | None] | None:
    return None if via is None else (via["agent"], via["context"])


def _or(value: Any, default: float) -> float:
    return default if value is None else float(value)
