"""Waiting in integration tests for what other processes do: poll a condition until it holds, within a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

WAIT_S = 30.0


async def wait_for(
    what: str, cond: Callable[[], Awaitable[object]], timeout_s: float = WAIT_S, every_s: float = 0.05
) -> None:
    """Poll the coroutine function ``cond`` every ``every_s`` until it returns true; fail, naming ``what``, after
    ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not await cond():
                await asyncio.sleep(every_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}") from None
