"""The re-armable timer behind the keepalive and the request deadlines, on a real loop."""

from __future__ import annotations

import asyncio

from service.aio.timer import Timer


async def test_fires_once_and_is_then_no_longer_pending() -> None:
    fired: list[str] = []
    done = asyncio.Event()
    timer = Timer(lambda: (fired.append("t"), done.set()))
    assert not timer.pending
    timer.start(0.01)
    assert timer.pending
    async with asyncio.timeout(10):
        await done.wait()
    assert fired == ["t"] and not timer.pending


async def test_starting_again_replaces_and_cancel_drops_the_pending_call() -> None:
    fired: list[str] = []
    later = asyncio.Event()
    replaced = Timer(lambda: fired.append("replaced"))
    cancelled = Timer(lambda: fired.append("cancelled"))
    witness = Timer(later.set)
    replaced.start(0)
    replaced.start(0.02)  # the call due at once is dropped, one is due later
    cancelled.start(0)
    cancelled.cancel()
    assert not cancelled.pending
    witness.start(0.05)  # due after every call above
    async with asyncio.timeout(10):
        await later.wait()
    assert fired == ["replaced"]
