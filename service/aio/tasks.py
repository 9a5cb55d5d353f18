"""Supervision (kopf's guarded tasks): every background task is named, owned and watched.

A task started from a callback (a dial for a new stream pair, say) belongs to a
`TaskSet`, which keeps it referenced, logs its failure with its name and cancels what is
left on close. Nothing fails silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["TaskSet", "log_failure"]

log = logging.getLogger("podgate")


def log_failure(task: asyncio.Task[Any]) -> None:
    """Done callback: a task that ended with an exception says so, with its name."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("task %r failed", task.get_name(), exc_info=exc)


class TaskSet:
    """Named tasks owned by one object; failures are logged with the task's name."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        log_failure(task)

    def cancel(self) -> None:
        """Cancel every task still running (they end at their next await)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel every task and wait until all have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
