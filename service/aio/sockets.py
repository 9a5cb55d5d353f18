"""Socket options, in one place for the runner, the agent and upstream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

__all__ = ["loop_sets_nodelay", "reset", "set_nodelay"]

_LINGER_ZERO = struct.pack("ii", 1, 0)
_NODELAY_BY_LOOP: dict[type, bool] = {}


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on a TCP transport (a no-op for others and on failure)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def loop_sets_nodelay(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` sets TCP_NODELAY on every TCP transport itself (asyncio's selector
    loop and uvloop do): then accepted sockets need no setsockopt of ours."""
    kind = type(loop)
    known = _NODELAY_BY_LOOP.get(kind)
    if known is None:
        known = isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or (
            kind.__module__.startswith("uvloop")
        )
        _NODELAY_BY_LOOP[kind] = known
    return known


def reset(transport: asyncio.Transport) -> None:
    """Abort with a TCP RST (SO_LINGER 0), so the peer sees its transfer was cut, not ended."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()
