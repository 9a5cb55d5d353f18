"""Dialling a pod's port, inside its network namespace when it has one.

Like containerd's port-forward, we connect to `localhost:PORT` over tcp4 and then tcp6
inside the pod's namespace. The socket is created by a worker thread that has entered
the namespace with setns(2) (which only affects that thread), then handed back to the
event loop: a socket stays in the namespace it was created in.

Other target kinds (the demo pod's, say) are handed in by whoever builds the agent, as
dial functions: this module knows only netns and host.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.agent.registry import PodEntry

CLONE_NEWNET = 0x40000000
DIAL_TIMEOUT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


class DialError(Exception):
    """The pod's port could not be reached; the message is what goes on the error stream."""


#: Dials ``port`` of a pod whose target is of a kind the dialer was given.
DialFunction = Callable[[PodEntry, int], Awaitable[socket.socket]]


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in_netns(path: str, family: socket.AddressFamily) -> socket.socket:
    """Create a TCP socket inside the network namespace at `path` (runs in a thread)."""
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return socket.socket(family, socket.SOCK_STREAM)
            finally:
                _setns(own)
        finally:
            os.close(own)
    finally:
        os.close(target)


def _go_style(exc: BaseException) -> str:
    """Render an OSError like Go's syscall errors (lowercase strerror)."""
    if isinstance(exc, TimeoutError):
        return "i/o timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


@dataclass(slots=True)
class PodDialer:
    timeout: float = DIAL_TIMEOUT
    #: Target kinds besides netns and host, each with the function that dials it.
    kinds: Mapping[str, DialFunction] = field(default_factory=dict)

    async def dial(self, pod: PodEntry, port: int) -> socket.socket:
        """A connected, non-blocking socket to `port` of `pod`, or DialError."""
        if pod.phase != "Running":
            # The kubelet's check: only a running pod's network can be entered.
            raise DialError(f"pod {pod.namespace}/{pod.name} is not running (phase {pod.phase})")
        kind = pod.target.kind
        if kind == "netns":
            return await self.dial_netns(pod.target.location, port)
        if kind == "host":
            return await self._dial_host(pod.target.location, port)
        if kind == "pod-ip":
            return await self.dial_addresses(list(pod.addresses), port)
        if kind == "none":
            raise DialError(pod.target.location)
        dial = self.kinds.get(kind)
        if dial is None:
            raise DialError(f"no dialer for pod target {pod.target}")
        return await dial(pod, port)

    async def _connect(self, sock: socket.socket, address: tuple[Any, ...]) -> socket.socket:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    async def dial_netns(self, path: str, port: int) -> socket.socket:
        """`localhost:PORT` inside the network namespace at ``path``, or DialError."""
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        for family, addr, net in (
            (socket.AF_INET, "127.0.0.1", "tcp4"),
            (socket.AF_INET6, "::1", "tcp6"),
        ):
            try:
                sock = await loop.run_in_executor(None, socket_in_netns, path, family)
            except OSError as exc:
                raise DialError(
                    f'failed to execute portforward in network namespace "{path}": '
                    f"cannot enter namespace: {_go_style(exc)}"
                ) from None
            shown = f"[{addr}]" if ":" in addr else addr
            try:
                return await self._connect(sock, (addr, port))
            except (OSError, TimeoutError) as exc:
                failures.append(f"dial {net} {shown}:{port}: connect: {_go_style(exc)}")
        # Same shape as containerd's message, so clients see familiar text.
        raise DialError(
            f'failed to execute portforward in network namespace "{path}": '
            f'failed to connect to localhost:{port} inside namespace "{os.path.basename(path)}", '
            f"IPv4: {failures[0]} IPv6 {failures[1]} "
        )

    async def dial_address(self, address: str, port: int) -> socket.socket:
        """One IP address (a Service's ClusterIP, say), or DialError."""
        return await self.dial_addresses([address], port)

    async def dial_addresses(self, addresses: list[str], port: int) -> socket.socket:
        """IP addresses in order (a pod's: IPv4 first, as the kubelet would dial them)."""
        failures = []
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            shown = f"[{address}]" if ":" in address else address
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                raise DialError(f"cannot create a socket: {_go_style(exc)}") from None
            try:
                return await self._connect(sock, (address, port))
            except (OSError, TimeoutError) as exc:
                net = "tcp6" if ":" in address else "tcp4"
                failures.append(f"dial {net} {shown}:{port}: connect: {_go_style(exc)}")
        raise DialError("; ".join(failures) or f"no address to dial port {port}")

    async def _dial_host(self, host: str, port: int) -> socket.socket:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise DialError(f"dial tcp {host}:{port}: lookup {host}: {_go_style(exc)}") from None
        last: BaseException = OSError(errno.ECONNREFUSED, "connection refused")
        step = "connect"  # the system call that failed last, named as Go's errors name it
        for family, type_, proto, _, address in infos:
            try:
                sock = socket.socket(family, type_, proto)
            except OSError as exc:  # out of descriptors (EMFILE) or buffers: this pair fails
                last, step = exc, "socket"
                continue
            try:
                return await self._connect(sock, address)
            except (OSError, TimeoutError) as exc:
                last, step = exc, "connect"
        net = "tcp6" if ":" in host else "tcp4"
        shown = f"[{host}]" if ":" in host else host
        raise DialError(f"dial {net} {shown}:{port}: {step}: {_go_style(last)}")
