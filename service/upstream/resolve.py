"""Resolve a session target (``pod/x``, ``svc/x``, ``deploy/x``, …) to one pod and numeric
container ports, the way ``kubectl port-forward`` does (protocols.md §4), read-only.

What kubectl does (k8s.io/kubectl ``cmd/portforward``, ``polymorphichelpers``,
``util/podutils``, ``util/service_port.go``, ``util/pod_port.go``) and what we copy:

- **pod**: the pod itself; it must be Running (:class:`PodNotRunning`). A named remote port
  (``8080:http``) is the container port with that name, else ``Pod 'x' does not have a
  named port 'http'``.
- **service**: the pod comes from ``spec.selector`` (a Service without one is refused). Each
  remote port is a *service* port, by number or by name, and becomes that port's
  ``targetPort``: a number (absent or 0 means the service port itself), or a name looked up
  in the chosen pod's container ports. A headless Service (``clusterIP: None``) is not
  translated. Unknown ports: ``Service x does not have a service port 80`` /
  ``Service 'x' does not have a named port 'http'``.
- **deployment / statefulset / replicaset**: ``spec.selector`` (matchLabels and
  matchExpressions) lists the pods.
- **Choosing the pod** (``GetFirstPod`` with ``sort.Reverse(podutils.ActivePods)``, as in
  kubectl 1.31 and later), best first: scheduled before unscheduled; Running before Unknown
  before anything else; Ready before not Ready; not being deleted before Terminating
  (``deletionTimestamp`` set), and among Terminating pods the one deleted last; ready for
  longer; fewer container restarts, then fewer sidecar (restartable init container)
  restarts; older. So in a rolling update the new pod is chosen, not the dying one.
- **UDP**: a remote port that is UDP only (declared UDP and not also TCP) is refused, as
  kubectl's ``checkUDPPortInService`` / ``checkUDPPortInPod`` do. For a Service both the
  service port and the container port it leads to are checked.

Where podgate differs: kubectl waits up to ``--pod-running-timeout`` for a pod to appear and
then fails if the one it picked is not Running; here resolution does not wait and raises the
retryable :class:`NoRunningPod` instead, so the caller's reconnect loop decides how long to
keep trying. Service and port problems are checked before a pod is chosen, so a wrong port
is reported at once even while no pod runs.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.ports import PortMapping

from .cluster import Cluster, PodInfo
from .errors import UpstreamError
from .targets import Target

__all__ = [
    "InvalidTarget",
    "NoRunningPod",
    "PortNotFound",
    "Resolution",
    "ResolveError",
    "TargetNotFound",
    "UnsupportedProtocol",
    "format_label_selector",
    "pod_rank",
    "resolve_target",
]


# --------------------------------------------------------------------------- errors


class ResolveError(UpstreamError):
    """The target could not be turned into a pod and ports. Not retryable unless a subclass
    says so: the same answer will come back until someone changes the cluster."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message, status=status, retryable=retryable)


class TargetNotFound(ResolveError):
    """The Service / Deployment / StatefulSet / ReplicaSet does not exist (404)."""

    def __init__(self, namespace: str, target: Target) -> None:
        super().__init__(
            f'{target.kind} "{target.name}" not found in namespace "{namespace}"', status=404
        )
        self.namespace = namespace
        self.target = target


class InvalidTarget(ResolveError):
    """The object exists but cannot lead to a pod (e.g. a Service without a selector)."""


class NoRunningPod(ResolveError):
    """No pod of the target is Running yet; resolving again later may succeed."""

    def __init__(self, namespace: str, target: Target, detail: str) -> None:
        super().__init__(
            f'no running pod for {target.kind} "{target.name}" in namespace "{namespace}": '
            f"{detail}",
            retryable=True,
        )
        self.namespace = namespace
        self.target = target


class PortNotFound(ResolveError):
    """A remote port the target does not have (a named container port, a service port)."""


class UnsupportedProtocol(ResolveError):
    """A remote port that is UDP only; port-forward carries TCP."""


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Resolution:
    """The pod to dial and the mappings with numeric container ports (``remote_name`` None)."""

    pod: PodInfo
    mappings: list[PortMapping]


async def resolve_target(
    cluster: Cluster,
    namespace: str,
    target: Target,
    mappings: Sequence[PortMapping],
) -> Resolution:
    """Resolve ``target`` in ``namespace`` to a Running pod and container ports.

    Raises :class:`~service.upstream.errors.UpstreamError` subclasses: :class:`PodNotFound` /
    :class:`TargetNotFound` (not retryable), :class:`PodNotRunning` / :class:`NoRunningPod`
    (retryable), :class:`PortNotFound`, :class:`UnsupportedProtocol`, :class:`InvalidTarget`
    (not retryable), or the cluster's own errors (connection, timeout, 403, …).
    """
    if target.kind == "pod":
        pod = await cluster.require_running(namespace, target.name)
        return Resolution(pod, [_pod_mapping(pod, m) for m in mappings])
    if target.kind == "service":
        return await _resolve_service(cluster, namespace, target, mappings)
    if target.kind in ("deployment", "statefulset", "replicaset"):
        workload = await cluster.get_workload(target.kind, namespace, target.name)
        if workload is None:
            raise TargetNotFound(namespace, target)
        selector = format_label_selector((workload.get("spec") or {}).get("selector"))
        if not selector:
            raise InvalidTarget(f'{target.kind} "{target.name}" has an empty selector')
        pod = await _choose_pod(cluster, namespace, target, selector)
        return Resolution(pod, [_pod_mapping(pod, m) for m in mappings])
    raise InvalidTarget(f"cannot resolve targets of kind {target.kind!r}")


# --------------------------------------------------------------------------- pods


def _pod_mapping(pod: PodInfo, mapping: PortMapping) -> PortMapping:
    """kubectl's checkUDPPortInPod + convertPodNamedPortToNumber for one mapping."""
    remote_text = mapping.remote_name or str(mapping.remote_port)
    number = mapping.remote_port
    if mapping.remote_name is not None:
        number = _container_port_by_name(pod, mapping.remote_name)
    _refuse_udp_only(pod.container_ports, "containerPort", number, remote_text, f'pod "{pod.name}"')
    return mapping.with_remote_port(number) if mapping.is_named else mapping


def _container_port_by_name(pod: PodInfo, name: str) -> int:
    for port in pod.container_ports:
        number = port.get("containerPort")
        if port.get("name") == name and isinstance(number, int):
            return number
    raise PortNotFound(f"Pod '{pod.name}' does not have a named port '{name}'")


def _refuse_udp_only(
    ports: Iterable[Mapping[str, Any]], field: str, number: int, remote_text: str, where: str
) -> None:
    protocols = {str(p.get("protocol") or "TCP").upper() for p in ports if p.get(field) == number}
    if "UDP" in protocols and "TCP" not in protocols:
        raise UnsupportedProtocol(
            f"UDP protocol is not supported for {remote_text}: port {number} of {where} "
            "is UDP only, and port-forward carries TCP"
        )


async def _choose_pod(cluster: Cluster, namespace: str, target: Target, selector: str) -> PodInfo:
    pods = await cluster.list_pods(namespace, selector)
    if not pods:
        raise NoRunningPod(namespace, target, f"no pod matches the selector {selector}")
    best = min(pods, key=pod_rank)
    info = PodInfo.from_json(best)
    if info.phase != "Running":
        raise NoRunningPod(
            namespace,
            target,
            f"{len(pods)} pod(s) match {selector}, none is Running "
            f'(best candidate "{info.name}" is {info.phase})',
        )
    return info


def _time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition
    return None


_PHASE_RANK = {"Running": 0, "Unknown": 1}  # anything else (Pending, Succeeded, …) is 2
_NEVER = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def pod_rank(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """Sort key of a raw pod, smallest = the pod kubectl would pick (module docstring)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    condition = _ready_condition(status)
    ready = condition is not None and condition.get("status") == "True"
    ready_since = _time(condition.get("lastTransitionTime")) if ready and condition else None
    deleted_at = _time(metadata.get("deletionTimestamp"))
    sidecars = {
        c.get("name")
        for c in spec.get("initContainers") or []
        if isinstance(c, dict) and c.get("restartPolicy") == "Always"
    }
    created = _time(metadata.get("creationTimestamp"))
    return (
        not spec.get("nodeName"),
        _PHASE_RANK.get(str(status.get("phase")), 2),
        not ready,
        deleted_at is not None,
        -deleted_at.timestamp() if deleted_at else 0.0,  # deleted last first
        ready_since or _NEVER,  # ready for longer first; no time counts as "just now"
        _max_restarts(status.get("containerStatuses"), None),
        _max_restarts(status.get("initContainerStatuses"), sidecars),
        created or _NEVER,
    )


def _max_restarts(statuses: Any, names: set[Any] | None) -> int:
    """The most restarts of the containers in ``statuses`` (only ``names``, if given)."""
    return max(
        (
            int(c.get("restartCount") or 0)
            for c in statuses or []
            if isinstance(c, dict) and (names is None or c.get("name") in names)
        ),
        default=0,
    )


def format_label_selector(selector: Any) -> str:
    """A metav1.LabelSelector (``matchLabels`` + ``matchExpressions``) as the query string
    the API server takes, e.g. ``app=web,tier in (a,b)``; "" for an empty/absent one."""
    if not isinstance(selector, dict):
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        if not isinstance(expression, dict):
            continue
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(sorted(str(v) for v in expression.get("values") or []))
        if operator == "In":
            parts.append(f"{key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif operator == "Exists":
            parts.append(str(key))
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise InvalidTarget(f"unsupported label selector operator {operator!r}")
    return ",".join(parts)


# --------------------------------------------------------------------------- services


async def _resolve_service(
    cluster: Cluster, namespace: str, target: Target, mappings: Sequence[PortMapping]
) -> Resolution:
    service = await cluster.get_service(namespace, target.name)
    if service is None:
        raise TargetNotFound(namespace, target)
    spec = service.get("spec") or {}
    labels = spec.get("selector") or {}
    if not isinstance(labels, dict) or not labels:
        raise InvalidTarget(
            f"invalid service '{target.name}': Service is defined without a selector"
        )
    ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    headless = spec.get("clusterIP") == "None"
    # Everything that does not depend on the pod first: a wrong port fails at once.
    wanted: list[tuple[PortMapping, int, dict[str, Any] | None]] = []
    for mapping in mappings:
        remote_text = mapping.remote_name or str(mapping.remote_port)
        number = mapping.remote_port
        if mapping.remote_name is not None:
            number = _service_port_by_name(target.name, ports, mapping.remote_name)
        _refuse_udp_only(ports, "port", number, remote_text, f'service "{target.name}"')
        port = next((p for p in ports if p.get("port") == number), None)
        if port is None and not headless:
            raise PortNotFound(f"Service {target.name} does not have a service port {number}")
        wanted.append((mapping, number, port))
    selector = format_label_selector({"matchLabels": labels})
    pod = await _choose_pod(cluster, namespace, target, selector)
    resolved = []
    for mapping, number, port in wanted:
        container = number if headless or port is None else _target_port(pod, port)
        remote_text = mapping.remote_name or str(mapping.remote_port)
        _refuse_udp_only(
            pod.container_ports,
            "containerPort",
            container,
            remote_text,
            f'pod "{pod.name}" (targetPort of service "{target.name}")',
        )
        # kubectl: a bare named port ("http") listens on the service port's number.
        local = number if mapping.is_named and ":" not in mapping.spec else mapping.local_port
        resolved.append(PortMapping(mapping.spec, local, container))
    return Resolution(pod, resolved)


def _service_port_by_name(service: str, ports: Sequence[Mapping[str, Any]], name: str) -> int:
    for port in ports:
        number = port.get("port")
        if port.get("name") == name and isinstance(number, int):
            return number
    raise PortNotFound(f"Service '{service}' does not have a named port '{name}'")


def _target_port(pod: PodInfo, port: Mapping[str, Any]) -> int:
    """kubectl's LookupContainerPortNumberByServicePort for one declared service port."""
    target = port.get("targetPort")
    if isinstance(target, str):
        return _container_port_by_name(pod, target)
    if isinstance(target, int) and target != 0:
        return target
    return int(port["port"])
