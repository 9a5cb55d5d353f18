"""Dialing the cluster: kubeconfig / in-cluster credentials, TLS, GET pod, resolving a
target (pod, service, deployment, …) to a pod, and the HTTP/1.1 SPDY upgrade. Imports only
``service.protocols``, ``service.ports`` and ``service.aio`` of the project."""

# _k8s_lazy first: registers kubernetes_asyncio without its ~800 model modules (+38 MB).
from . import (
    _k8s_lazy,  # noqa: F401  (isort: keep before .cluster)
    cluster,
    endpoint,
    errors,
    resolve,
    targets,
    upgrade,
    websocket,
)
from .cluster import *
from .endpoint import *
from .errors import *
from .resolve import *
from .targets import *
from .upgrade import *
from .websocket import *

# One list of public names: each submodule's own ``__all__``.
__all__ = [
    *cluster.__all__,
    *endpoint.__all__,
    *errors.__all__,
    *resolve.__all__,
    *targets.__all__,
    *upgrade.__all__,
    *websocket.__all__,
]
