"""Fuzzing the decoders of records a service or a wallet keeps on disk: a record whose bytes are not what was
written (a bit flip, a truncation, another record's bytes) gets the store's ``damaged`` error, or the journal's
``damaged_journal``, never another exception and never an object whose fields have the wrong types (which would
fail later, far from the cause, with a traceback for a person).

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from fuzzing import cbor_or_bytes, fuzz_settings, mutations
from hypothesis import given
from hypothesis import strategies as st

from cardnet.services.speed.customer import Pending, PurchaseError
from cardnet.services.ticketing.sales import RELEASED, STATES, Ticket
from cardnet.store import StoreError
from cardnet.wire import Uid

FUZZ = fuzz_settings(300)
POID = b"\x05" * 16
TICKET = Ticket(POID, "final", "A1", Uid(b"\x01" * 12, 0), "paid")
PENDING = Pending(
    nid=b"\x02" * 16, vendor_cert=b"vendor cert", broker="127.0.0.1:9000", broker_cert=b"broker cert",
    bill=b"signed bill", chunks=[[b"chunk 1", b"chunk 2"]], products=["song"], payment="purse", benc=b"benc",
    bsign=b"bsign", steps=2, poid=b"\x03" * 16, paying_at=1_700_000_000.5,
)  # fmt: skip


@FUZZ
@given(cbor_or_bytes() | mutations(TICKET.encode()))
def test_a_sale_record_decodes_whole_or_is_damaged(raw: bytes) -> None:
    try:
        t = Ticket.decode(POID, raw)
    except StoreError as exc:
        assert exc.reason == "damaged" and POID.hex() in str(exc)
    else:
        assert isinstance(t.event, str) and isinstance(t.seat, str) and isinstance(t.card, Uid)
        assert t.state in (*STATES, RELEASED)
        assert Ticket.decode(POID, t.encode()) == t


def test_a_sale_record_round_trips() -> None:
    assert Ticket.decode(POID, TICKET.encode()) == TICKET


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "final", "seat": "A1", "card": b"\x01" * 16, "state": "lost"},  # no such state
        {"event": 7, "seat": "A1", "card": b"\x01" * 16, "state": "paid"},
        {"event": "final", "seat": "A1", "card": "not bytes", "state": "paid"},
        {"event": "final", "seat": "A1", "state": "paid"},
        ["final", "A1"],
    ],
)
def test_a_damaged_sale_record_is_the_stores_error(fields: object) -> None:
    with pytest.raises(StoreError, match="damaged"):
        Ticket.decode(POID, cbor2.dumps(fields))


def _typed(p: Pending) -> bool:
    """Every field of ``p`` holds what a purchase keeps there."""
    b = lambda v: isinstance(v, bytes)  # noqa: E731
    return (
        all(b(getattr(p, k)) for k in ("nid", "vendor_cert", "broker_cert", "bill", "benc", "bsign"))
        and isinstance(p.broker, str)
        and isinstance(p.payment, str)
        and all(getattr(p, k) is None or b(getattr(p, k)) for k in ("poid", "receipt"))
        and all(getattr(p, k) is None or isinstance(getattr(p, k), str) for k in ("account", "dropped"))
        and isinstance(p.chunks, list)
        and all(isinstance(per, list) and all(b(c) for c in per) for per in p.chunks)
        and isinstance(p.products, list)
        and all(isinstance(x, str) for x in p.products)
        and type(p.steps) is int
        and (p.paying_at is None or type(p.paying_at) in (int, float))
    )


@FUZZ
@given(cbor_or_bytes() | mutations(PENDING.encode()))
def test_a_journal_file_decodes_typed_or_is_damaged(raw: bytes) -> None:
    try:
        p = Pending.decode(raw, "journal file x.purchase")
    except PurchaseError as exc:
        assert exc.reason == "damaged_journal" and "x.purchase" in str(exc)
    else:
        assert _typed(p)


@FUZZ
@given(st.sampled_from([f.name for f in dataclasses.fields(Pending)]), st.sampled_from([7, "text", b"b", [1], 1.5]))
def test_a_journal_field_of_another_type_is_damaged(name: str, value: object) -> None:
    fields = {k: v for k, v in dataclasses.asdict(PENDING).items() if v is not None}
    fields[name] = value
    try:
        p = Pending.decode(cbor2.dumps(fields), "journal file x.purchase")
    except PurchaseError as exc:
        assert exc.reason == "damaged_journal"
    else:
        assert _typed(p)


def test_a_journal_file_round_trips() -> None:
    assert Pending.decode(PENDING.encode(), "x") == PENDING
