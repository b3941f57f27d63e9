"""Storage layer: the Store interface, SQLite (default) and, later, PostgreSQL."""

from cardnet.store.base import Store, Txn
from cardnet.store.errors import StoreError
from cardnet.store.sqlite import SqliteStore
from cardnet.store.url import open_store

__all__ = ["SqliteStore", "Store", "StoreError", "Txn", "open_store"]
