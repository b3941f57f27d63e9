"""The storage layer's one error type."""

from __future__ import annotations

from cardnet.errors import CardnetError


class StoreError(CardnetError):
    """A store could not be opened, migrated or written; ``reason`` says why
    (``bad_url``, ``unsupported``, ``newer_schema``, ``io``, ``closed``, ``busy``, ``in_use``,
    ``missing``, ``empty``, ``foreign``, ``unknown_version``, ``damaged``, ``nested``); ``hint``, when given, says
    what to do (the command line prints it)."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(reason, message)
        self.hint = hint
