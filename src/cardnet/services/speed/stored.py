"""What the SPEED vendor and broker keep alike: their certified identity in their store, and short store access.

A service's configuration table holds its private key (``key``, PKCS#8 DER), its certificate (``cert``, role
service) and the CA roots it checks peers against (``roots``); :func:`save_identity` writes them once (a second
service in the same store is refused) and :class:`Identity` reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cardnet.crypto import profile
from cardnet.errors import CardnetError
from cardnet.store import Store
from cardnet.wire import Bytes, Field, ListOf, Schema

ROOTS = Schema("speed.roots", [Field(0, "roots", ListOf(Bytes(8192, 1), 16))])


def get(store: Store, table: str, key: bytes) -> bytes | None:
    with store.transaction() as txn:
        return txn.get(table, key)


def put(store: Store, table: str, key: bytes, value: bytes) -> None:
    with store.transaction() as txn:
        txn.put(table, key, value)


def scan(store: Store, table: str) -> list[tuple[bytes, bytes]]:
    with store.transaction() as txn:
        return txn.scan(table)


def save_identity(txn: Any, table: str, key: profile.PrivateKey, cert_der: bytes, roots_der: list[bytes]) -> bool:
    """Write a service's identity into ``table`` in ``txn``; False (nothing written) if one is there already."""
    if not txn.insert(table, b"key", profile.private_to_der(key)):
        return False
    txn.put(table, b"cert", cert_der)
    txn.put(table, b"roots", ROOTS.encode({"roots": roots_der}))
    return True


def required(store: Store, table: str, name: bytes, missing: CardnetError) -> bytes:
    """A configuration value, or ``missing`` raised (the store was never initialised as this service)."""
    raw = get(store, table, name)
    if raw is None:
        raise missing
    return raw


@dataclass(frozen=True)
class Identity:
    """A service's key, certificate and trusted roots, read from its store."""

    key: profile.PrivateKey
    cert: bytes
    roots: list[bytes]

    @classmethod
    def load(cls, store: Store, table: str, missing: CardnetError) -> Identity:
        return cls(
            profile.private_from_der(required(store, table, b"key", missing)),
            required(store, table, b"cert", missing),
            list(ROOTS.decode(required(store, table, b"roots", missing))["roots"]),
        )

    def sign(self, data: bytes) -> bytes:
        return profile.sign(self.key, data)
