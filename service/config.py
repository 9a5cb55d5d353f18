"""Settings for `podgate serve`: one object, built once from flags and PODGATE_* variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: A list setting that a PODGATE_* variable gives comma-separated.
CommaList = Annotated[list[str], NoDecode]


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "podgate"


class Settings(BaseSettings):
    """Everything the service needs; passed down explicitly, never read at import time."""

    model_config = SettingsConfigDict(env_prefix="PODGATE_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = default_data_dir()
    #: Any SQLAlchemy URL; empty means a SQLite file `podgate.db` under `data_dir`.
    database_url: str = ""
    #: kubeconfig path; empty means $KUBECONFIG, then ~/.kube/config, then in-cluster.
    kubeconfig: str = ""
    #: Default kubeconfig context for sessions that do not name one.
    context: str = ""
    #: Start an in-process agent with a demo pod `default/hello` and use it as the cluster.
    demo: bool = False
    #: How long a local connection may wait for the upstream connection before it is closed.
    connect_wait_seconds: float = 30.0
    #: Seconds between keepalive pings on each upstream connection (a session's default).
    #: PODGATE_PING_INTERVAL_SECONDS, its earlier name, is still read.
    keepalive_seconds: float = Field(
        default=5.0,
        validation_alias=AliasChoices(
            "keepalive_seconds", "PODGATE_KEEPALIVE_SECONDS", "PODGATE_PING_INTERVAL_SECONDS"
        ),
    )
    #: ws-channel: after a local half-close, how long the pod may be quiet before the
    #: WebSocket is closed (a session's default).
    channel_linger_seconds: float = 0.5
    #: Upper bound of the redial backoff.
    max_backoff_seconds: float = 30.0
    #: When the cluster refuses to watch a session's pod, GET it this often (<= 0: no
    #: pod watch at all; the keepalive still notices a dead link).
    pod_poll_interval_seconds: float = 2.0
    #: How long one pod watch request lasts before the server ends it and it is renewed.
    pod_watch_timeout_seconds: int = 300
    #: How often changed traffic counters are written to the store.
    counters_flush_seconds: float = 2.0
    #: Events kept for `Last-Event-ID` resumption.
    event_buffer_size: int = 1000
    #: Events a live-event client may have unread before it is dropped.
    event_queue_size: int = 256
    #: Seconds between keep-alive comments on an idle event stream.
    sse_keepalive_seconds: float = 15.0

    #: A podgate agent (URL) that sessions go through unless they say otherwise (`via`),
    #: e.g. the helper agent of a cluster podgate serve runs in.
    default_agent: str = ""
    #: The kubeconfig context with the default agent's credentials (CA, token or client
    #: certificate); empty: none.
    default_agent_context: str = ""
    #: The kubeconfig whose contexts describe agents (`via.context`, the default agent's);
    #: empty: the service's kubeconfig. In a cluster, serve itself uses in-cluster config
    #: and a mounted kubeconfig for the agent (deploy/kubernetes/agent/).
    agent_kubeconfig: str = ""

    # -------------------------------------------------------------- security (README)
    #: kube-apiserver's static token file (`token,user,uid[,"group1,group2"]`): requests
    #: need `Authorization: Bearer TOKEN`.
    token_file: Path | None = None
    #: `kubernetes`: bearer tokens checked with a TokenReview, sessions authorized with
    #: SubjectAccessReviews as the caller; `none`: only the token file, if any.
    auth: Literal["none", "kubernetes"] = "none"
    #: Host names the API answers to besides localhost, 127.0.0.1, [::1] and its own
    #: address (DNS rebinding: any other Host gets 421).
    allowed_hosts: CommaList = []
    #: Origins a browser may call the API from (CORS); none by default.
    cors_origins: CommaList = []
    #: Addresses beyond loopback that sessions may listen on (e.g. 0.0.0.0 in a container).
    listen_addresses: CommaList = []
    #: Whether sessions may listen on local ports below 1024.
    allow_privileged_ports: bool = False
    max_sessions: int = Field(default=1000, ge=1)
    #: Listeners of one session: port mappings x addresses.
    max_listeners_per_session: int = Field(default=64, ge=1)
    #: Open local connections of one session; more are accepted, closed and counted.
    max_connections_per_session: int = Field(default=1000, ge=1)
    max_event_subscribers: int = Field(default=100, ge=1)
    #: Request bodies larger than this are refused (413) before they are read in full.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    #: A connection whose request head has not arrived within this long is closed; a request
    #: body must arrive within this long of its head (else 408, and closed).
    header_timeout_seconds: float = Field(default=30.0, gt=0)
    #: An idle keep-alive connection is closed after this long.
    keepalive_timeout_seconds: float = Field(default=90.0, gt=0)

    @field_validator("allowed_hosts", "cors_origins", "listen_addresses", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def authenticates(self) -> bool:
        return self.token_file is not None or self.auth == "kubernetes"

    @property
    def on_loopback(self) -> bool:
        """Whether the API listens on a loopback address only."""
        return is_loopback(self.host)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'podgate.db'}"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or the name localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
