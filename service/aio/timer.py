"""A re-armable one-shot timer: the ``TimerHandle`` bookkeeping every deadline repeats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Timer"]


class Timer:
    """Calls ``callback`` once, ``delay`` seconds after ``start(delay)``; starting again
    replaces the pending call, ``cancel`` drops it."""

    __slots__ = ("_callback", "_handle")

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> bool:
        """Whether a call is due (started, neither fired nor cancelled)."""
        return self._handle is not None

    def start(self, delay: float) -> None:
        self.cancel()
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()
