"""What the operator allows sessions to do (README "Security"): listen on loopback only
unless `--listen-address` names more, no local port below 1024 unless
`--allow-privileged-ports`, never multicast or broadcast, a bounded number of listeners."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from service.config import Settings
from service.ports import PortMapping

__all__ = ["PolicyError", "check_listeners"]


class PolicyError(Exception):
    """A session the policy does not allow; ``status`` is the HTTP answer (403, 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_listeners(
    settings: Settings, mappings: Sequence[PortMapping], addresses: Sequence[str]
) -> None:
    """Raise `PolicyError` unless every listener of a session is allowed."""
    listeners = len(mappings) * len(addresses)
    if listeners > settings.max_listeners_per_session:
        raise PolicyError(
            422,
            f"{len(mappings)} port(s) on {len(addresses)} address(es) are {listeners} "
            f"listeners; at most {settings.max_listeners_per_session} are allowed per session "
            "(--max-listeners-per-session)",
        )
    allowed = set(settings.listen_addresses)
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.is_multicast or str(ip) == "255.255.255.255":
            raise PolicyError(422, f"cannot listen on {address}: not a unicast address")
        if not ip.is_loopback and address not in allowed and str(ip) not in allowed:
            raise PolicyError(
                403,
                f"listening on {address} is not allowed: sessions listen on loopback unless "
                f"podgate is started with --listen-address {address}",
            )
    for mapping in mappings:
        if 0 < mapping.local_port < 1024 and not settings.allow_privileged_ports:
            raise PolicyError(
                403,
                f"local port {mapping.local_port} is below 1024: podgate must be started with "
                "--allow-privileged-ports to listen on it",
            )
