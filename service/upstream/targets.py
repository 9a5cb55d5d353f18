"""Session targets: what a user names (`pod/NAME`, `NAME`) and the pod it resolves to."""

from __future__ import annotations

from dataclasses import dataclass

#: Kinds kubectl accepts that a later version of podgate will resolve to a pod.
_LATER_KINDS = {
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
}
_POD_KINDS = {"pod", "pods", "po"}


class TargetError(ValueError):
    """A target that cannot be used; the message says why and what is accepted."""


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # "pod" for now
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def _valid_name(name: str) -> bool:
    # DNS-1123 subdomain, as Kubernetes requires for pod names.
    if not name or len(name) > 253 or name[0] in "-." or name[-1] in "-.":
        return False
    return all(c.isdigit() or ("a" <= c <= "z") or c in "-." for c in name)


def parse_target(text: str) -> Target:
    """`NAME` or `pod/NAME` (kubectl's TYPE/NAME form); other kinds are refused for now."""
    kind, slash, name = text.strip().rpartition("/")
    if not slash:
        kind, name = "pod", text.strip()
    kind = kind.lower()
    if kind in _LATER_KINDS:
        raise TargetError(
            f'target "{text}": {_LATER_KINDS[kind]} targets are not supported yet; '
            "use pod/NAME or NAME"
        )
    if kind not in _POD_KINDS:
        raise TargetError(f'target "{text}": unknown kind "{kind}"; use pod/NAME or NAME')
    if not _valid_name(name):
        raise TargetError(
            f'target "{text}": "{name}" is not a valid pod name '
            "(lowercase letters, digits, '-' and '.')"
        )
    return Target("pod", name)
