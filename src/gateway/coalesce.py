"""Singleflight: at most one in-flight call per key; everyone asking meanwhile shares its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs ``fn`` once per key at a time. The call runs in its own task, so a caller that gives
    up (a cancelled request) neither cancels it for the others nor leaves its result unread."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The call's result and whether this caller joined a call already in flight."""
        task = self._calls.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._finish(key, done))
        return await asyncio.shield(task), joined

    def _finish(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # mark it retrieved even when every waiter gave up
