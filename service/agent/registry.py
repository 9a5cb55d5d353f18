"""The agent's pod registry: which pods exist and where their network lives.

A pod is reached either inside a network namespace (`netns:/run/netns/NAME`,
`netns:/proc/PID/ns/net`), as the kubelet/CRI runtime does with nsenter, or on a
plain host address (`host:127.0.0.1`) for development.

A registry file (YAML or JSON) may also describe the objects port-forward clients resolve
to a pod (`svc/NAME`, `deploy/NAME`, …); the agent only serves them read-only::

    pods:
      - {namespace: default, name: web-1, target: "host:127.0.0.2",
         ports: [{name: http, containerPort: 8080}], labels: {app: web},
         phase: Running, ready: true}
    services:
      - {namespace: default, name: web, selector: {app: web},
         ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]}
    workloads:
      - {namespace: default, kind: Deployment, name: web, selector: {app: web}}
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml


class TargetLookup(Protocol):
    def entry(self, namespace: str, name: str) -> PodEntry | None: ...


class RegistryError(ValueError):
    """A pod definition that cannot be used; the message names the offending entry."""


@dataclass(frozen=True, slots=True)
class PodTarget:
    """Where a pod's ports are dialled: `kind` is "netns" (a namespace path) or "host"."""

    kind: str
    location: str

    @classmethod
    def parse(cls, text: str) -> PodTarget:
        kind, sep, location = text.partition(":")
        if not sep or not location:
            raise RegistryError(
                f"invalid pod target {text!r}: expected netns:/path/to/netns or host:ADDRESS"
            )
        if kind == "netns":
            if not location.startswith("/"):
                raise RegistryError(f"invalid pod target {text!r}: netns path must be absolute")
            return cls("netns", location)
        if kind == "host":
            return cls("host", location)
        if kind == "demo":
            return cls("demo", location)
        raise RegistryError(
            f"invalid pod target {text!r}: unknown kind {kind!r} (use netns:, host: or demo:)"
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    name: str | None = None
    protocol: str = "TCP"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"containerPort": self.container_port, "protocol": self.protocol}
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class PodEntry:
    namespace: str
    name: str
    target: PodTarget
    uid: str
    ports: tuple[ContainerPort, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    phase: str = "Running"
    ready: bool = True  # the Ready condition, reported only while phase is Running
    addresses: tuple[str, ...] = ()  # status.podIPs of a discovered pod, IPv4 first

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str  # a number, or the name of a container port
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """A Service: its selector and ports (all port-forward clients read of it)."""

    namespace: str
    name: str
    selector: Mapping[str, str]
    ports: tuple[ServicePort, ...] = ()
    cluster_ip: str | None = None  # "None" makes it headless

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


#: Workload kinds the registry accepts, with their resource (URL) names.
WORKLOAD_KINDS = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "ReplicaSet": "replicasets",
}


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    """An apps/v1 Deployment, StatefulSet or ReplicaSet: only its pod selector."""

    namespace: str
    kind: str  # a key of WORKLOAD_KINDS
    name: str
    selector: Mapping[str, str]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, WORKLOAD_KINDS[self.kind], self.name)


def _port_items(raw: Any, where: str, key: str, what: str) -> Iterator[tuple[Any, int]]:
    """Each mapping of a ``ports`` list with its checked ``key`` (a bare number is
    ``{key: number}``), one at a time: an entry is checked whole before the next."""
    if raw is None:
        return
    if not isinstance(raw, list):
        raise RegistryError(f"{where}: ports must be a list")
    for item in raw:
        if isinstance(item, int):
            item = {key: item}
        if not isinstance(item, dict):
            raise RegistryError(f"{where}: each {what} must be a number or a mapping")
        number = item.get(key, item.get("port"))
        if not isinstance(number, int) or not 0 < number < 65536:
            raise RegistryError(f"{where}: {key} must be a number in 1-65535")
        yield item, number


def _protocol(item: Any) -> str:
    return str(item.get("protocol", "TCP")).upper()


def _parse_ports(raw: Any, where: str) -> tuple[ContainerPort, ...]:
    return tuple(
        ContainerPort(number, item.get("name"), _protocol(item))
        for item, number in _port_items(raw, where, "containerPort", "port")
    )


def _entry_from_mapping(raw: Any, where: str) -> PodEntry:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: a pod must be a mapping")
    try:
        namespace = str(raw.get("namespace", "default"))
        name = str(raw["name"])
        target = PodTarget.parse(str(raw["target"]))
    except KeyError as exc:
        raise RegistryError(f"{where}: missing field {exc.args[0]!r}") from None
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict):
        raise RegistryError(f"{where}: labels must be a mapping")
    return PodEntry(
        namespace=namespace,
        name=name,
        target=target,
        uid=str(raw.get("uid") or uuid.uuid5(uuid.NAMESPACE_URL, f"podgate/{namespace}/{name}")),
        ports=_parse_ports(raw.get("ports"), where),
        labels={str(k): str(v) for k, v in labels.items()},
        phase=str(raw.get("phase", "Running")),
        ready=_flag(raw.get("ready", True), f"{where}: ready"),
    )


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RegistryError(f"{where} must be true or false")
    return value


def _labels(raw: Any, where: str, *, required: bool = False) -> dict[str, str]:
    if raw is None and not required:
        return {}
    if not isinstance(raw, dict) or (required and not raw):
        kind = "a non-empty mapping" if required else "a mapping"
        raise RegistryError(f"{where} must be {kind} of label names to values")
    return {str(k): str(v) for k, v in raw.items()}


def _name_fields(raw: Any, where: str, what: str) -> tuple[str, str]:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: a {what} must be a mapping")
    if "name" not in raw:
        raise RegistryError(f"{where}: missing field 'name'")
    return str(raw.get("namespace", "default")), str(raw["name"])


def _parse_service_ports(raw: Any, where: str) -> tuple[ServicePort, ...]:
    ports: list[ServicePort] = []
    for item, number in _port_items(raw, where, "port", "service port"):
        target = item.get("targetPort", number)
        valid_number = isinstance(target, int) and 0 < target < 65536
        if not (valid_number or (isinstance(target, str) and target)):
            raise RegistryError(f"{where}: targetPort must be a number in 1-65535 or a port name")
        name = item.get("name")
        ports.append(ServicePort(number, target, str(name) if name else None, _protocol(item)))
    return tuple(ports)


def _service_from_mapping(raw: Any, where: str) -> ServiceEntry:
    namespace, name = _name_fields(raw, where, "service")
    cluster_ip = raw.get("clusterIP")
    return ServiceEntry(
        namespace=namespace,
        name=name,
        selector=_labels(raw.get("selector"), f"{where}: selector"),
        ports=_parse_service_ports(raw.get("ports"), where),
        cluster_ip=str(cluster_ip) if cluster_ip is not None else None,
    )


def _workload_from_mapping(raw: Any, where: str) -> WorkloadEntry:
    namespace, name = _name_fields(raw, where, "workload")
    kind = raw.get("kind")
    if kind not in WORKLOAD_KINDS:
        raise RegistryError(f"{where}: kind must be one of {', '.join(WORKLOAD_KINDS)}")
    selector = _labels(raw.get("selector"), f"{where}: selector", required=True)
    return WorkloadEntry(namespace, str(kind), name, selector)


def parse_pod_flag(text: str) -> PodEntry:
    """`NAMESPACE/NAME=TARGET` (the `--pod` flag); `NAME=TARGET` means namespace default."""
    ref, sep, target = text.partition("=")
    if not sep:
        raise RegistryError(f"invalid --pod {text!r}: expected NAMESPACE/NAME=TARGET")
    namespace, slash, name = ref.rpartition("/")
    if not slash:
        namespace = "default"
    if not name or (slash and not namespace):
        raise RegistryError(f"invalid --pod {text!r}: expected NAMESPACE/NAME=TARGET")
    return _entry_from_mapping(
        {"namespace": namespace, "name": name, "target": target}, f"--pod {text!r}"
    )


@dataclass(frozen=True, slots=True)
class RegistryFile:
    pods: list[PodEntry]
    services: list[ServiceEntry]
    workloads: list[WorkloadEntry]


def load_pod_file(path: Path) -> list[PodEntry]:
    """A YAML or JSON file: `{"pods": [{namespace, name, target, ports, labels, uid}]}`."""
    return load_registry_file(path).pods


def load_registry_file(path: Path) -> RegistryFile:
    """A YAML or JSON file with `pods` and the optional `services` and `workloads` sections
    (module docstring); a bare list is a list of pods."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(f"cannot read pod file {str(path)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RegistryError(f"pod file {str(path)!r} is not valid YAML/JSON: {exc}") from None
    items = data.get("pods") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise RegistryError(f"pod file {str(path)!r}: expected a list under 'pods'")
    sections = data if isinstance(data, dict) else {}
    for section in ("services", "workloads"):
        if not isinstance(sections.get(section) or [], list):
            raise RegistryError(f"pod file {str(path)!r}: '{section}' must be a list")
    return RegistryFile(
        pods=[_entry_from_mapping(item, f"{path}: pods[{i}]") for i, item in enumerate(items)],
        services=[
            _service_from_mapping(item, f"{path}: services[{i}]")
            for i, item in enumerate(sections.get("services") or [])
        ],
        workloads=[
            _workload_from_mapping(item, f"{path}: workloads[{i}]")
            for i, item in enumerate(sections.get("workloads") or [])
        ],
    )


class PodRegistry:
    """The pods this agent serves, keyed by (namespace, name), plus the Services and
    workloads that select them (read-only, for target resolution)."""

    def __init__(
        self,
        pods: Iterable[PodEntry] = (),
        services: Iterable[ServiceEntry] = (),
        workloads: Iterable[WorkloadEntry] = (),
    ) -> None:
        self._pods: dict[tuple[str, str], PodEntry] = {}
        #: Makes entries of the targets that are not pods (set by the agent's start-up).
        self.targets: TargetLookup | None = None
        self._services: dict[tuple[str, str], ServiceEntry] = {}
        self._workloads: dict[tuple[str, str, str], WorkloadEntry] = {}
        for pod in pods:
            self.add(pod)
        for service in services:
            self.add_service(service)
        for workload in workloads:
            self.add_workload(workload)

    def add(self, pod: PodEntry) -> None:
        """Add a pod, or replace the one of that namespace and name."""
        self._pods[pod.key] = pod

    def remove(self, namespace: str, name: str) -> None:
        self._pods.pop((namespace, name), None)

    def all_pods(self) -> list[PodEntry]:
        return list(self._pods.values())

    def add_service(self, service: ServiceEntry) -> None:
        self._services[service.key] = service

    def add_workload(self, workload: WorkloadEntry) -> None:
        self._workloads[workload.key] = workload

    def service(self, namespace: str, name: str) -> ServiceEntry | None:
        return self._services.get((namespace, name))

    def workload(self, namespace: str, resource: str, name: str) -> WorkloadEntry | None:
        """``resource`` is the URL name: deployments, statefulsets or replicasets."""
        return self._workloads.get((namespace, resource, name))

    def matching(self, namespace: str, selector: Mapping[str, str]) -> list[PodEntry]:
        """The pods of ``namespace`` whose labels include every ``selector`` pair."""
        return [
            p
            for p in self.in_namespace(namespace)
            if all(p.labels.get(k) == v for k, v in selector.items())
        ]

    def get(self, namespace: str, name: str) -> PodEntry | None:
        """The pod; or for a ``kind:value`` name (a Service, an address, a host) what the
        agent's target policy makes of it (agent/targets.py)."""
        pod = self._pods.get((namespace, name))
        if pod is None and self.targets is not None:
            return self.targets.entry(namespace, name)
        return pod

    def in_namespace(self, namespace: str) -> list[PodEntry]:
        return [p for p in self._pods.values() if p.namespace == namespace]

    def __len__(self) -> int:
        return len(self._pods)

    @classmethod
    def from_sources(cls, flags: Sequence[str] = (), files: Sequence[Path] = ()) -> PodRegistry:
        registry = cls()
        for path in files:
            loaded = load_registry_file(path)
            for pod in loaded.pods:
                registry.add(pod)
            for service in loaded.services:
                registry.add_service(service)
            for workload in loaded.workloads:
                registry.add_workload(workload)
        for flag in flags:
            registry.add(parse_pod_flag(flag))
        return registry
