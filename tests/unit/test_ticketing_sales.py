"""The ticketing server's seat claims (``services/ticketing/sales.py``) on a real SQLite store: first wins, and a
card's unpaid sales count against it for ``window_s`` (the time is an argument)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cardnet.crypto import pki, profile
from cardnet.protocols.errors import ProtocolError
from cardnet.services.ticketing import sales
from cardnet.store import SqliteStore
from cardnet.wire import Uid
from conftest import NOW

T0 = 1_800_000_000.0
WINDOW_S = 600.0


def _card(ca: pki.CertificateAuthority, n: int) -> bytes:
    key = profile.generate_private_key(random.Random(n).randbytes)
    return pki.cert_to_der(ca.issue(pki.Role.DEVICE, Uid(n.to_bytes(12, "big"), 0), key.public_key(), now=NOW))


def test_unpaid_sales_count_against_their_card_for_the_window_alone(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    store = SqliteStore(str(tmp_path / "tickets.db"))
    mallory, bob = _card(ca, 1), _card(ca, 2)

    def claim(seat: str, card: bytes, now: float) -> bytes:
        poid = seat.encode().ljust(40, b"\0")
        with store.transaction() as txn:
            sales.claim(txn, poid, [f"final/{seat}"], card, now=now, max_unpaid=2, window_s=WINDOW_S)
        return poid

    def refused(seat: str, card: bytes, now: float) -> str:
        with pytest.raises(ProtocolError) as info:
            claim(seat, card, now)
        return info.value.reason

    claim("A1", mallory, T0)
    claim("A2", mallory, T0 + 1)
    assert refused("A3", mallory, T0 + 2) == "unpaid_sales"  # two billed within the window, none paid
    assert refused("A1", bob, T0 + 2) == "seat_sold"  # first wins
    assert sales.sold_of(store, "final", ["A1", "A2", "A3"]) == ({"A1", "A2"}, 2)  # a refused claim records nothing
    paid = claim("B1", bob, T0 + 3)
    sales.advance(store, sales.ticket(store, paid), "paid")  # type: ignore[arg-type]
    claim("B2", bob, T0 + 4)
    claim("B3", bob, T0 + 5)  # bob paid B1: it no longer counts
    assert refused("B4", bob, T0 + 6) == "unpaid_sales"
    assert refused("A3", mallory, T0 + WINDOW_S) == "unpaid_sales"  # A1 is still within the window
    claim("A3", mallory, T0 + WINDOW_S + 0.5)  # A1 billed longer ago than the window: counted no more
    assert refused("A4", mallory, T0 + WINDOW_S + 0.6) == "unpaid_sales"  # A2 and A3
    with store.transaction() as txn:  # A1's entry went with the claim that no longer counted it
        assert txn.count(sales.UNPAID, pki.uid_of(pki.cert_from_der(mallory)).raw) == 2
    store.close()
