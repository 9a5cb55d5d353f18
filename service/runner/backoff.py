"""Supervision helpers (kopf's style): backoff delays from an iterator, and a done
callback that logs what a named background task died of."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator

log = logging.getLogger("podgate.runner")


def log_failure(task: asyncio.Task[object]) -> None:
    """Done callback: a task that ended with an exception says so (with its name)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("task %r failed", task.get_name(), exc_info=exc)


def backoff_delays(base: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """Capped exponential backoff with full jitter (never zero, never above `cap`)."""
    attempt = 0
    while True:
        ceiling = min(cap, base * (2**attempt))
        yield random.uniform(ceiling / 2, ceiling)
        attempt = min(attempt + 1, 30)
