"""Waiting in integration tests for what other processes do: poll a condition until it holds, within a bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

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


class Held:
    """Mixed into a service's core: a step the test holds, once ``hold()`` is called, in the thread that runs it
    until ``release()`` (``entered`` is set when it waits): a slow step at a moment the test chooses. The core's
    own method calls ``self.wait_if_held(what)`` before doing its work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self._release = threading.Event()
        self._held = False

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._release.set()

    def wait_if_held(self, what: str, timeout_s: float = WAIT_S) -> None:
        if self._held:
            self._held = False
            self.entered.set()
            assert self._release.wait(timeout_s), f"the test never released the held {what}"
