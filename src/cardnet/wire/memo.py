"""Values worked out from immutable keys (decodings of exact bytes), kept while there is room.

A frozen value decoded from bytes is a function of those bytes: the card runtime, the sessions and the protocols
decode the same records several times a step, so each keeps what it decoded in a :class:`Memo` keyed by the exact
bytes (or a tuple of them). A lookup is a plain ``dict.get``; :meth:`Memo.remember` adds an entry and, when the
memo is full, starts it over. What a lookup returns is what working it out again would: only successful results
are remembered, and different or damaged bytes are a different key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

MEMO_ENTRIES = 256  # entries a memo keeps before it starts over


class Memo(dict[K, V]):
    """A bounded memo (see the module)."""

    __slots__ = ("entries",)

    def __init__(self, entries: int = MEMO_ENTRIES) -> None:
        super().__init__()
        self.entries = entries

    def remember(self, key: K, value: V) -> V:
        """Keep ``value`` for ``key`` (starting over when full); ``value``."""
        if len(self) >= self.entries:
            self.clear()
        self[key] = value
        return value

    def worked(self, key: K, work: Callable[[K], V]) -> V:
        """The value for ``key``: remembered, or ``work(key)`` (then remembered; an exception is not)."""
        got = self.get(key)
        return got if got is not None else self.remember(key, work(key))
