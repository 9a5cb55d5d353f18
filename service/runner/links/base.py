"""What every client transport is to its session: a `Link`, and the `LinkHooks` it reports
to. httpcore-style: the session knows this interface only; `links/__init__.py` maps each
`Transport` to the function that dials its link."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from service.model import Transport
from service.runner.local import LocalConnection

if TYPE_CHECKING:
    from service.upstream import Cluster

__all__ = ["Link", "LinkDialer", "LinkHooks", "RetiringLink"]


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
