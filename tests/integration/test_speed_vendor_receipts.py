"""``speed.vendor_receipts`` over real TCP: a vendor reads its own receipts at the broker, and nobody reads another's.

Two vendors sell at one broker, a customer buys from both; each vendor's signed request gets its receipts alone; a
party the CA certified that holds no vendor account, a request signed for another broker and one signed too long ago
are refused in words. Before, the broker answered every vendor's receipts to anyone who asked.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import cbor2
import pytest
from speedworld import EUR, World, clock, load_purse, opened, serve, service

from cardnet.crypto import cms, pki, profile
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import PurchaseError, _Link
from cardnet.store import SqliteStore
from cardnet.transport import dial
from cardnet.wire import Message, Uid

NEWS = "news-1 Today's paper"
LIMIT = sm.Price(EUR, 1000)
NOBODY = Uid(b"\x00" * 12, 0)


def _second_vendor(w: World, tmp: Path) -> sv.VendorCore:
    key, cert = service(w.ca, "vendor-2")
    sb_accounts.add_vendor(w.broker.store, "V-2", cert)
    store = SqliteStore(str(tmp / "vendor2.db"))
    sv.init_vendor(store, key, cert, [pki.cert_to_der(w.ca.certificate)], account="V-2", broker_cert=w.broker_cert)
    sv.add_product(store, NEWS, sm.Price(EUR, 80), b"the other paper" * 10)
    return sv.VendorCore(store, clock=clock)


def _signed_ask(key: profile.PrivateKey, cert: bytes, *, broker: bytes, at: int, after: int = 0) -> bytes:
    content = sm.RECEIPTS_ASK.encode({"after": after, "broker": broker, "at": at})
    return cms.sign(content, cert, lambda d: profile.sign(key, d))


def test_a_vendor_reads_its_own_receipts_alone_and_a_third_party_none(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca) as w:
        v2 = _second_vendor(w, tmp_path)

        async def go() -> None:
            vs, bs = await serve(w)
            vs2 = sv.VendorServer(v2)
            h2, p2 = await vs2.start()
            broker = (bs_addr := w.broker_addr.rsplit(":", 1))[0], int(bs_addr[1])
            try:
                await load_purse(w, 1000)
                ones = [await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                             limit=LIMIT) for _ in range(2)]  # fmt: skip
                two = await w.customer.buy(f"{h2}:{p2}", w.broker_addr, [NEWS], broker_cert=w.broker_cert, limit=LIMIT)

                got1, last1 = await sv.vendor_receipts(w.vendor, broker)
                assert sorted(p for p, _ in got1) == sorted(o.poid for o in ones)
                for poid, sealed in got1:
                    assert w.vendor.take_receipt(poid, sealed) == sm.Price(EUR, 80)
                assert await sv.vendor_receipts(w.vendor, broker, last1) == ([], last1)  # none left
                got2, _ = await sv.vendor_receipts(v2, broker)
                assert [p for p, _ in got2] == [two.poid]
                assert v2.take_receipt(two.poid, got2[0][1]) == sm.Price(EUR, 80)

                # a certified party that is no vendor of this broker
                mkey, mcert = service(ca, "mallory")
                bid = sm.vendor_id(w.broker_cert)
                async with _Link(w.broker_addr, "broker") as b:
                    for signed, reason in (
                        (_signed_ask(mkey, mcert, broker=bid, at=int(clock())), "unknown_vendor"),
                        (_signed_ask(w.vendor.key, w.vendor.cert, broker=os.urandom(32), at=int(clock())),
                         "not_for_me"),
                        (_signed_ask(w.vendor.key, w.vendor.cert, broker=bid, at=int(clock()) - 3600), "stale_request"),
                    ):  # fmt: skip
                        with pytest.raises(PurchaseError) as e:
                            await b.ask(fr.RECEIPT_FOR_VENDOR, fr.RECEIPTS, after=0, signed=signed)
                        assert e.value.reason == reason, e.value
                # the old request, with no vendor's signature: refused, nothing listed
                conn = await dial(*broker)
                try:
                    await conn.send(Message(NOBODY, NOBODY, fr.RECEIPT_FOR_VENDOR.code, cbor2.dumps({0: 0})))
                    reply = await conn.recv()
                finally:
                    await conn.aclose()
                assert reply.mtype == fr.REFUSED.code, reply
                assert fr.REFUSED.parse(reply)["reason"] == "missing_key"
            finally:
                await vs2.aclose()
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())


def test_a_copied_receipts_request_learns_nothing_new_and_a_vendor_sends_a_bounded_number_of_them(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """A man in the middle (the broker's TCP is plain) copies a vendor's signed request and sends it again within its
    300 s, after the vendor sold again: it gets what the first answer held, not the new receipt (before, each copy
    listed the vendor's receipts up to now: how many sales and when, to whoever holds the copy). A vendor sends at
    most ``MAX_RECEIPT_ASKS`` requests within the window (each costs the broker a certificate check and a scan of
    its accounts): the next is refused ``too_many`` in words, and another vendor is served all the same."""
    with opened(tmp_path, ca) as w:
        v2 = _second_vendor(w, tmp_path)

        async def go() -> None:
            vs, bs = await serve(w)
            broker = (bs_addr := w.broker_addr.rsplit(":", 1))[0], int(bs_addr[1])

            async def sent(msg: Message) -> Message:
                conn = await dial(*broker)
                try:
                    await conn.send(msg)
                    return await conn.recv()
                finally:
                    await conn.aclose()

            try:
                await load_purse(w, 1000)

                async def buy() -> bytes:
                    got = await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                               limit=LIMIT)  # fmt: skip
                    return got.poid

                first = await buy()
                seen = w.vendor.receipts_request(0)  # what went over the wire
                answer = fr.RECEIPTS.parse(await sent(seen))
                assert [fr.RECEIPT.schema.decode(i)["poid"] for i in answer["items"]] == [first]
                second = await buy()
                again = await sent(seen)  # the copy, after the vendor's next sale
                assert again.mtype == fr.RECEIPTS.code and fr.RECEIPTS.parse(again) == answer
                got, _ = await sv.vendor_receipts(w.vendor, broker, answer["last"])  # the vendor's next request
                assert [p for p, _ in got] == [second]
                bid = sm.vendor_id(w.broker_cert)
                async with _Link(w.broker_addr, "broker") as b:
                    for n in range(sb.MAX_RECEIPT_ASKS - 2):  # (it sent 2 already; each asks from another position)
                        signed = _signed_ask(w.vendor.key, w.vendor.cert, broker=bid, at=int(clock()), after=10**6 + n)
                        await b.ask(fr.RECEIPT_FOR_VENDOR, fr.RECEIPTS, after=10**6 + n, signed=signed)
                    with pytest.raises(PurchaseError) as e:
                        signed = _signed_ask(w.vendor.key, w.vendor.cert, broker=bid, at=int(clock()), after=2**40)
                        await b.ask(fr.RECEIPT_FOR_VENDOR, fr.RECEIPTS, after=2**40, signed=signed)
                    assert e.value.reason == "too_many" and "ask again in a few minutes" in str(e.value)
                assert (await sv.vendor_receipts(v2, broker))[0] == []  # another vendor: served (it sold nothing)
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())
