"""The local side every transport shares: one accepted TCP connection, and the traffic
counters of the port mapping that accepted it.

A `LocalConnection` is held unread until its link has opened what carries it upstream
(a stream pair, a channel WebSocket); then it talks to that carrier through `PairEnd`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from service.aio.readbuffer import shared_read_buffer
from service.aio.sockets import loop_sets_nodelay, reset, set_nodelay

__all__ = ["GATED_READ", "LOCAL_WRITE_HIGH_WATER", "LocalConnection", "PairEnd", "TrafficCounters"]

LOCAL_WRITE_HIGH_WATER = 1024 * 1024
GATED_READ = 4096  # what one read takes from a connection whose pair is not open yet


@dataclass(slots=True)
class TrafficCounters:
    """The numbers of one port mapping (a session's are their sum); plain ints, cheap on
    the data path. Each local connection holds its mapping's counters."""

    connections_total: int = 0
    connections_active: int = 0
    connection_errors: int = 0
    bytes_in: int = 0  # from the pod to local clients
    bytes_out: int = 0  # from local clients to the pod
    connections_refused: int = 0  # closed at once: over the session's connection limit

    def add(self, other: TrafficCounters) -> None:
        self.connections_total += other.connections_total
        self.connections_active += other.connections_active
        self.connection_errors += other.connection_errors
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.connections_refused += other.connections_refused


class PairEnd(Protocol):
    """What carries one local connection upstream, as the connection sees it."""

    def local_data(self, data: bytes) -> None: ...

    def local_eof(self) -> None: ...

    def local_lost(self) -> None: ...

    def block_upstream(self) -> None:
        """The local socket's write buffer is full: stop taking bytes for it."""

    def unblock_upstream(self) -> None: ...


class LocalConnection(asyncio.BufferedProtocol):
    """One accepted local TCP connection; it is read only once its pair is open.

    Buffered, into `shared_read_buffer()`, so that a connection still waiting for its pair
    reads a few bytes, not 256 KiB: uvloop starts reading right after connection_made
    (a pause there is undone), so one read happens before the gate can pause it, and
    1000 connections opened at once would hold 24-31 MiB that way.
    """

    def __init__(
        self,
        local_port: int,
        position: int,
        on_accept: Callable[[LocalConnection], None],
        counters: TrafficCounters | None = None,
        on_close: Callable[[LocalConnection], None] | None = None,
    ) -> None:
        self.local_port = local_port
        self.position = position  # which port mapping of the session accepted it
        self.remote_port = 0  # the pod port, set by the session when the pair is opened
        self.counters = counters if counters is not None else TrafficCounters()
        self._on_accept = on_accept
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.pair: PairEnd | None = None  # set by the link that carries it
        self.closed = False
        # Held unread until its pair is open upstream (spdystream drops DATA that comes
        # before the SYN_REPLY); uvloop ignores pause_reading() in connection_made, so
        # bytes that still arrive wait here.
        self.gated = True
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        # The per-connection setsockopt costs µs on the conn/s path where the loop did it.
        if not loop_sets_nodelay(asyncio.get_running_loop()):
            set_nodelay(transport)
        self.transport.set_write_buffer_limits(high=LOCAL_WRITE_HIGH_WATER)
        self.transport.pause_reading()
        self._on_accept(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = shared_read_buffer()
        return buffer[:GATED_READ] if self.gated else buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the buffer is shared, and the bytes may wait in a transport's queue.
        self.data_received(bytes(shared_read_buffer()[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.gated or self.pair is None:
            self._early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.pair.local_data(data)

    def eof_received(self) -> bool:
        if self.gated or self.pair is None:
            self._early_eof = True
            return True
        self.pair.local_eof()
        return True  # half-close: keep writing what the pod sends

    def open_gate(self) -> None:
        """The upstream accepted this connection's pair: deliver what waited, read on."""
        pair = self.pair
        if not self.gated or self.closed or pair is None:
            return
        self.gated = False
        early, self._early = self._early, []
        for chunk in early:
            pair.local_data(chunk)
        if self._early_eof:
            pair.local_eof()
        elif self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pair is not None:
            self.pair.local_lost()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        if self.pair is not None:
            self.pair.block_upstream()

    def resume_writing(self) -> None:
        if self.pair is not None:
            self.pair.unblock_upstream()

    def fileno(self) -> int:
        """The socket's descriptor number (-1 when unknown)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        return sock.fileno() if sock is not None else -1

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.writelines(chunks)

    def write_eof(self) -> None:
        """The pod side ended: half-close toward the local client."""
        transport = self.transport
        if transport is not None and not self.closed and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def reset(self) -> None:
        """Abort with a TCP RST, so that a client sees its transfer was cut, not ended."""
        if self.transport is not None and not self.closed:
            reset(self.transport)
