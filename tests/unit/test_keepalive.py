"""Keepalive's counting, on a real event loop with a short interval."""

from __future__ import annotations

import asyncio

from service.runner.keepalive import MAX_MISSES, Keepalive


async def test_an_unanswering_peer_is_dead_after_max_misses() -> None:
    sent: list[int] = []
    dead = asyncio.Event()
    keepalive = Keepalive(0.01, send_ping=lambda: sent.append(1), on_dead=dead.set)
    keepalive.start()
    async with asyncio.timeout(10):
        await dead.wait()
    assert len(sent) == MAX_MISSES


async def test_answers_and_held_reads_keep_the_peer_alive() -> None:
    dead = asyncio.Event()
    held = True
    pings = 0
    enough = asyncio.Event()
    keepalive: Keepalive

    def ping() -> None:
        nonlocal pings
        pings += 1
        keepalive.answered()
        if pings == 2 * MAX_MISSES:
            enough.set()

    keepalive = Keepalive(0.01, send_ping=ping, on_dead=dead.set, held=lambda: held)
    keepalive.start()
    await asyncio.sleep(0.05)  # the scenario: several intervals pass while reads are held
    assert pings == 0 and not dead.is_set()
    held = False
    async with asyncio.timeout(10):
        await enough.wait()  # answered pings never add up to a death
    assert not dead.is_set()
    keepalive.stop()
