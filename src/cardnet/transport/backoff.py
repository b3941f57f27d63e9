"""Exponential backoff with jitter (sans-I/O: no clock, randomness injected).

Attempt ``k`` (0 for the first retry) waits ``base_k * (1 - jitter * u)``
with ``base_k = min(max_s, initial_s * multiplier**k)`` and ``u`` drawn from
the injected :class:`random.Random`, so delays lie in
``[base_k * (1 - jitter), base_k]`` — never above ``max_s`` — and a seeded
run repeats exactly. Jitter spreads the reconnects of many hosts after a
server restart. Call :meth:`Backoff.next_delay` after each failed attempt;
once ``max_attempts`` attempts in a row have failed it returns None: give up.
Call ``reset()`` after a success.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cardnet.transport.errors import TransportError


@dataclass(frozen=True, kw_only=True, slots=True)
class BackoffPolicy:
    initial_s: float = 0.1
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of each delay that is random, 0..1
    max_attempts: int | None = None  # attempts in a row that may fail before giving up; None: never give up

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise TransportError("bad_config", f"need 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if not self.multiplier >= 1:
            raise TransportError("bad_config", f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise TransportError("bad_config", f"jitter is a fraction 0..1, got {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise TransportError("bad_config", f"max_attempts must be >= 1 or None, got {self.max_attempts}")


class Backoff:
    """The delays of one run of retries under a :class:`BackoffPolicy`."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng
        self._attempts = 0
        self._base_s = policy.initial_s

    @property
    def failures(self) -> int:
        """Failed attempts in a row so far (calls to :meth:`next_delay` since the last reset)."""
        return self._attempts

    def next_delay(self) -> float | None:
        """Record a failed attempt; seconds to wait before the next one, or None to give up."""
        policy = self._policy
        if policy.max_attempts is not None and self._attempts + 1 >= policy.max_attempts:
            self._attempts += 1
            return None
        base_s = self._base_s
        self._base_s = min(policy.max_s, base_s * policy.multiplier)  # capped: never overflows
        self._attempts += 1
        return base_s * (1.0 - policy.jitter * self._rng.random())

    def reset(self) -> None:
        self._attempts = 0
        self._base_s = self._policy.initial_s
