"""The ticketing server's seat claims (``services/ticketing/sales.py``) on a real SQLite store: first wins, a card's
unpaid sales count against it for ``window_s``, and a seat unpaid at its bill's deadline is released (the time is an
argument)."""

from __future__ import annotations

import dataclasses
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


def test_a_seat_is_released_after_its_deadline_unpaid_and_a_late_receipt_takes_it_back_only_if_still_free(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """Sales past their bill's deadline (``before``: the server's clock less the margin) that are still ``sold`` are
    released, oldest deadline first, their seats free and their cards' unpaid counts dropped; a paid sale is not. A
    receipt that comes for a released sale takes the seat back if it is free (``reclaim``), and is refused
    ``seat_resold`` if another sale holds it."""
    store = SqliteStore(str(tmp_path / "tickets.db"))
    mallory, bob = _card(ca, 1), _card(ca, 2)

    def claim(seat: str, card: bytes, pay_by: int) -> sales.Ticket:
        poid = (seat + card[-4:].hex()).encode().ljust(40, b"\0")
        with store.transaction() as txn:
            sales.claim(txn, poid, [f"final/{seat}"], card, pay_by, now=T0, max_unpaid=8, window_s=WINDOW_S)
        t = sales.ticket(store, poid)
        assert t is not None
        return t

    a1 = claim("A1", mallory, int(T0) + 60)
    claim("A2", mallory, int(T0) + 120)
    b1 = claim("B1", bob, int(T0) + 30)
    sales.advance(store, b1, "paid")  # paid in time
    assert sales.due_sales(store, T0 + 30) == []
    assert [k[8:] for k in sales.due_sales(store, T0 + 61)] == [b1.poid, a1.poid]  # A2's deadline is later
    # the broker authorised A1's payment before its deadline: A1 keeps its seat, looked at again at T0 + 71
    assert sales.release(store, sales.due_sales(store, T0 + 61), {a1.poid}, int(T0) + 71) == []
    assert sales.due_sales(store, T0 + 61) == [] and len(sales.due_sales(store, T0 + 72)) == 1
    assert sales.sold_of(store, "final", ["A1", "A2", "B1"]) == ({"A1", "A2", "B1"}, 3)
    # then that authorisation ended (the card declined the broker's S2): A1 is released
    assert sales.release(store, sales.due_sales(store, T0 + 72), set(), int(T0) + 82) == [
        dataclasses.replace(a1, state=sales.RELEASED)
    ]
    assert sales.sold_of(store, "final", ["A1", "A2", "B1"]) == ({"A2", "B1"}, 2)
    with store.transaction() as txn:
        assert txn.count(sales.UNPAID, pki.uid_of(pki.cert_from_der(mallory)).raw) == 1  # A1 no longer counts
    assert sales.due_sales(store, T0 + 72) == []

    late = sales.reclaim(store, sales.ticket(store, a1.poid))  # type: ignore[arg-type]
    assert late.state == "paid" and sales.seat_sale(store, "final", "A1")[0] == a1.poid
    (a2_released,) = sales.release(store, sales.due_sales(store, T0 + 121), set(), 0)
    assert a2_released.seat == "A2"
    a2_bob = claim("A2", bob, int(T0) + 500)  # sold again
    with pytest.raises(ProtocolError) as resold:
        sales.reclaim(store, a2_released)
    assert resold.value.reason == "seat_resold" and "refund" in str(resold.value)
    assert sales.seat_sale(store, "final", "A2")[0] == a2_bob.poid
    store.close()
