"""The storage layer's one error type."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from cardnet.errors import CardnetError


class StoreError(CardnetError):
    """A store could not be opened, migrated or written; ``reason`` says why
    (``bad_url``, ``unsupported``, ``newer_schema``, ``io``, ``closed``, ``busy``, ``in_use``,
    ``missing``, ``empty``, ``foreign``, ``unknown_version``, ``damaged``, ``nested``); ``hint``, when given, says
    what to do (the command line prints it)."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(reason, message)
        self.hint = hint


# What decoding a record's bytes raises when they are not what was written (DecodeError is a ValueError).
DECODING_FAULTS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, IndexError, TypeError, AttributeError, struct.error,
)  # fmt: skip


@contextmanager
def damaged(what: str, *also: type[BaseException]) -> Iterator[None]:
    """Decoding a record read from a store: any fault in its bytes (:data:`DECODING_FAULTS` and ``also``) is the
    store's error, ``damaged``, naming ``what`` the record is."""
    try:
        yield
    except (*DECODING_FAULTS, *also) as exc:
        raise StoreError(
            "damaged", f"{what} in the store is damaged ({type(exc).__name__}: {exc}): restore it from a backup"
        ) from None
