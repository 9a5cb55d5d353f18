"""Dialing the cluster: kubeconfig / in-cluster credentials, TLS, GET pod, resolving a
target (pod, service, deployment, …) to a pod, and the HTTP/1.1 SPDY upgrade. Imports only
``service.protocols`` and ``service.ports`` of the project."""

# Why first: registers kubernetes_asyncio without its ~800 generated model modules (+38 MB).
from . import _k8s_lazy  # noqa: F401  (isort: keep before .cluster)
from .cluster import DEFAULT_TIMEOUT, WATCH_TIMEOUT, Cluster, PodInfo, user_agent
from .endpoint import Endpoint, auth_headers, build_ssl_context, portforward_url
from .errors import (
    PodNotFound,
    PodNotRunning,
    UpstreamError,
    WatchExpired,
    WatchRefused,
    describe_http_error,
)
from .resolve import (
    InvalidTarget,
    NoRunningPod,
    PortNotFound,
    Resolution,
    ResolveError,
    TargetNotFound,
    UnsupportedProtocol,
    resolve_target,
)
from .targets import Target, TargetError, parse_target
from .upgrade import PORTFORWARD_PROTOCOL, SPDY_UPGRADE, UpgradedConnection, dial_spdy
from .websocket import TunnelRefused, WebSocketConnection, set_nodelay

__all__ = [
    "DEFAULT_TIMEOUT",
    "PORTFORWARD_PROTOCOL",
    "SPDY_UPGRADE",
    "WATCH_TIMEOUT",
    "Cluster",
    "Endpoint",
    "InvalidTarget",
    "NoRunningPod",
    "PodInfo",
    "PodNotFound",
    "PodNotRunning",
    "PortNotFound",
    "Resolution",
    "ResolveError",
    "Target",
    "TargetError",
    "TargetNotFound",
    "TunnelRefused",
    "UnsupportedProtocol",
    "UpgradedConnection",
    "UpstreamError",
    "WatchExpired",
    "WatchRefused",
    "WebSocketConnection",
    "auth_headers",
    "build_ssl_context",
    "describe_http_error",
    "dial_spdy",
    "parse_target",
    "portforward_url",
    "resolve_target",
    "set_nodelay",
    "user_agent",
]
