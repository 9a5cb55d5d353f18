"""Port specs and listen addresses, parsed the way ``kubectl port-forward`` parses them.

Port specs (``[LOCAL_PORT:]REMOTE_PORT``)::

    5000        listen on 5000, forward to 5000
    8888:5000   listen on 8888, forward to 5000
    :5000       listen on a port the OS picks, forward to 5000
    0:5000      same as :5000

kubectl splits on ``:``, reads both sides with Go's ``strconv.ParseUint(s, 10, 16)`` (ASCII
digits only, leading zeros allowed, no sign, no spaces) and refuses a remote port of 0
(client-go ``tools/portforward.parsePorts``). Before that, kubectl's
``convertPodNamedPortToNumber`` treats any non-numeric remote side as a container port *name*.

Where podgate differs on purpose (kubectl's behaviour checked with kubectl v1.32):

- ``8888:5000:1`` is refused. kubectl's ``splitPort`` keeps only the first field when there
  are more than two, so it silently forwards 8888 -> 8888.
- Remote port names (``8080:http``) are refused for now with a clear message; kubectl looks
  them up in the pod. ``parse_port_spec(..., allow_names=True)`` already parses them into
  ``PortMapping.remote_name`` for the issue that adds name resolution.
- The same non-zero local port twice is refused up front. kubectl prints
  ``Unable to listen on port 8888`` for the second one and carries on without it.
- Empty specs, whitespace and signs get their own messages instead of kubectl's
  ``Pod 'x' does not have a named port ' 5000'``.

Listen addresses follow kubectl's ``--address``: ``localhost`` (the default) means 127.0.0.1
and ::1, either of which may fail to bind as long as one succeeds; any other entry must be an
IP literal, and failing to bind it is an error.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_LISTEN_ADDRESSES",
    "MAX_PORT",
    "ListenAddress",
    "ListenAddressError",
    "PortMapping",
    "PortSpecError",
    "format_forwarding_lines",
    "parse_listen_addresses",
    "parse_port_spec",
    "parse_port_specs",
    "require_local_port_for_names",
    "resolve_listen_addresses",
]

MAX_PORT = 65535
DEFAULT_LISTEN_ADDRESSES: tuple[str, ...] = ("localhost",)
LOCALHOST = "localhost"
LOCALHOST_IPS: tuple[str, ...] = ("127.0.0.1", "::1")

_USAGE = '[LOCAL_PORT:]REMOTE_PORT, e.g. "5000", "8888:5000" or ":5000"'
# Go's strconv.ParseUint(s, 10, 16) takes ASCII digits only; Python's int() would also take
# "+5", " 5", "5_000" and non-ASCII digits.
_DIGITS = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")
_WHITESPACE = re.compile(r"\s")
_DOTTED_QUAD = re.compile(r"[0-9]+(?:\.[0-9]+){3}")
_LEADING_ZERO = re.compile(r"(?:^|\.)0[0-9]")
# Kubernetes' IsValidPortName (an IANA service name): 1-15 of [a-z0-9-], at least one
# letter, no leading, trailing or doubled hyphen.
_PORT_NAME = re.compile(r"(?=.{1,15}\Z)(?=.*[a-z])[a-z0-9]+(?:-[a-z0-9]+)*")


def _quote(text: str) -> str:
    """Double-quote ``text`` with escapes, so spaces and control characters stay visible."""
    return json.dumps(text, ensure_ascii=False)


class PortSpecError(ValueError):
    """A port spec (or a list of them) that cannot be forwarded; the message says why.

    ``spec`` is the offending spec (the later one for a duplicate local port), or None when
    the list as a whole is wrong (empty).
    """

    def __init__(self, message: str, *, spec: str | None = None) -> None:
        super().__init__(message)
        self.spec = spec

    @classmethod
    def for_spec(cls, spec: str, reason: str) -> PortSpecError:
        return cls(f"invalid port spec {_quote(spec)}: {reason}", spec=spec)


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One parsed ``[LOCAL_PORT:]REMOTE_PORT``.

    ``local_port`` 0 means "let the OS pick a free port". ``remote_name`` is set (and
    ``remote_port`` is 0 until resolved) only for a named remote port, which only
    ``allow_names=True`` accepts.
    """

    spec: str
    local_port: int
    remote_port: int
    remote_name: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.local_port <= MAX_PORT:
            raise ValueError(f"local_port must be between 0 and {MAX_PORT}")
        if self.remote_name is None and not 1 <= self.remote_port <= MAX_PORT:
            raise ValueError(f"remote_port must be between 1 and {MAX_PORT}")
        if self.remote_name is not None and self.remote_port != 0:
            raise ValueError("remote_port must be 0 while remote_name is unresolved")

    @property
    def is_named(self) -> bool:
        return self.remote_name is not None

    def with_remote_port(self, remote_port: int) -> PortMapping:
        """Resolve a named remote port to its number.

        As in kubectl, a spec without a local part (``http``) then listens on that same
        number locally; ``:http`` and ``0:http`` keep the OS-picked local port.
        """
        local_port = remote_port if ":" not in self.spec else self.local_port
        return PortMapping(self.spec, local_port, remote_port)


def _parse_number(spec: str, role: str, text: str, *, minimum: int) -> int:
    if _DIGITS.fullmatch(text):
        value = int(text)
        if value > MAX_PORT:
            raise PortSpecError.for_spec(spec, f"{role} {text} is greater than {MAX_PORT}")
        if value < minimum:
            raise PortSpecError.for_spec(spec, f"{role} must be between {minimum} and {MAX_PORT}")
        return value
    if _NEGATIVE.fullmatch(text):
        raise PortSpecError.for_spec(
            spec, f"{role} {text} is negative; it must be between {minimum} and {MAX_PORT}"
        )
    raise PortSpecError.for_spec(spec, f"{role} {_quote(text)} is not a number")


def parse_port_spec(spec: str, *, allow_names: bool = False) -> PortMapping:
    """Parse one ``[LOCAL_PORT:]REMOTE_PORT``; see the module docstring for the grammar.

    With ``allow_names`` a non-numeric remote side that is a valid Kubernetes port name is
    returned as ``remote_name`` (``remote_port`` 0) for the caller to resolve.
    """
    if not isinstance(spec, str):
        raise TypeError(f"port spec must be a str, not {type(spec).__name__}")
    if spec == "":
        raise PortSpecError.for_spec(spec, f"it is empty; expected {_USAGE}")
    if _WHITESPACE.search(spec):
        raise PortSpecError.for_spec(spec, "it must not contain spaces or other whitespace")
    parts = spec.split(":")
    if len(parts) > 2:
        raise PortSpecError.for_spec(
            spec, 'expected [LOCAL_PORT:]REMOTE_PORT with at most one ":", e.g. "8888:5000"'
        )
    if len(parts) == 1:
        local_text, remote_text = None, parts[0]
    else:
        local_text, remote_text = parts[0] or "0", parts[1]
        if remote_text == "":
            raise PortSpecError.for_spec(spec, 'the remote port after ":" is missing')

    # kubectl reads the local side first; a single number is both, reported as the remote.
    local_port = 0
    if local_text is not None:
        local_port = _parse_number(spec, "local port", local_text, minimum=0)

    if not _DIGITS.fullmatch(remote_text) and _PORT_NAME.fullmatch(remote_text):
        if allow_names:
            return PortMapping(spec, local_port, 0, remote_name=remote_text)
        raise PortSpecError.for_spec(
            spec,
            f"remote port {_quote(remote_text)} is not a number"
            " (named ports are not supported yet)",
        )
    remote_port = _parse_number(spec, "remote port", remote_text, minimum=1)
    if local_text is None:
        local_port = remote_port
    return PortMapping(spec, local_port, remote_port)


def parse_port_specs(specs: Sequence[str], *, allow_names: bool = False) -> list[PortMapping]:
    """Parse a request's port specs in order; refuse an empty list and reused local ports.

    Several ``:5000`` / ``0:5000`` entries are fine: each gets its own OS-picked port.
    """
    if isinstance(specs, str):
        raise TypeError("port specs must be a sequence of str, not a single str")
    if len(specs) == 0:
        raise PortSpecError(f"invalid port specs: the list is empty; give at least one {_USAGE}")
    mappings: list[PortMapping] = []
    first_use: dict[int, PortMapping] = {}
    for spec in specs:
        mapping = parse_port_spec(spec, allow_names=allow_names)
        if mapping.local_port != 0:
            first = first_use.setdefault(mapping.local_port, mapping)
            if first is not mapping:
                raise PortSpecError(
                    f"invalid port specs: local port {mapping.local_port} is used twice"
                    f" ({_quote(first.spec)}, {_quote(spec)})",
                    spec=spec,
                )
        mappings.append(mapping)
    return mappings


def require_local_port_for_names(mappings: Sequence[PortMapping]) -> None:
    """podgate binds before it resolves the target, so a bare port name (`http`, whose
    local port kubectl takes from the resolved number) needs `LOCAL:http` or `:http`."""
    for mapping in mappings:
        if mapping.is_named and ":" not in mapping.spec:
            raise PortSpecError.for_spec(
                mapping.spec,
                f"a named remote port needs a local port here: use "
                f'"LOCAL:{mapping.remote_name}" or ":{mapping.remote_name}"',
            )


def format_forwarding_lines(address: str, local_port: int, remote_port: int | str) -> str:
    """kubectl's status line for one bound listener, without the trailing newline.

    ``Forwarding from 127.0.0.1:42390 -> 7000`` or ``Forwarding from [::1]:42390 -> 7000``
    (kubectl joins host and port with Go's ``net.JoinHostPort``).
    """
    host = f"[{address}]" if ":" in address else address
    return f"Forwarding from {host}:{local_port} -> {remote_port}"


class ListenAddressError(ValueError):
    """An ``--address`` / ``addresses`` entry that is neither an IP literal nor ``localhost``."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address to bind.

    ``required`` is False for the two addresses ``localhost`` expands to (kubectl fails only
    when none of them binds) and True for an IP given explicitly (kubectl fails when it
    cannot bind it), including one that ``localhost`` would also have produced.
    """

    host: str
    version: int
    required: bool


def parse_listen_addresses(addresses: Sequence[str]) -> list[ListenAddress]:
    """Expand ``localhost``, validate and canonicalise IPs, dedup, keep the given order.

    Differences from kubectl, on purpose: the order given is kept (kubectl sorts by string);
    IPs are compared in canonical form (``0:0::1`` is ``::1``, ``::ffff:10.0.0.1`` is
    ``10.0.0.1``, which kubectl also binds as IPv4); IPv4 with leading zeros (``010.0.0.1``)
    is refused as ambiguous where Go reads it as decimal.
    """
    if isinstance(addresses, str):
        raise TypeError("listen addresses must be a sequence of str, not a single str")
    if len(addresses) == 0:
        raise ListenAddressError(
            'no listen address given; use "localhost" or one or more IP addresses'
        )
    found: dict[str, ListenAddress] = {}
    for address in addresses:
        if address == LOCALHOST:
            for host in LOCALHOST_IPS:
                if host not in found:
                    found[host] = ListenAddress(host, 6 if ":" in host else 4, required=False)
            continue
        ip = _parse_ip(address)
        host = str(ip)
        found[host] = ListenAddress(host, ip.version, required=True)
    return list(found.values())


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        hint = ""
        if address.startswith("["):
            hint = " (write IPv6 addresses without brackets)"
        elif _DOTTED_QUAD.fullmatch(address) and _LEADING_ZERO.search(address):
            hint = " (remove the leading zeros: they are ambiguous)"
        raise ListenAddressError(
            f'invalid listen address {_quote(address)}: it must be an IP address or "localhost"'
            f"{hint}",
            address=address,
        ) from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise ListenAddressError(
                f"invalid listen address {_quote(address)}: IPv6 zone identifiers"
                " are not supported",
                address=address,
            )
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    return ip


def resolve_listen_addresses(addresses: Sequence[str]) -> list[str]:
    """The hosts to bind, in order: ``["localhost"]`` gives ``["127.0.0.1", "::1"]``.

    Raises ``ListenAddressError`` for anything but IP literals and ``localhost``. Use
    ``parse_listen_addresses`` to also learn which binds may fail.
    """
    return [address.host for address in parse_listen_addresses(addresses)]
