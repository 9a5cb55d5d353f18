"""Session targets: what a user names (kubectl's ``TYPE/NAME``) before it is resolved to a pod.

Accepted, as ``kubectl port-forward`` accepts them (kinds are case-insensitive)::

    NAME, pod/NAME, po/NAME, pods/NAME                 a pod
    svc/NAME, service/NAME, services/NAME              a Service (through its selector)
    deploy/NAME, deployment/NAME, deployments/NAME     a Deployment (apps/v1)
    sts/NAME, statefulset/NAME, statefulsets/NAME      a StatefulSet (apps/v1)
    rs/NAME, replicaset/NAME, replicasets/NAME         a ReplicaSet (apps/v1)
    ip/ADDRESS, host/NAME                              an address, through a podgate agent

A kind may carry its API group (and version) as kubectl accepts it: ``deployment.apps/NAME``,
``deployment.v1.apps/NAME``, ``service.v1./NAME``. :func:`service.upstream.resolve.resolve_target`
turns a :class:`Target` into the pod to dial.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["AGENT_KINDS", "KINDS", "Target", "TargetError", "parse_target"]

#: The canonical kinds, with the API group each lives in ("" is the core group).
KINDS: dict[str, str] = {
    "pod": "",
    "service": "",
    "deployment": "apps",
    "statefulset": "apps",
    "replicaset": "apps",
    "ip": "",
    "host": "",
}
#: Kinds a podgate agent dials itself when a session goes through one (``via``): a
#: Service (at its ClusterIP, like krelay), an IP address, a host name.
AGENT_KINDS = frozenset({"service", "ip", "host"})

_ALIASES: dict[str, str] = {
    "po": "pod",
    "pod": "pod",
    "pods": "pod",
    "svc": "service",
    "service": "service",
    "services": "service",
    "deploy": "deployment",
    "deployment": "deployment",
    "deployments": "deployment",
    "sts": "statefulset",
    "statefulset": "statefulset",
    "statefulsets": "statefulset",
    "rs": "replicaset",
    "replicaset": "replicaset",
    "replicasets": "replicaset",
    "ip": "ip",
    "host": "host",
}

_ACCEPTED = (
    "NAME, pod/NAME, svc/NAME (service), deploy/NAME (deployment), "
    "sts/NAME (statefulset), rs/NAME (replicaset), or through an agent ip/ADDRESS or host/NAME"
)


class TargetError(ValueError):
    """A target that cannot be used; the message says why and what is accepted."""


@dataclass(frozen=True, slots=True)
class Target:
    """``kind`` is one of :data:`KINDS` (``"pod"``, ``"service"``, ``"deployment"``, …)."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def is_pod(self) -> bool:
        return self.kind == "pod"

    @property
    def agent_name(self) -> str:
        """How a podgate agent is asked for it in place of a pod name (``svc:web``,
        ``ip:10.0.0.7``, ``host:db.example.com``; a ':' is in no pod name)."""
        return f"{'svc' if self.kind == 'service' else self.kind}:{self.name}"


def _valid_name(name: str) -> bool:
    # DNS-1123 subdomain, as Kubernetes requires for the names of all these kinds.
    if not name or len(name) > 253 or name[0] in "-." or name[-1] in "-.":
        return False
    # ASCII only: str.isdigit() would take "١٢٣" (Arabic-Indic digits) and "²".
    return all(("0" <= c <= "9") or ("a" <= c <= "z") or c in "-." for c in name)


def _kind(text: str, written: str) -> str:
    resource, dot, group = written.lower().partition(".")
    version, dot2, rest = group.partition(".")
    if dot2 and re.fullmatch(r"v[0-9]+(?:(?:alpha|beta)[0-9]+)?", version):
        group = rest  # RESOURCE.VERSION.GROUP, as kubectl's ParseResourceArg reads it
    kind = _ALIASES.get(resource)
    if kind is None:
        raise TargetError(f'target "{text}": unknown kind "{written}"; use {_ACCEPTED}')
    if dot and group != KINDS[kind]:
        where = f'the "{KINDS[kind]}" API group' if KINDS[kind] else "the core API group"
        raise TargetError(f'target "{text}": {kind} is in {where}, not "{group}"; use {_ACCEPTED}')
    return kind


def parse_target(text: str) -> Target:
    """Parse ``NAME`` or ``TYPE/NAME`` (see the module docstring for the kinds)."""
    stripped = text.strip()
    if stripped != text:
        raise TargetError(f"target {text!r}: remove the whitespace around it")
    written, slash, name = stripped.partition("/")
    if not slash:
        kind, name = "pod", stripped
    elif not written:
        raise TargetError(f'target "{text}": the kind before "/" is missing; use {_ACCEPTED}')
    else:
        kind = _kind(text, written)
    if "/" in name:
        raise TargetError(f'target "{text}": expected TYPE/NAME with one "/"; use {_ACCEPTED}')
    if kind == "ip":
        try:
            return Target(kind, str(ipaddress.ip_address(name)))
        except ValueError:
            raise TargetError(f'target "{text}": "{name}" is not an IP address') from None
    if not _valid_name(name):
        raise TargetError(
            f'target "{text}": "{name}" is not a valid {kind} name '
            "(lowercase letters, digits, '-' and '.')"
        )
    return Target(kind, name)
