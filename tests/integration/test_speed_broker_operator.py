"""What the SPEED broker's operator meets, on real stores and real processes: a settlement that cannot be made says so
in words (``cardnet speed broker prune``, ``cardnet speed broker run``) instead of an internal error; ``cardnet speed
broker payout`` takes money out of a vendor's account, never more than it holds; settlement reads the held credits
alone, not every debit ever settled; a complaint's refund comes from the sale's held credit first and takes no
account below what it holds."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from hostprocs import Service, cardnet
from speedworld import EUR, PIN, T0, World, authorised_and_debited, clock, load_purse, opened, serve

from cardnet.applets.speed import sam as sa
from cardnet.crypto import pki
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import broker_settlement as sb_settle
from cardnet.services.speed import stored
from cardnet.services.speed import stored as sb_stored
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import Journal, PurchaseError, _Link

NEWS = "news-1 Today's paper"


def _debit_the_broker_lost(w: World) -> bytes:
    """A purse debit the SAM logged and the broker never recorded (it stopped between the two): its PaymentOrderID."""

    async def go() -> bytes:
        vs, bs = await serve(w)
        try:
            await load_purse(w, 1000)
            _, poid, s3 = await authorised_and_debited(w, NEWS)
            w.broker.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)  # ... and the broker stops here
            return poid
        finally:
            await vs.aclose()
            await bs.aclose()

    return asyncio.run(go())


def _lose_the_vendor_account(w: World) -> None:
    """The broker's store restored from a copy older than the vendor's account (or another broker's store)."""
    with w.broker.store.transaction() as txn:
        txn.delete(sb_records.ACCOUNTS, b"V-1")


def _pem_of_vendor(w: World, tmp: Path) -> Path:
    path = tmp / "vendor.pem"
    path.write_bytes(pki.chain_to_pem([pki.cert_from_der(w.vendor.cert)]))
    return path


def test_prune_of_a_debit_of_a_vendor_the_store_has_no_account_of_fails_in_words(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca) as w:
        w.customer.journal = Journal(tmp_path / "journal")
        _debit_the_broker_lost(w)
        _lose_the_vendor_account(w)
        w.broker.sam.close()  # the SAM card has one owner: the command's
        stores = ("--store", str(tmp_path / "broker.db"), "--sam-store", str(tmp_path / "sam.db"), "--pin", PIN)

        r = cardnet("speed", "broker", "prune", *stores, "--keep-days", "1", "--json", check=False)
        assert r.returncode == 2, r.stdout + r.stderr
        err = json.loads(r.stdout)["error"]
        assert err["reason"] == "unknown_vendor", err
        assert "no account of that vendor" in err["message"] and "nothing of it was credited" in err["message"]
        assert "cardnet speed broker add-vendor" in err["hint"]
        words = cardnet("speed", "broker", "prune", *stores, "--keep-days", "1", check=False)
        assert words.returncode == 2 and "Traceback" not in words.stderr and "internal" not in words.stderr
        assert "no account of that vendor" in words.stderr and "add-vendor" in words.stderr

        # what the hint says mends it: the vendor's account opened again, the debit settled to it, the day pruned
        cardnet("speed", "broker", "add-vendor", "--store", str(tmp_path / "broker.db"), "--account", "V-1",
                "--vendor-cert", str(_pem_of_vendor(w, tmp_path)))  # fmt: skip
        got = json.loads(cardnet("speed", "broker", "prune", *stores, "--keep-days", "1", "--json").stdout)
        assert got["settled"] == 1 and got["days"] == [int(T0 // sa.DAY_S)]
        shown = json.loads(cardnet("speed", "broker", "accounts", "--store", str(tmp_path / "broker.db"),
                                   "--json").stdout)  # fmt: skip
        assert shown["accounts"]["V-1"] == {EUR: 80}


def test_a_broker_run_whose_settlement_cannot_be_made_serves_and_logs_why(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca, time.time) as w:  # today's debit: the broker settles it when it starts
        w.customer.journal = Journal(tmp_path / "journal")
        _debit_the_broker_lost(w)
        _lose_the_vendor_account(w)
        w.broker.sam.close()
        broker = Service(tmp_path, "speed", "broker", "run", "--store", str(tmp_path / "broker.db"), "--sam-store",
                         str(tmp_path / "sam.db"), "--pin", PIN, "--listen", "127.0.0.1:0")  # fmt: skip
        try:
            assert broker.start().startswith("127.0.0.1:")  # it serves: payments go on
            log = broker.log.read_text()
            assert "could not settle day" in log and "no account of that vendor" in log and "add-vendor" in log
            assert "Traceback" not in log and "internal" not in log
        finally:
            broker.stop()


def test_payout_takes_from_a_vendors_account_never_more_than_it_holds(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca) as w:
        sb_accounts._put_account(w.broker.store, "V-1", w.vendor.vendor_id, {EUR: 500}, create=False)  # its sales
        store = ("--store", str(tmp_path / "broker.db"))

        assert "--amount" in cardnet("speed", "broker", "payout", "--help").stdout
        got = json.loads(cardnet("speed", "broker", "payout", *store, "--account", "V-1", "--amount", "1.20 EUR",
                                 "--json").stdout)  # fmt: skip
        assert got == {"account": "V-1", "paid_out": {EUR: 120}, "balances": {EUR: 380}}
        words = cardnet("speed", "broker", "payout", *store, "--account", "V-1", "--amount", "0.80 EUR").stdout
        assert "paid out 0.80 EUR from vendor account V-1; it holds 3.00 EUR" in words
        assert sb_accounts.balances(w.broker.store)["V-1"] == {EUR: 300}  # durable: another process reads it

        for account, amount, reason, hint in (
            ("V-1", "3.01 EUR", "insufficient", "at most what the account holds"),
            ("V-1", "1.00 USD", "insufficient", "at most what the account holds"),
            ("C-1", "1.00 EUR", "not_vendor", "vendor's account"),
            ("V-9", "1.00 EUR", "unknown_account", "check --account"),
        ):
            r = cardnet("speed", "broker", "payout", *store, "--account", account, "--amount", amount, "--json",
                        check=False)  # fmt: skip
            assert r.returncode == 2, r.stdout
            err = json.loads(r.stdout)["error"]
            assert err["reason"] == reason and hint in err["hint"], err
        r = cardnet("speed", "broker", "payout", *store, "--account", "V-1", "--amount", "3.01 EUR", check=False)
        assert r.returncode == 2 and "holds 3.00 EUR, less than 3.01 EUR: nothing was taken" in r.stderr
        assert sb_accounts.balances(w.broker.store)["V-1"] == {EUR: 300}  # nothing taken by a refused payout
        assert sb_accounts.balances(w.broker.store)["C-1"] == {EUR: 10_000}
        # a currency paid out whole leaves the account: one of its 16 currencies freed (a held one may come in)
        many = {EUR: 300, **{c: 1 for c in ("USD", "GBP", "CHF", "JPY", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF",
                                             "CAD", "AUD", "NZD", "SGD", "HKD")}}  # fmt: skip
        sb_accounts._put_account(w.broker.store, "V-1", w.vendor.vendor_id, many, create=False)
        words = cardnet("speed", "broker", "payout", *store, "--account", "V-1", "--amount", "3.00 EUR").stdout
        assert "paid out 3.00 EUR from vendor account V-1" in words
        assert sb_accounts.balances(w.broker.store)["V-1"] == {c: a for c, a in many.items() if c != EUR}
        sb_accounts._put_account(w.broker.store, "V-1", w.vendor.vendor_id, {EUR: 300}, create=False)
        words = cardnet("speed", "broker", "payout", *store, "--account", "V-1", "--amount", "3.00 EUR").stdout
        assert "it holds nothing" in words and sb_accounts.balances(w.broker.store)["V-1"] == {}


def test_settlement_reads_the_held_credits_alone(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    with opened(tmp_path, ca) as w:
        w.customer.journal = Journal(tmp_path / "journal")
        poid = _debit_the_broker_lost(w)
        day = int(T0 // sa.DAY_S)
        assert w.broker.settle(day) == 1 and sb_settle.held(w.broker.store) == []  # settled, credited: nothing held
        statements: list[str] = []
        w.broker.store._c.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        try:
            assert w.broker.settle(day) == 0
        finally:
            w.broker.store._c.set_trace_callback(None)  # type: ignore[attr-defined]
        scans = [s for s in statements if "'sb.settled'" in s and "AND k=" not in s]
        assert scans == [], scans  # no scan of every settled debit (it grows with every one, never pruned)
        # the register still answers the settled one (a returning customer's receipt and certificate time)
        assert sb_stored.get(w.broker.store, sb_records.SETTLED, poid) is not None


# --- a complaint's refund ------------------------------------------------------------------------------------------
CD = "cd-1 Kind of Blue"


def _a_vendor_that_cheats(w: World) -> None:
    """The vendor sells ``CD`` at 3.00 EUR but delivers other content than its signed catalogue entry names."""
    entry = sv.add_product(w.vendor.store, CD, sm.Price(EUR, 300), b"the real album")
    stored.put(w.vendor.store, sv.CATALOGUE, CD.encode(), sv._PRODUCT.encode(
        {"price": sm.Price(EUR, 300).fields(), "floor": sm.Price(EUR, 300).fields(), "content": b"a cheap copy",
         "entry": entry}))  # fmt: skip
    w.vendor = sv.VendorCore(w.vendor.store, clock=clock)  # (a vendor reads its catalogue when it starts)


async def _complain(w: World, poid: bytes, contents: list[bytes]) -> dict[str, object]:
    entry = stored.get(w.vendor.store, sv.CATALOGUE, CD.encode())
    assert entry is not None
    async with _Link(w.broker_addr, "broker") as b:
        _, verdict = await b.ask(
            fr.COMPLAINT,
            fr.VERDICT,
            poid=poid,
            products=[CD],
            entries=[sv._PRODUCT.decode(entry)["entry"]],
            contents=contents,
            refund_to="C-1",
        )
    return dict(verdict)


def test_a_refund_of_a_sale_whose_credit_is_held_comes_from_that_credit(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca) as w:
        w.customer.journal = Journal(tmp_path / "journal")
        _a_vendor_that_cheats(w)

        async def go() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                rec, poid, s3 = await authorised_and_debited(w, CD)
                w.broker.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)  # ... and the broker stops here
                await bs.aclose()
                full = pp.MAX_AMOUNT - 10  # the vendor's sales filled its account meanwhile
                sb_accounts._put_account(w.broker.store, "V-1", w.vendor.vendor_id, {EUR: full}, create=False)
                assert w.broker.settle(int(T0 // sa.DAY_S)) == 1 and len(sb_settle.held(w.broker.store)) == 1

                bs = sb_server.BrokerServer(w.broker)  # the customer comes back: the receipt (the credit still held)
                host, port = await bs.start()
                w.broker_addr = rec.broker = f"{host}:{port}"
                w.customer.journal.save(rec)
                [done] = await w.customer.recover()
                assert done.contents == [b"a cheap copy"]
                customer = sb_accounts.balances(w.broker.store)["C-1"][EUR]

                verdict = await _complain(w, poid, done.contents)
                assert verdict["upheld"] and verdict["refund"] == 300
                after = sb_accounts.balances(w.broker.store)
                assert after["V-1"] == {EUR: full}  # the vendor's account never got that money: nothing taken
                assert after["C-1"] == {EUR: customer + 300} and sb_settle.held(w.broker.store) == []
                assert w.broker.settle(int(T0 // sa.DAY_S)) == 0  # and the refunded credit is never credited
                sb_accounts._put_account(w.broker.store, "V-1", w.vendor.vendor_id, {EUR: 0}, create=False)  # room now
                assert w.broker.settle(int(T0 // sa.DAY_S)) == 0
                assert sb_accounts.balances(w.broker.store)["V-1"] == {EUR: 0}
                again = await _complain(w, poid, done.contents)  # upheld once: nothing more
                assert again["upheld"] and again["refund"] == 0
                assert sb_accounts.balances(w.broker.store)["C-1"] == {EUR: customer + 300}
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())


def test_a_refund_the_vendors_account_cannot_pay_now_is_refused_in_words_and_paid_later(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca) as w:
        _a_vendor_that_cheats(w)

        async def go() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                got = await w.customer.buy(w.vendor_addr, w.broker_addr, [CD], broker_cert=w.broker_cert,
                                           limit=sm.Price(EUR, 300))  # fmt: skip
                assert sb_accounts.balances(w.broker.store)["V-1"] == {EUR: 300}
                cardnet("speed", "broker", "payout", "--store", str(tmp_path / "broker.db"), "--account", "V-1",
                        "--amount", "3.00 EUR")  # fmt: skip
                before = sb_accounts.balances(w.broker.store)
                with pytest.raises(PurchaseError) as e:
                    await _complain(w, got.poid, got.contents)
                assert e.value.reason == "refund_unfunded"
                assert "upheld" in str(e.value) and "holds less than the 3.00 EUR to refund" in str(e.value)
                assert "0.00" not in str(e.value)  # the vendor's balance is not the customer's business
                assert "nothing was refunded" in str(e.value)
                assert sb_accounts.balances(w.broker.store) == before  # no account below what it holds

                # a customer's account that cannot take the refund: refused in words, nothing changed either
                owner = sb_records._ACCOUNT.decode(sb_stored.get(w.broker.store, sb_records.ACCOUNTS, b"C-1"))["owner"]
                sb_accounts._put_account(w.broker.store, "C-1", owner, {EUR: pp.MAX_AMOUNT - 100}, create=False)
                await w.customer.buy(w.vendor_addr, w.broker_addr, [CD], broker_cert=w.broker_cert,
                                     limit=sm.Price(EUR, 300))  # fmt: skip  # the vendor's next sale: 3.00 EUR
                with pytest.raises(PurchaseError) as e:
                    await _complain(w, got.poid, got.contents)
                assert e.value.reason == "refund_account_full" and "another of your accounts" in str(e.value)
                assert sb_accounts.balances(w.broker.store)["V-1"] == {EUR: 300}

                sb_accounts._put_account(w.broker.store, "C-1", owner, {EUR: 0}, create=False)
                verdict = await _complain(w, got.poid, got.contents)  # sent again: paid now
                assert verdict["upheld"] and verdict["refund"] == 300
                assert sb_accounts.balances(w.broker.store) == {**before, "V-1": {EUR: 0}, "C-1": {EUR: 300}}
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())
