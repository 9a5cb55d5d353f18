"""The API's request and response shapes (the contract other software codes against)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.model import SessionStatus, Transport

_TEN_YEARS = 10 * 365 * 86400


def _seconds(floor: float, ceiling: float, description: str) -> Any:
    """An optional duration in seconds, from ``floor`` to ``ceiling``; null by default."""
    return Field(default=None, ge=floor, le=ceiling, description=description)


class ReconnectPolicy(BaseModel):
    """What happens when the connection to the cluster drops or cannot be made."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True,
        description="Re-dial after a drop. `false`: the first failure (a dial that fails or "
        "a connection that drops) makes the session `failed`.",
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Consecutive failed dials before the session is `failed`; null: no limit.",
    )
    max_backoff_seconds: float | None = _seconds(
        1,
        3600,
        "Cap of the exponential backoff (with jitter) between dials; "
        "null: the service's default (30 s).",
    )


class Via(BaseModel):
    """Go through a podgate agent instead of the cluster's API server and kubelets."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="The agent's URL (`https://` with TLS: ALPN h2, or `http://`: h2c).",
        examples=["https://podgate-agent.podgate.svc:10250"],
    )
    context: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="A kubeconfig context of the service describing the agent: its CA and "
        "a token or client certificate.",
    )


class SessionCreate(BaseModel):
    """A forward session to create; `ports` use `oc port-forward` syntax."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"namespace": "default", "target": "pod/hello", "ports": ["0:8080"]},
            ]
        },
    )

    namespace: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Kubernetes namespace of the target.",
    )
    target: str = Field(
        min_length=1,
        max_length=300,
        description="`NAME`, `pod/NAME`, `svc/NAME`, `deploy/NAME`, `sts/NAME` or `rs/NAME`; "
        "through an agent also `ip/ADDRESS` and `host/NAME`.",
        examples=["pod/hello"],
    )
    ports: list[str] = Field(
        min_length=1,
        max_length=64,
        description="`5000`, `8888:5000`, `:5000` or `0:5000` (local port chosen by the OS); "
        "the remote side may be a port name (`8080:http`, `:http`).",
        examples=[["5000", "8888:5000", ":6000", "0:7000"]],
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$",
        description="Client-chosen unique name; POSTing the same name and spec again is a no-op.",
    )
    addresses: list[str] = Field(
        default_factory=lambda: ["localhost"],
        min_length=1,
        max_length=16,
        description="Local addresses to listen on; `localhost` means 127.0.0.1 and ::1.",
    )
    context: str | None = Field(
        default=None, min_length=1, max_length=253, description="kubeconfig context."
    )
    transport: Transport = Field(
        default=Transport.AUTO,
        description="Upstream transport: `auto` (WebSocket-tunnelled SPDY, falling back to "
        "SPDY/3.1 like kubectl), `spdy`, `websocket` (tunnel only), `ws-channel` (one "
        "v4.channel.k8s.io WebSocket per connection) or `h2` (HTTP/2, podgate agents only).",
    )
    reconnect: ReconnectPolicy | None = Field(
        default=None, description="Reconnect policy; null: enabled, unlimited, 30 s backoff cap."
    )
    keepalive_seconds: float | None = _seconds(
        1,
        3600,
        "Ping interval on the upstream connection; a peer that leaves 3 pings "
        "unanswered is dead and the session reconnects. Null: the service's default (5 s).",
    )
    connect_wait_seconds: float | None = _seconds(
        0,
        3600,
        "How long a local connection accepted while the session is not `ready` "
        "waits for it before being closed. Null: the service's default (30 s).",
    )
    ttl_seconds: float | None = _seconds(
        1,
        _TEN_YEARS,
        "Stop the session this long after its creation (it then reads `stopped`, "
        "listeners closed, until DELETE).",
    )
    idle_timeout_seconds: float | None = _seconds(
        1,
        _TEN_YEARS,
        "Stop the session once it has had no open local connection for this long.",
    )
    via: Via | None = Field(
        default=None,
        description="Through a podgate agent (a helper agent in the cluster): pods are "
        "dialled by the agent (transport `h2` unless another is given), and `svc/`, "
        "`ip/` and `host/` targets are dialled by the agent itself. Null: the service's "
        "default agent, if it has one, else the cluster.",
    )
    channel_linger_seconds: float | None = _seconds(
        0,
        3600,
        "`ws-channel` only (v4 channels have no half-close): after a local client "
        "half-closes, the WebSocket stays open while the pod sends and is closed once the pod "
        "has been quiet this long. Null: the service's default (0.5 s).",
    )


class Counters(BaseModel):
    connections_active: int
    connections_total: int
    connection_errors: int
    bytes_in: int = Field(description="Bytes from the pod to local clients.")
    bytes_out: int = Field(description="Bytes from local clients to the pod.")
    connections_refused: int = Field(
        description="Connections closed at once: the session was at its connection limit."
    )


class ReconnectPublic(BaseModel):
    enabled: bool
    max_attempts: int | None
    max_backoff_seconds: float


class PortPublic(BaseModel):
    spec: str = Field(examples=["0:7000"])
    local_port: int = Field(examples=[42390])
    remote_port: int = Field(
        examples=[7000], description="The pod port; 0 until a named port is resolved."
    )
    remote_name: str | None = Field(
        default=None, description="The port name given in the spec (`8080:http`), if any."
    )
    addresses: list[str] = Field(examples=[["127.0.0.1", "::1"]])
    counters: Counters = Field(description="The traffic of this port mapping.")


class SessionPublic(BaseModel):
    id: str
    name: str
    owner: str = Field(
        description="The user who created it (`--token-file`, `--auth kubernetes`); empty "
        "without authentication. Callers see their own sessions, `podgate:admin` all."
    )
    namespace: str
    target: str
    pod: str | None = Field(description="The pod the target resolved to, once known.")
    status: SessionStatus
    transport: Transport | None = Field(description="The negotiated transport, once connected.")
    last_error: str | None
    created_at: datetime
    ready_since: datetime | None
    ports: list[PortPublic]
    forwarding: list[str] = Field(
        description="The lines `oc port-forward` prints for these listeners.",
        examples=[
            ["Forwarding from 127.0.0.1:42390 -> 7000", "Forwarding from [::1]:42390 -> 7000"]
        ],
    )
    connections_active: int
    connections_total: int
    connection_errors: int
    bytes_in: int = Field(description="Bytes from the pod to local clients.")
    bytes_out: int = Field(description="Bytes from local clients to the pod.")
    connections_refused: int = Field(
        description="Connections closed at once: the session was at its connection limit."
    )
    reconnects: int = Field(description="Successful re-dials after the connection was lost.")
    reconnect: ReconnectPublic = Field(description="The effective reconnect policy.")
    keepalive_seconds: float
    connect_wait_seconds: float
    ttl_seconds: float | None
    idle_timeout_seconds: float | None
    channel_linger_seconds: float
    via: Via | None = Field(description="The podgate agent it goes through, if any.")
    expires_at: datetime | None = Field(description="When the TTL stops the session, if set.")


class SessionsPublic(BaseModel):
    data: list[SessionPublic]
    count: int


class Health(BaseModel):
    status: Literal["ok"]
    sessions: int


class Problem(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
