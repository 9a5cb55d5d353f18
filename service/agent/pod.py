"""The pod end of every forwarded connection, whatever the client's transport.

``PodConnection`` is the asyncio protocol on a socket the dialer opened to a pod's port.
It bounds what waits to be written to the pod and tells its owner, the session of one
client connection, what happens there (``PodOwner``: data, EOF, lost, drained).

``PodForwarder`` is what the sessions (SPDY and tunnelled SPDY, v4 channels, HTTP/2)
share around it: each forwarded connection (a ``PodEnd``) is dialled in a named task
the session owns, and a failure there always reaches the client as that connection's
error. Back-pressure (protocols.md §1.8):

* while a pod socket holds more than its write bound, or a connection still being
  dialled holds more than ``PENDING_LIMIT`` of the client's bytes, the client connection
  is not read (a ``ReadGate``): the only back-pressure a Go peer understands. HTTP/2
  leaves the client's reads alone and holds back the stream's window instead;
* while the client connection cannot take more, no pod socket is read.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from service.agent.dialer import DialError, PodDialer
from service.agent.registry import PodEntry
from service.aio.flow import ReadGate
from service.aio.tasks import TaskSet

#: What may wait to be written to one pod socket before the client is no longer read.
POD_WRITE_HIGH_WATER = 1024 * 1024
#: What the client may send for a connection whose pod is still being dialled.
PENDING_LIMIT = 1024 * 1024


class ClientLink(Protocol):
    """What a session needs of the client connection (an ``asyncio.Transport`` fits)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


@dataclass(eq=False, slots=True, kw_only=True)
class PodEnd:
    """One forwarded connection as its pod sees it; each session adds its own fields."""

    port: int = 0
    pod: PodConnection[Any] | None = None  # set once the dial has connected
    pending: list[bytes | memoryview] = field(default_factory=list)  # the client's, until then
    pending_size: int = 0
    client_fin: bool = False  # the client half-closed: shutdown(SHUT_WR) once connected
    pod_eof: bool = False
    done: bool = False


E = TypeVar("E", bound=PodEnd)
E_contra = TypeVar("E_contra", bound=PodEnd, contravariant=True)


class PodOwner(Protocol[E_contra]):
    """What a pod connection calls back on its session, each with the connection's end."""

    client_write_paused: bool  # then a new pod socket starts unread

    def pod_data(self, end: E_contra, data: bytes) -> None: ...

    def pod_eof(self, end: E_contra) -> None: ...

    def pod_lost(self, end: E_contra, exc: Exception | None) -> None: ...

    def pod_drained(self, end: E_contra) -> None: ...


class PodConnection(asyncio.Protocol, Generic[E]):
    """The protocol on one pod socket: a write bound, half-close, and callbacks to its owner.

    ``holds`` is the client connection's read gate, held while this socket is over its
    write bound (None: the owner only hears ``pod_drained``). ``half_close`` False means
    the pod's EOF ends the socket (v4 channels have no half-close).
    """

    __slots__ = (
        "_half_close",
        "_holds",
        "_lost",
        "_write_limit",
        "end",
        "owner",
        "transport",
        "write_paused",
    )

    transport: asyncio.Transport  # from connection_made, before the owner gets the connection

    def __init__(
        self,
        owner: PodOwner[E],
        end: E,
        *,
        write_limit: int = POD_WRITE_HIGH_WATER,
        half_close: bool = True,
        holds: ReadGate | None = None,
    ) -> None:
        self.owner = owner
        self.end = end
        self.write_paused = False
        self._write_limit = write_limit
        self._half_close = half_close
        self._holds = holds
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self._write_limit)
        if self.owner.client_write_paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.owner.pod_data(self.end, data)

    def eof_received(self) -> bool:
        self.owner.pod_eof(self.end)
        return self._half_close  # True keeps our write side open: a real half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return  # already reported by write_eof
        self._lost = True
        if self._holds is not None:
            self._holds.unblock(self)
        self.owner.pod_lost(self.end, exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._holds is not None:
            self._holds.block(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._holds is not None:
            self._holds.unblock(self)
        self.owner.pod_drained(self.end)

    def write_eof(self) -> None:
        """The client's half-close becomes shutdown(SHUT_WR) on the pod socket."""
        if not self.transport.can_write_eof():
            return
        try:
            self.transport.write_eof()
        except OSError as exc:
            # A pod socket that is already dead (the pod closed it and our last write drew
            # an RST) fails shutdown(2) with ENOTCONN: this connection is lost, and the
            # error must not escape into the client connection's callback that got here.
            self.connection_lost(exc)


def cause_text(exc: BaseException) -> str:
    """An exception as the cause in an error text (never empty)."""
    return str(exc) or type(exc).__name__


class PodForwarder(abc.ABC, Generic[E]):
    """The pod side of one client session; see the module docstring.

    A session says how to find its ends (``_ends``), which pod an end dials
    (``_pod_entry``), what a failed dial looks like on its wire (``_dial_failed``) and
    what a pod connection's events mean (``PodOwner``).
    """

    def __init__(self, transport: ClientLink, dialer: PodDialer) -> None:
        self.transport = transport
        self.dialer = dialer
        # A ClientLink pauses and resumes reading like the transport it stands for.
        self.client_reads = ReadGate(cast(asyncio.Transport, transport))
        self.client_write_paused = False
        self.tasks = TaskSet()
        self._closed = False
        self._drained = asyncio.Event()

    @abc.abstractmethod
    def _ends(self) -> Collection[E]: ...

    @property
    def busy(self) -> bool:
        """Whether any forwarded connection is open (a streaming connection is idle only
        without one)."""
        return bool(self._ends())

    @abc.abstractmethod
    def _pod_entry(self, end: E) -> PodEntry:
        """The pod ``end`` dials (DialError if there is none)."""

    @abc.abstractmethod
    def _dial_failed(self, end: E, exc: Exception) -> None:
        """Report a dial that did not connect on the client's wire and end ``end``."""

    @abc.abstractmethod
    def pod_data(self, end: E, data: bytes) -> None: ...

    @abc.abstractmethod
    def pod_eof(self, end: E) -> None: ...

    @abc.abstractmethod
    def pod_lost(self, end: E, exc: Exception | None) -> None: ...

    def pod_drained(self, end: E) -> None:
        """Everything written to the pod reached its socket (the gate is already let go)."""

    def _new_pod(self, end: E) -> PodConnection[E]:
        return PodConnection(self, end, holds=self.client_reads)

    # ------------------------------------------------------------ client → pod

    def _hold(self, end: E, data: bytes) -> None:
        """Client bytes for a pod still being dialled wait, up to PENDING_LIMIT."""
        end.pending.append(data)
        end.pending_size += len(data)
        if end.pending_size > PENDING_LIMIT:
            self.client_reads.block(end)

    def _write_pending(self, end: E, pod: PodConnection[E]) -> None:
        if end.pending:
            pod.transport.writelines(end.pending)
            end.pending.clear()
            end.pending_size = 0

    # ------------------------------------------------------------ dialling

    def _start_dial(self, end: E, name: str) -> None:
        self.tasks.start(self._dial(end), name)

    async def _dial(self, end: E) -> None:
        """Connect ``end`` to its pod port; the session hears _pod_connected or _dial_failed."""
        try:
            pod = self._new_pod(end)
            sock = await self.dialer.dial(self._pod_entry(end), end.port)
            try:
                await asyncio.get_running_loop().create_connection(lambda: pod, sock=sock)
            except OSError:
                sock.close()
                raise
            if end.done:  # the client gave up on it (or the session closed) meanwhile
                pod.transport.abort()
                return
            self._pod_connected(end, pod)
        except (DialError, OSError) as exc:
            self._dial_failed(end, exc)
        except Exception as exc:
            # Not a failure we know: the connection still gets its error and ends, and the
            # task fails, so that TaskSet logs it with the task's name.
            self._dial_failed(end, exc)
            raise

    def _pod_connected(self, end: E, pod: PodConnection[E]) -> None:
        """What the client sent during the dial goes first, then its half-close."""
        end.pod = pod
        self._write_pending(end, pod)
        self.client_reads.unblock(end)
        if end.client_fin:
            pod.write_eof()

    # ------------------------------------------------------------ pod → client

    def pause_writing(self) -> None:
        """The client connection cannot take more: no pod socket is read."""
        self.client_write_paused = True
        for end in self._ends():
            if end.pod is not None:
                end.pod.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_write_paused = False
        for end in list(self._ends()):
            self._resume_pod(end)

    def _resume_pod(self, end: E) -> None:
        if end.pod is not None and not end.pod_eof and not end.done:
            end.pod.transport.resume_reading()

    # ------------------------------------------------------------ endings

    def _forget(self, end: E) -> None:
        """Nothing more goes to or comes from ``end`` (its socket is the caller's to close)."""
        end.done = True
        end.pending.clear()
        self.client_reads.unblock(end)

    def _stop(self, *, graceful: bool = False) -> None:
        """The session ends: no dial goes on, every pod socket is closed or aborted."""
        self._closed = True
        self.client_reads.clear()  # the client connection is closing: no resume now
        for end in list(self._ends()):
            self._forget(end)
            if end.pod is not None:
                if graceful:
                    end.pod.transport.close()  # what we already accepted still reaches it
                else:
                    end.pod.transport.abort()
        self.tasks.cancel()

    async def wait_drained(self) -> None:
        await self._drained.wait()
