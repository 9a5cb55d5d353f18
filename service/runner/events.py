"""Live events for web frontends (`GET /events`, `GET /sessions/{id}/events`).

Every event gets an increasing integer id. The last `capacity` events stay in a ring
buffer, so a client that reconnects with `Last-Event-ID` gets what it missed; when
some of that has already left the buffer it is told so (`Subscription.gap`) and should
re-read the sessions. Ids start at the wall clock in milliseconds, so they keep
increasing across service restarts and an id from before a restart is detected as a gap.

Publishing never waits: each subscriber has a bounded queue, and a subscriber whose
queue is full (a client that does not read) is dropped (`Subscription.dropped`); it can
reconnect with `Last-Event-ID` and resume from the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("podgate.events")

#: Event types, in the order a session usually produces them.
EVENT_TYPES = ("created", "status", "reconnect", "connection_error", "expired", "deleted")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    session_id: str | None
    data: dict[str, Any]
    owner: str = ""  # the session's owner: who may see the event


#: Put in a queue to wake its stream up (never sent).
_WAKE = Event(-1, "", None, {})


@dataclass(eq=False, slots=True)
class Subscription:
    """One client's view: replayed `backlog` first, then live events from `queue`."""

    session_id: str | None
    queue: asyncio.Queue[Event]
    #: Only the events of this owner's sessions (None: every session's).
    owner: str | None = None
    backlog: list[Event] = field(default_factory=list)
    #: (the client's Last-Event-ID, the oldest id still buffered) when events were lost.
    gap: tuple[int, int] | None = None
    dropped: bool = False
    #: The server is stopping: the stream ends, its client reconnects to the next one.
    closing: bool = False

    def wants(self, event: Event) -> bool:
        return (self.session_id is None or event.session_id == self.session_id) and (
            self.owner is None or event.owner == self.owner
        )


class EventHub:
    def __init__(
        self, capacity: int = 1000, queue_size: int = 256, first_id: int | None = None
    ) -> None:
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._next_id = int(time.time() * 1000) if first_id is None else first_id
        self._subscribers: set[Subscription] = set()
        self.queue_size = queue_size
        self.dropped_clients = 0

    @property
    def last_id(self) -> int:
        """The id of the newest event (one less than the next id)."""
        return self._next_id - 1

    def publish(
        self, type_: str, session_id: str | None, data: dict[str, Any], owner: str = ""
    ) -> Event:
        payload = {"type": type_, "session_id": session_id, **data}
        payload["time"] = datetime.now(UTC).isoformat()
        event = Event(self._next_id, type_, session_id, payload, owner)
        self._next_id += 1
        self._ring.append(event)
        for subscription in list(self._subscribers):
            if not subscription.wants(event):
                continue
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                # A client that does not read must not hold anything up: drop it.
                subscription.dropped = True
                self._subscribers.discard(subscription)
                self.dropped_clients += 1
                log.warning("dropped an event stream client: %d events unread", self.queue_size)
        return event

    def subscribe(
        self,
        session_id: str | None = None,
        last_event_id: int | None = None,
        owner: str | None = None,
    ) -> Subscription:
        """Register a client; with `last_event_id`, what it missed is in `backlog`; with
        `owner`, it gets only the events of that owner's sessions."""
        subscription = Subscription(session_id, asyncio.Queue(maxsize=self.queue_size), owner)
        if last_event_id is not None:
            oldest = self._ring[0].id if self._ring else self._next_id
            if last_event_id >= self._next_id:
                # Not an id of this run (a clock that went back): all we have is news.
                subscription.gap = (last_event_id, oldest)
                last_event_id = oldest - 1
            elif last_event_id + 1 < oldest:
                subscription.gap = (last_event_id, oldest)
            subscription.backlog = [
                e for e in self._ring if e.id > last_event_id and subscription.wants(e)
            ]
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every stream (the server is stopping): a graceful shutdown would otherwise
        wait for endless responses until its timeout."""
        for subscription in list(self._subscribers):
            subscription.closing = True
            with contextlib.suppress(asyncio.QueueFull):  # full: it wakes up anyway
                subscription.queue.put_nowait(_WAKE)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
