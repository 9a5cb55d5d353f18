"""Feeding a sans-IO receiver the same bytes cut in different places: whole, byte by
byte, and at random (seeded, so a failure names its cuts)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

E = TypeVar("E")

SPLIT_MODES = ["whole", "bytewise", *(f"random-{seed}" for seed in range(6))]


def chunks_of(wire: bytes, mode: str) -> list[bytes]:
    if mode == "whole" or len(wire) < 2:
        return [wire]
    if mode == "bytewise":
        return [wire[i : i + 1] for i in range(len(wire))]
    rng = random.Random(int(mode.split("-")[1]))
    cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(1, 25))))
    return [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]


def feed(receive: Callable[[bytes], list[E]], wire: bytes, mode: str = "whole") -> list[E]:
    """Every event ``receive`` returns for ``wire`` delivered in ``mode``'s chunks."""
    events: list[E] = []
    for chunk in chunks_of(wire, mode):
        events += receive(chunk)
    return events
