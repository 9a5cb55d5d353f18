"""Keepalive for an upstream link: a ping every `interval`, the peer dead after
`MAX_MISSES` unanswered ones. Shared by the SPDY and HTTP/2 links."""

from __future__ import annotations

from collections.abc import Callable

from service.aio.timer import Timer

MAX_MISSES = 3


class Keepalive:
    def __init__(
        self,
        interval: float,
        *,
        send_ping: Callable[[], None],
        on_dead: Callable[[], None],
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self.interval = interval
        self._send_ping = send_ping
        self._on_dead = on_dead
        # True while our own back-pressure keeps the peer's socket unread: answers cannot
        # reach us then, which says nothing about the peer.
        self._held = held
        self._misses = 0
        self._timer = Timer(self._tick)

    def start(self) -> None:
        if self.interval > 0:
            self._timer.start(self.interval)

    def answered(self) -> None:
        self._misses = 0

    def stop(self) -> None:
        self._timer.cancel()

    def _tick(self) -> None:
        if self._held():
            self._misses = 0
        elif self._misses >= MAX_MISSES:
            self._on_dead()
            return
        else:
            self._misses += 1
            self._send_ping()
        self.start()
