"""The ``Store`` interface: transactions over key-value tables and append-only logs.

Everything durable in cardnet (a card's EEPROM, an authority's movement
records, a vendor's spent list) is written through this small interface, so
that SQLite (the embedded default) and PostgreSQL (scale-out) are
interchangeable and one conformance suite (``tests/unit/test_store.py``)
checks both.

* ``kv`` tables: ``get/put/insert/delete/scan`` on bytes keys and values,
  named by a short table name. ``insert`` is first-wins (returns False when the
  key exists): that is how TTP decisions and spent lists avoid double writes.
* append-only ``log``s: ``append`` returns a sequence number that grows
  within the store; ``read_log`` pages through a log; ``delete_log`` removes
  entries up to a sequence number (an outbox after acknowledgement).
* ``transaction()`` is all or nothing: on an exception nothing of it is kept.
  When the store was opened durable, a transaction that returned is on disk
  (``synchronous=FULL`` for SQLite) before ``transaction()`` exits.
* ``Txn.savepoint()`` nests a sub-transaction that can fail alone, which
  group commit uses to step several messages in one transaction.
* ``group()`` is group commit across code that opens transactions of its
  own: inside it, every ``transaction()`` and ``write()`` of this thread is a
  savepoint (all or nothing on its own) of one transaction that commits, once
  and durably, at the end of the block (or rolls back whole if the block
  raises). Other threads wait for the group's end. The SPEED vendor and broker
  answer every request waiting at once inside one group.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from cardnet.store.errors import StoreError

META_TABLE = "_store"  # the kind record: which service's store this is, and its layout version
META_KEY = b"meta"


class Txn(Protocol):
    def get(self, table: str, key: bytes) -> bytes | None: ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def put_many(self, table: str, items: list[tuple[bytes, bytes]]) -> None: ...

    def delete_many(self, table: str, keys: list[bytes]) -> int: ...

    def insert(self, table: str, key: bytes, value: bytes) -> bool:
        """Insert if absent; False (and nothing written) if the key exists."""
        ...

    def insert_many(self, table: str, items: list[tuple[bytes, bytes]]) -> int:
        """``insert`` for each item (first-wins); returns how many were new."""
        ...

    def delete(self, table: str, key: bytes) -> bool: ...

    def scan(self, table: str, prefix: bytes = b"", limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Entries whose key starts with ``prefix``, in key order."""
        ...

    def count(self, table: str, prefix: bytes = b"") -> int:
        """How many entries have a key starting with ``prefix`` (counted by the store: no entry is read out)."""
        ...

    def append(self, log: str, value: bytes) -> int:
        """Append to a log; returns its sequence number (increasing within the store)."""
        ...

    def read_log(self, log: str, after: int = 0, limit: int | None = None) -> list[tuple[int, bytes]]: ...

    def delete_log(self, log: str, seqs: list[int]) -> int: ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested all-or-nothing scope inside the transaction."""
        ...


class Store(Protocol):
    url: str

    def transaction(self) -> AbstractContextManager[Txn]:
        """A read-write transaction; durable on exit if the store is durable."""
        ...

    def write(self, table: str, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        """One transaction that puts and deletes these rows of ``table`` (the card's hot path)."""
        ...

    def group(self) -> AbstractContextManager[None]:
        """Group commit: one transaction, committed durably once at the end, for everything this thread does in
        the block; each ``transaction()`` / ``write()`` inside is a savepoint of it. Groups do not nest."""
        ...

    def close(self) -> None: ...


def iter_pages(txn: Txn, log: str, page: int = 1000) -> Iterator[tuple[int, bytes]]:
    """Every entry of a log, read in bounded pages."""
    after = 0
    while True:
        rows = txn.read_log(log, after, page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1][0]


def claim_kind(txn: Txn, kind: str, version: int, where: str) -> None:
    """Check that the store is a ``kind`` store of layout ``version``; a store without a kind record
    (new, or made before kinds were recorded) gets one. Refuses ``foreign`` or ``unknown_version``."""
    raw = txn.get(META_TABLE, META_KEY)
    if raw is None:
        txn.put(META_TABLE, META_KEY, json.dumps({"kind": kind, "version": version}).encode())
        return
    try:
        meta = json.loads(raw)
        found, found_version = str(meta["kind"]), int(meta["version"])
    except (ValueError, TypeError, KeyError):
        raise StoreError("damaged", f"store {where} has an unreadable kind record: restore it from a backup") from None
    if found != kind:
        raise StoreError(
            "foreign", f"store {where} is a {found} store, not a {kind} store: check the store path you gave"
        )
    if found_version != version:
        raise StoreError(
            "unknown_version",
            f"store {where} is a {kind} store of version {found_version}, this cardnet reads version {version}: "
            "use the cardnet that made it",
        )
