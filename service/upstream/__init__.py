"""Dialing the cluster: kubeconfig / in-cluster credentials, TLS, GET pod and the
HTTP/1.1 SPDY upgrade. Imports only ``service.protocols`` of the project."""

from .cluster import DEFAULT_TIMEOUT, Cluster, PodInfo, user_agent
from .endpoint import Endpoint, auth_headers, build_ssl_context, portforward_url
from .errors import PodNotFound, PodNotRunning, UpstreamError
from .upgrade import PORTFORWARD_PROTOCOL, SPDY_UPGRADE, UpgradedConnection, dial_spdy

__all__ = [
    "DEFAULT_TIMEOUT",
    "PORTFORWARD_PROTOCOL",
    "SPDY_UPGRADE",
    "Cluster",
    "Endpoint",
    "PodInfo",
    "PodNotFound",
    "PodNotRunning",
    "UpgradedConnection",
    "UpstreamError",
    "auth_headers",
    "build_ssl_context",
    "dial_spdy",
    "portforward_url",
    "user_agent",
]
