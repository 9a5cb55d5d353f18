"""Backoff delays from an iterator (kopf's style): capped exponential with full jitter."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(base: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Capped exponential backoff with full jitter (never zero, never above `cap`)."""
    attempt = 0
    while True:
        ceiling = min(cap, base * (2**attempt))
        yield random.uniform(ceiling / 2, ceiling)
        attempt = min(attempt + 1, 30)
