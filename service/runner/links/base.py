"""What every client transport is to its session: a `Link`, and the `LinkHooks` it reports
to. httpcore-style: the session knows this interface only; `links/__init__.py` maps each
`Transport` to the function that dials its link."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from service.model import Transport
from service.runner.local import LocalConnection

if TYPE_CHECKING:
    from service.upstream import Cluster

__all__ = ["Link", "LinkDialer", "LinkHooks", "LinkPair", "MultiplexedLink", "RetiringLink"]


class Link(Protocol):
    """What carries a session's local connections to one pod."""

    #: The transport negotiated (``auto`` is never one).
    kind: Transport
    #: Set once the link is lost or closed; it then takes no new pairs.
    closed: bool
    #: Why it was lost, for people ("" while it is not).
    lost_reason: str

    @property
    def usable(self) -> bool:
        """Whether a new local connection may be opened on it now."""

    def open_pair(self, local: LocalConnection) -> None:
        """Carry ``local`` upstream (it stays unread until the pair is open)."""

    def retire(self, reason: str) -> None:
        """Take no new connections (``usable`` is False from now on) and close once the
        open ones have ended: the pod is terminating, the agent shutting down."""

    def fail(self, reason: str) -> None:
        """Declare the link dead (its pod is gone, say): connections are reset."""

    def close(self) -> None:
        """End the link for good (the session stops): connections are closed."""


class RetiringLink:
    """``Link.retire`` for a link that carries several connections: it takes no new ones
    and closes itself once the last open one has ended (``_close_if_retired``)."""

    closed: bool
    retiring: bool
    lost_reason: str

    @property
    def usable(self) -> bool:
        return not self.closed and not self.retiring

    def retire(self, reason: str) -> None:
        if self.closed or self.retiring:
            return
        self.retiring = True
        self.lost_reason = reason
        self._close_if_retired()

    def _close_if_retired(self) -> None:
        """Call when a connection has ended: the last one of a retired link closes it."""
        if self.retiring and not self._carrying():
            self.close()

    def _carrying(self) -> bool:
        """Whether a connection is still open on the link."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class LinkPair:
    """A multiplexed link's pair as its local connection's ``PairEnd``: the connection's
    calls go to the link, with the pair."""

    __slots__ = ()
    link: Any

    def local_data(self, data: bytes) -> None:
        self.link.local_data(self, data)

    def local_eof(self) -> None:
        self.link.local_eof(self)

    def local_lost(self) -> None:
        self.link.local_lost(self)


class MultiplexedLink(RetiringLink):
    """What the SPDY and HTTP/2 links share: many pairs over one connection, frames
    flushed once per loop turn, and how the connection ends (lost: every pair reset;
    closed: every pair closed, a goodbye, the socket closed). Put it first among a link's
    bases, before its asyncio protocol class (whose no-op callbacks would hide these)."""

    pairs: dict[int, Any]  # by stream id: a pair is there under both its streams
    transport: asyncio.Transport | None
    keepalive: Any  # runner.keepalive.Keepalive
    _hooks: LinkHooks
    _flush_pending: bool

    def _open_pairs(self) -> list[Any]:
        return list(set(self.pairs.values()))

    def _carrying(self) -> bool:
        return bool(self.pairs)

    def _flush_soon(self) -> None:
        """Flush once the loop has run every callback of this I/O poll: frames of local
        events that arrive together (pairs opened, small DATA, FIN) share one write."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        raise NotImplementedError

    def eof_received(self) -> bool:
        self._lose("upstream closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"upstream connection lost: {exc}" if exc else "upstream closed the connection")

    def fail(self, reason: str) -> None:
        """Declare the link dead (e.g. its pod is gone): every connection is reset."""
        self._lose(reason)

    def _lose(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.lost_reason = reason
        self.keepalive.stop()
        self._stopped(reason)
        self._drop_pairs()
        if self.transport is not None:
            self.transport.abort()
        self._hooks.on_lost(self, reason)  # type: ignore[arg-type]

    def close(self) -> None:
        """Graceful end: every pair closed, the protocol's goodbye, the socket closed."""
        if self.closed:
            return
        self.retiring = False  # closing now: the last pair's end must not close again
        for pair in self._open_pairs():
            self._finish(pair, abort_local=True)
        self._goodbye()
        self._flush()
        self.closed = True
        self.keepalive.stop()
        self._stopped(None)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, pair: Any, *, abort_local: bool) -> None:
        raise NotImplementedError

    def _drop_pairs(self) -> None:
        """The connection is lost: end every pair with a reset (data may be missing)."""
        raise NotImplementedError

    def _goodbye(self) -> None:
        """The protocol's last words before a graceful close (GOAWAY)."""
        raise NotImplementedError

    def _stopped(self, lost: str | None) -> None:
        """Stop the link's own timers and waiters (``lost``: why, when it was lost)."""


@dataclass(frozen=True, slots=True)
class LinkHooks:
    """What a link reports to its session, and the session's settings it needs."""

    #: The link was lost (not called for ``close``).
    on_lost: Callable[[Link, str], None]
    #: The pod side reported an error for one connection (it is closed; others go on).
    on_connection_error: Callable[[LocalConnection, str], None]
    #: Seconds between keepalive pings (<= 0: none); 3 unanswered and the peer is dead.
    keepalive: float = 5.0
    #: ws-channel: after a local half-close, how long the pod may be quiet before the
    #: WebSocket is closed (the protocol has no half-close).
    linger: float = 0.5


#: Dials one transport to ``pod`` in ``namespace``: ``(cluster, namespace, pod, hooks)``.
LinkDialer = Callable[["Cluster", str, str, LinkHooks], Awaitable[Link]]
