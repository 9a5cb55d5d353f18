"""Settings for `podgate serve`: one object, built once from flags and PODGATE_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'podgate.db'}"
