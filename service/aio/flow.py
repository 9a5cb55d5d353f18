"""Flow control of one reader: stop reading a transport while anything holds it back.

Like uvicorn's ``FlowControl``, with reasons: several things may hold a reader at once
(each local socket that is over its write bound, a pod still being dialled, …), and it
reads again only once the last of them lets go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

__all__ = ["ReadGate"]


class ReadGate:
    """Pauses ``transport``'s reading while at least one reason blocks it."""

    __slots__ = ("_reasons", "transport")

    def __init__(self, transport: asyncio.Transport | None = None) -> None:
        self.transport = transport
        self._reasons: set[Hashable] = set()

    @property
    def blocked(self) -> bool:
        return bool(self._reasons)

    def block(self, reason: Hashable) -> None:
        if not self._reasons:
            self._pause()
        self._reasons.add(reason)

    def unblock(self, reason: Hashable) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self._resume()

    def clear(self) -> None:
        """Forget every reason without touching the transport (it is being closed)."""
        self._reasons.clear()

    def _pause(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _resume(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
