"""The root of every cardnet error.

Each layer defines exactly one error type deriving from :class:`CardnetError`
(``wire.DecodeError``, ``crypto.CryptoError``, ``crypto.PkiError``,
``store.StoreError``, ``card.CardError``). Every error carries a short
machine-readable ``reason`` (a stable snake_case word that tests and scripts
can match) and a human sentence that says what was wrong and what to do.
"""

from __future__ import annotations


class CardnetError(Exception):
    """Base of all cardnet errors.

    ``reason`` is stable and machine-matchable; ``str(err)`` is for people.
    """

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {str(self)!r})"
