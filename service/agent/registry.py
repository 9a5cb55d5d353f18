"""The agent's pod registry: which pods exist and where their network lives.

A pod is reached either inside a network namespace (`netns:/run/netns/NAME`,
`netns:/proc/PID/ns/net`), as the kubelet/CRI runtime does with nsenter, or on a
plain host address (`host:127.0.0.1`) for development.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


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

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def _parse_ports(raw: Any, where: str) -> tuple[ContainerPort, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RegistryError(f"{where}: ports must be a list")
    ports: list[ContainerPort] = []
    for item in raw:
        if isinstance(item, int):
            item = {"containerPort": item}
        if not isinstance(item, dict):
            raise RegistryError(f"{where}: each port must be a number or a mapping")
        number = item.get("containerPort", item.get("port"))
        if not isinstance(number, int) or not 0 < number < 65536:
            raise RegistryError(f"{where}: containerPort must be a number in 1-65535")
        protocol = str(item.get("protocol", "TCP")).upper()
        ports.append(ContainerPort(number, item.get("name"), protocol))
    return tuple(ports)


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
    )


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


def load_pod_file(path: Path) -> list[PodEntry]:
    """A YAML or JSON file: `{"pods": [{namespace, name, target, ports, labels, uid}]}`."""
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
    return [_entry_from_mapping(item, f"{path}: pods[{i}]") for i, item in enumerate(items)]


class PodRegistry:
    """The pods this agent serves, keyed by (namespace, name)."""

    def __init__(self, pods: Iterable[PodEntry] = ()) -> None:
        self._pods: dict[tuple[str, str], PodEntry] = {}
        for pod in pods:
            self.add(pod)

    def add(self, pod: PodEntry) -> None:
        self._pods[pod.key] = pod

    def get(self, namespace: str, name: str) -> PodEntry | None:
        return self._pods.get((namespace, name))

    def in_namespace(self, namespace: str) -> list[PodEntry]:
        return [p for p in self._pods.values() if p.namespace == namespace]

    def __len__(self) -> int:
        return len(self._pods)

    @classmethod
    def from_sources(cls, flags: Sequence[str] = (), files: Sequence[Path] = ()) -> PodRegistry:
        registry = cls()
        for path in files:
            for pod in load_pod_file(path):
                registry.add(pod)
        for flag in flags:
            registry.add(parse_pod_flag(flag))
        return registry
