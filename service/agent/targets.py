"""Targets an agent dials besides pods (like krelay): a Service, an IP address, a host.

A client names one in place of a pod name, with a kind no pod name can contain:
``svc:NAME`` (the Service of the namespace, at its ClusterIP, or a ready endpoint of a
headless one), ``ip:ADDRESS``, ``host:NAME``. Each is dialled only when ``--allow-target``
allows it (default: pods only):

- ``svc``: Services (needs ``--cluster``: the agent reads them from the API server);
- a CIDR (``10.0.0.0/8``, ``fd00::/8``): IP addresses in it;
- a host name (``db.example.com``, or ``*.example.com`` for its subdomains): that host.

A refused or unknown target is a pod that cannot be dialled: the client gets the reason
on the error stream, in the kubelet's shape, as for a refused pod port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from service.agent.dialer import DialError, DialFunction
from service.agent.registry import PodEntry, PodTarget
from service.upstream import Cluster, UpstreamError

__all__ = ["TargetPolicy", "TargetPolicyError", "service_dialer"]

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetPolicyError(ValueError):
    """An ``--allow-target`` entry that is neither ``svc``, a CIDR nor a host name."""


class TargetPolicy:
    """What ``--allow-target`` allows, and the registry entries of allowed targets."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        self.services = False
        self.networks: list[_IPNetwork] = []
        self.hosts: list[str] = []
        for entry in allowed:
            text = entry.strip().lower()
            if text == "svc":
                self.services = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            name = text.removeprefix("*.")
            if not name or not all(part.isascii() and part for part in name.split(".")):
                raise TargetPolicyError(
                    f"--allow-target {entry!r}: expected svc, a CIDR or a host name"
                )
            self.hosts.append(text)

    def allows_ip(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in self.networks)

    def allows_host(self, name: str) -> bool:
        name = name.lower()
        for allowed in self.hosts:
            if allowed.startswith("*.") and name.endswith(allowed[1:]):
                return True
            if name == allowed:
                return True
        return False

    def entry(self, namespace: str, name: str) -> PodEntry | None:
        """The entry for a ``kind:value`` name (None for a plain pod name)."""
        kind, sep, value = name.partition(":")
        if not sep:
            return None
        refused = f"target {kind}/{value} is not allowed by this agent (--allow-target)"
        if kind == "svc":
            target = PodTarget("svc", f"{namespace}/{value}") if self.services else None
        elif kind == "ip":
            try:
                allowed = self.allows_ip(value)
            except ValueError:
                target, refused = None, f"{value!r} is not an IP address"
            else:
                target = PodTarget("host", value) if allowed else None
        elif kind == "host":
            target = PodTarget("host", value) if self.allows_host(value) else None
        else:
            target, refused = None, f"unknown target kind {kind!r} (use svc:, ip: or host:)"
        return PodEntry(
            namespace=namespace,
            name=name,
            target=target or PodTarget("none", refused),
            uid="",
        )


def service_dialer(
    cluster: Cluster | None, connect: Callable[[str, int], Awaitable[socket.socket]]
) -> DialFunction:
    """The dial function of ``svc`` targets: the Service's ClusterIP on the Service port,
    or for a headless one its first ready endpoint on the port that Service port names
    (``connect`` dials the address)."""

    async def dial(pod: PodEntry, port: int) -> socket.socket:
        namespace, _, name = pod.target.location.partition("/")
        if cluster is None:
            raise DialError(
                f"service {name}: this agent reads no Services (start it with --cluster)"
            )
        try:
            service = await cluster.get_service(namespace, name)
        except UpstreamError as exc:
            raise DialError(f"service {name}: {exc}") from None
        if service is None:
            raise DialError(f'services "{name}" not found')
        spec = service.get("spec") or {}
        address = str(spec.get("clusterIP") or "")
        if address and address != "None":
            return await connect(address, port)
        # Headless: no virtual IP, so dial an endpoint on the port it serves for `port`.
        named = [p for p in spec.get("ports") or [] if p.get("port") == port]
        if spec.get("ports") and not named:
            raise DialError(f"service {name} has no port {port}")
        address, endpoint_port = await _ready_endpoint(
            cluster, namespace, name, named[0].get("name") if named else None, port
        )
        return await connect(address, endpoint_port)

    return dial


async def _ready_endpoint(
    cluster: Cluster, namespace: str, name: str, port_name: str | None, port: int
) -> tuple[str, int]:
    try:
        endpoints = await cluster.get_endpoints(namespace, name)
    except UpstreamError as exc:
        raise DialError(f"service {name}: {exc}") from None
    for subset in (endpoints or {}).get("subsets") or []:
        ports = subset.get("ports") or []
        if port_name is not None or ports:
            # The Endpoints port of the same name ("" when the Service has one port).
            matching = [p for p in ports if (p.get("name") or None) == port_name]
            if not matching:
                continue
            port = int(matching[0]["port"])
        for address in subset.get("addresses") or []:
            if address.get("ip"):
                return str(address["ip"]), port
    raise DialError(f"service {name} has no ready endpoint")
