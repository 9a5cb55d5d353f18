"""Binding a session's local listeners, atomically and on the same port for every address.

Port 0 is resolved by binding it and keeping that socket; the other addresses then bind
the number the kernel chose. Never bind-close-rebind: another process could take the
port in between (the race Headlamp has).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.ports import PortMapping

#: How often to retry when the kernel's choice for port 0 is taken on another address.
EPHEMERAL_ATTEMPTS = 16
LISTEN_BACKLOG = 1024


class ListenError(Exception):
    """Listeners could not be bound; `port_in_use` tells a busy port from other failures."""

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


@dataclass(slots=True)
class BoundMapping:
    """The sockets of one port mapping: one per address, all on `local_port`."""

    mapping: PortMapping
    local_port: int
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        return [s.getsockname()[0] for s in self.sockets]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def _listen_socket(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Same as Go's listeners (kubectl): allows rebinding a port in TIME_WAIT after restart.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_all(
    addresses: Sequence[str], requested: int, optional: set[str]
) -> tuple[int, list[socket.socket]]:
    """Bind every address on one port (`requested` 0: the first bind picks); all-or-nothing.

    An optional address may fail alone when it cannot be bound at all; a port in use there
    fails the whole mapping (port 0: the caller retries with another number).
    """
    sockets: list[socket.socket] = []
    failures: list[tuple[str, OSError]] = []
    port = requested
    try:
        for address in addresses:
            try:
                sock = _listen_socket(address, port)
            except OSError as exc:
                # A missing address family (no IPv6 here) may be skipped, as kubectl does;
                # a busy port may not: a client dialling it would reach another program.
                if address in optional and exc.errno != errno.EADDRINUSE:
                    failures.append((address, exc))
                    continue
                raise
            sockets.append(sock)
            port = sock.getsockname()[1]
        if not sockets:
            raise failures[0][1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return port, sockets


def bind_mapping(
    mapping: PortMapping, addresses: Sequence[str], optional: Sequence[str] = ()
) -> BoundMapping:
    """Bind `mapping` on all `addresses` (kubectl: `localhost` addresses may fail singly).

    `mapping.local_port == 0` picks a free port that is free on every address.
    """
    optional_set = set(optional)
    attempts = EPHEMERAL_ATTEMPTS if mapping.local_port == 0 else 1
    last: OSError | None = None
    for _ in range(attempts):
        try:
            port, sockets = _bind_all(addresses, mapping.local_port, optional_set)
            return BoundMapping(mapping, port, sockets)
        except OSError as exc:
            last = exc
            if exc.errno != errno.EADDRINUSE:
                break
    assert last is not None
    shown = ", ".join(f"[{a}]" if ":" in a else a for a in addresses)
    if last.errno == errno.EADDRINUSE:
        raise ListenError(
            f"local port {mapping.local_port} is already in use on {shown} "
            f'(port spec "{mapping.spec}"); choose another port or use ":{mapping.remote_port}"',
            port_in_use=True,
        )
    raise ListenError(
        f'cannot listen for port spec "{mapping.spec}" on {shown}: {last.strerror or last}'
    )


def bind_mappings(
    mappings: Sequence[PortMapping], addresses: Sequence[str], optional: Sequence[str] = ()
) -> list[BoundMapping]:
    """Bind every mapping, or none: on failure everything bound so far is closed."""
    bound: list[BoundMapping] = []
    try:
        for mapping in mappings:
            bound.append(bind_mapping(mapping, addresses, optional))
    except BaseException:
        for item in bound:
            item.close()
        raise
    return bound
