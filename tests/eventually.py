"""Polling for eventual conditions: tests wait for a state, never assert on elapsed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool] = bool,
    *,
    timeout_s: float = 15.0,
    interval_s: float = 0.05,
) -> T:
    """Call ``probe`` until ``until(result)`` holds and return that result.

    Raises AssertionError with the last result when the deadline passes first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last value: {result!r}")
        await asyncio.sleep(interval_s)
