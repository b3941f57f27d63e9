"""Ending a purse debit over real TCP: only the card's owner (through the card's SE) or the SAM's statement ends one.

* A payment whose S2 the purse cannot pay (another purchase drew the balance down meanwhile) is declined at once:
  the SAM drops its authorisation and the card forgets the debit on its SR, so its place of the 16 is free.
* Whoever holds a debit's S1 cannot have the broker end it: the payment in flight is still made.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostprocs import free_port
from speedworld import EUR, World, load_purse, opened, served

from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.crypto import cms, pki
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import AsyncLocalCard, Journal, PurchaseError, _Link
from cardnet.wire.mtypes import MType

NEWS = "news-1 Today's paper"  # 0.80 EUR


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[World]:
    with opened(tmp_path, ca) as w:
        yield w


class _MeanwhileCard:
    """The customer's card (a real one) on which, just before the host presents a payment's S2, another purchase
    is bought and paid to the end: two purchases at once, the second drawing the balance down first."""

    def __init__(self, card: AsyncLocalCard, meanwhile: Any) -> None:
        self.card, self.meanwhile = card, meanwhile

    async def ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        if mtype is pa.DEBIT and self.meanwhile is not None:
            other, self.meanwhile = self.meanwhile, None
            await other()
        return await self.card.ask(mtype, reply, **fields)


@pytest.mark.parametrize("pay_within_s", [None, 600.0])
def test_a_payment_whose_s2_the_purse_cannot_pay_frees_its_place_on_the_sams_sr(
    world: World, tmp_path: Path, pay_within_s: float | None
) -> None:
    """The purse holds 1.00 and two purchases of 0.80 run at once: the one paid first is debited, the other's S2 is
    refused ``insufficient``. That purchase is dropped (nothing paid) and its debit ends at once: the card declines
    the S2, the SAM drops its authorisation and answers the SR, the card forgets the debit. So no place of the 16 is
    held by a debit no purchase will finish (before, each such one held a place until the purse was locked), the
    SAM holds no open authorisation, and value adds up: purse debits = the SAM's log = the vendor's credit. With a
    deadline in the bills, the broker's ``speed.order_states`` says the declined order's authorisation ended
    (``none``: the vendor may release what it held for it; before, ``sb.auth`` kept it ``authorised`` for good) and
    the other one paid, with its receipt."""
    w = world
    w.vendor.pay_within_s = pay_within_s
    journal = Journal(tmp_path / "journal")

    async def go() -> None:
        async with served(w):
            await load_purse(w, 100)
            plain = dataclasses.replace(w.customer, journal=Journal(tmp_path / "other"))

            async def other() -> None:
                await plain.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, mode="aggressive")

            customer = dataclasses.replace(w.customer, journal=journal, card=_MeanwhileCard(w.customer.card, other))
            with pytest.raises(PurchaseError) as e:
                await customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, mode="aggressive")
            assert e.value.reason == "insufficient"
            assert [r.dropped for r in journal.all()] == ["insufficient"]
            assert w.card.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0
            assert w.card.ask(pa.PENDING_DEBITS, pa.S1S)["s1"] == []
            assert w.broker.sam.ask(sa.DAYS, sa.HELD)["open"] == 0
            assert w.balance() == 100 - 80 and w.broker.balances()["V-1"] == {EUR: 80}
            [day] = w.broker.sam.ask(sa.DAYS, sa.HELD)["days"]
            assert w.broker.sam.ask(sa.TOTALS, sa.SUMS, day=day)["debits"] == [{"currency": EUR, "amount": 80}]
            if pay_within_s is not None:
                [declined] = [sm.decode(sm.BILL, cms.verify(r.bill).content, "bill")["poid"] for r in journal.all()]
                [paid] = Journal(tmp_path / "other").all()
                host, port = w.broker_addr.rsplit(":", 1)
                states = await sv.order_states((host, int(port)), [declined, paid.poid])  # type: ignore[list-item]
                assert states == {declined: ("none", None), paid.poid: ("paid", paid.receipt)}, states

    asyncio.run(go())


def test_whoever_holds_a_debits_s1_cannot_end_the_payment_in_flight(world: World, tmp_path: Path) -> None:
    """A purchase whose payment could not reach the broker has its debit under way (the card's S1). A bystander who
    holds that S1 sends it to the broker's ``speed.end_debit``: refused, nothing recorded. The customer's recovery
    then pays the purchase (before, the SAM refused that debit for good on the S1 alone and the purchase was
    dropped ``debit_refused``)."""
    w = world
    journal = Journal(tmp_path / "journal")
    customer = dataclasses.replace(w.customer, journal=journal)

    async def go() -> None:
        async with served(w):
            await load_purse(w, 500)
            with pytest.raises(PurchaseError) as e:
                await customer.buy(w.vendor_addr, f"127.0.0.1:{free_port()}", [NEWS], broker_cert=w.broker_cert,
                                   mode="aggressive")  # fmt: skip
            assert e.value.reason == "unreachable"
            [s1] = w.card.ask(pa.PENDING_DEBITS, pa.S1S)["s1"]
            field = fr.END_DEBIT.schema.fields[0].name  # what the broker's end_debit carries
            async with _Link(w.broker_addr, "broker") as b:
                with pytest.raises(PurchaseError):
                    await b.ask(fr.END_DEBIT, fr.DEBIT_REFUSED, **{field: s1})
            [paid] = await customer.recover(broker=w.broker_addr)
            assert paid.contents == [b"the news of the day" * 10]
            assert w.card.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0
            assert w.balance() == 500 - 80 and w.broker.balances()["V-1"] == {EUR: 80}

    asyncio.run(go())
