"""A paid purchase whose receipt's key does not open the products (the vendor gave the broker another K than the one
it enciphered with) is kept as paid, and recovery goes on with the other purchases.

Real TCP and cards (tests/integration/speedworld.py); the vendor's cheat is the one thing made up: the K it seals to
the broker in the bill is not the K of the delivery. Before, the customer's wallet raised the decryption error
before it journalled the receipt: the purchase stayed "under way" for ever, and every `recover` stopped at it (a
ProtocolError), so the purchases after it in the journal were never finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from speedworld import EUR, World, load_purse, opened, serve

from cardnet.crypto import pki
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import PAID_UNOPENED, Journal, PurchaseError

NEWS = "news-1 Today's paper"
LIMIT = sm.Price(EUR, 1000)


@contextlib.contextmanager
def vendor_gives_another_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While open, the vendor seals to the broker a K that is not the one it enciphered the products with."""
    real = sm.seal_to

    def seal_to(cert: bytes, plaintext: bytes, info: bytes) -> bytes:
        if info == sm.INFO_BILL_SECRET:
            secret = dict(sm.BILL_SECRET.decode(plaintext))
            plaintext = sm.BILL_SECRET.encode({**secret, "k": os.urandom(32)})
        return real(cert, plaintext, info)

    with monkeypatch.context() as m:
        m.setattr(sm, "seal_to", seal_to)
        yield


async def _bought_unpaid(w: World) -> None:
    with pytest.raises(PurchaseError) as e:  # the broker cannot be reached: journalled, the card's order made
        await w.customer.buy(w.vendor_addr, "127.0.0.1:1", [NEWS], broker_cert=w.broker_cert, limit=LIMIT)
    assert e.value.reason == "unreachable"


def test_a_purchase_whose_key_does_not_open_it_is_kept_paid_and_recover_goes_on(
    tmp_path: Path, ca: pki.CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(tmp_path, ca) as w:
        journal = w.customer.journal = Journal(tmp_path / "journal")

        async def go() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                for cheat in (True, False, True, False):  # (the journal's order is the NIDs': any)
                    with vendor_gives_another_key(monkeypatch) if cheat else contextlib.nullcontext():
                        await _bought_unpaid(w)
                assert len(journal.pending()) == 4
                done, dropped = await w.customer.recover_all(broker=w.broker_addr)
                assert [p.contents for p in done] == [[b"the news of the day" * 10]] * 2
                assert [d.reason for d in dropped] == [PAID_UNOPENED] * 2, dropped
                assert all("paid 0.80 EUR" in d.detail and "does not open" in d.detail for d in dropped), dropped
                assert journal.pending() == []  # nothing left under way: a second recover pays nothing, stops nowhere
                assert await w.customer.recover_all() == ([], [])
                assert len([r for r in journal.all() if r.receipt is not None]) == 4  # the evidence, receipts kept
                assert w.balance() == 1000 - 4 * 80 and w.broker.balances()["V-1"] == {EUR: 4 * 80}  # paid once each

                with vendor_gives_another_key(monkeypatch), pytest.raises(PurchaseError) as e:  # bought at once
                    await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, limit=LIMIT)
                assert e.value.reason == PAID_UNOPENED and "paid 0.80 EUR" in str(e.value), e.value
                assert journal.pending() == [] and w.balance() == 1000 - 5 * 80
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())
