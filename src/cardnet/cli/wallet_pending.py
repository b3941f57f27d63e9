"""What is under way on a person's card and in their wallet, and finishing it: the reads ``cardnet wallet show``
and ``cardnet wallet recover`` share (the e-purse, loads not yet credited, SPEED purchases delivered but not paid,
Millicent scrip and requests), and recovery of every transfer, exchange and payment the card knows of."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cardnet.cli import wallet_config
from cardnet.cli.fairx import PHASE_WORDS
from cardnet.cli.trn import STATUS_WORDS
from cardnet.services.wallet import MOVING, WalletError

OWNER_WAITS = ("offered", "proposed")  # an exchange that waits for a person, not for recovery
RECOVER_EVERY_S = 1.0


async def balances(wallet: Any) -> dict[str, Any] | None:
    """The e-purse's balances (None: this card has no e-purse)."""
    from cardnet.cli.speed_purse import purse_balances
    from cardnet.services.wallet import WalletError

    try:
        return await purse_balances(wallet)
    except WalletError as exc:
        if exc.reason == "no_applet":
            return None
        raise


async def pending_loads(wallet: Any) -> list[bytes]:
    from cardnet.applets.speed import purse as pa
    from cardnet.services.wallet import WalletError

    try:
        return list((await wallet.ask(pa.PENDING_LOADS, pa.L1S))["l1"])
    except WalletError as exc:
        if exc.reason in ("no_applet", "no_key"):  # no e-purse, or one never loaded
            return []
        raise


def _journal(config: wallet_config.WalletConfig) -> Path:
    from cardnet.cli.speed import JOURNAL

    return Path(config.get("purchases") or "purchases") / JOURNAL


def pending_purchases(config: wallet_config.WalletConfig) -> list[dict[str, Any]]:
    from cardnet.services.speed.customer import Journal

    if not _journal(config).is_dir():
        return []
    return [{"id": r.nid.hex(), "products": ", ".join(r.products), "broker": r.broker, "paid_by": r.payment}
            for r in Journal(_journal(config)).pending()]  # fmt: skip


def owed_tickets(config: wallet_config.WalletConfig) -> list[dict[str, Any]]:
    """Tickets paid for whose delivery a lost connection or a crash cut (the journal keeps each with its server)."""
    from cardnet.services.speed.customer import Journal

    if not _journal(config).is_dir():
        return []
    return [{"id": r.poid.hex(), "products": ", ".join(r.products), "url": r.origin}
            for r in Journal(_journal(config)).owed() if r.poid is not None]  # fmt: skip


async def recover_deliveries(socket: str, cfg: wallet_config.WalletConfig) -> list[dict[str, Any]]:
    """Fetch every ticket paid for and not delivered from its server (after the payments: a purchase paid by
    :func:`recover_payments` may be one); one row each."""
    from cardnet.services.speed.customer import Journal
    from cardnet.services.ticketing.buyer import deliver_owed

    if not _journal(cfg).is_dir():
        return []
    return [{"what": "ticket delivery", "id": o.poid.hex(),
             "outcome": f"finished: {o.product} from {o.url}, ticket {o.oid.hex()} sent to your card" if o.oid
             else f"still owed by {o.url}: {o.error}", "finished": o.oid is not None}
            for o in await deliver_owed(Journal(_journal(cfg)), socket)]  # fmt: skip


def open_scrip_wallet(config: wallet_config.WalletConfig) -> Any:
    """The Millicent scrip wallet of this config (None: there is none yet)."""
    from cardnet.cli.millicent import _wallet

    where = config.get("millicent")
    if where is None or not Path(where).exists():
        return None
    return _wallet(where, create=False)


def scrip(config: wallet_config.WalletConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    scrip_wallet = open_scrip_wallet(config)
    if scrip_wallet is None:
        return None
    scrip = [{"vendor": s.vendor.hex(), "scrip_id": s.scrip_id.hex(), "value": s.value,
              "expiry": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s.expiry))}
             for s in scrip_wallet.scrip()]  # fmt: skip
    pending = [{"request": rid.hex(), "kind": rec["kind"], "vendor": rec.get("vendor", ""), "to": rec["to"],
                "reason": rec.get("reason", "not sent yet")} for rid, rec in scrip_wallet.pending()]  # fmt: skip
    return scrip, pending


async def recover_card(wallet: Any, wait_s: float, ttp_after_s: float) -> list[dict[str, Any]]:
    """Resend what every transfer and exchange of the card waits for until it ends (after ``ttp_after_s``, an
    exchange is put to the TTP: resolve once confirmed, abort once agreed); one row each."""
    tokens = {v.oid: v.status for v in await wallet.vouchers() if v.status in MOVING}
    xs = {x.n1: x for x in await wallet.exchanges() if not x.finished and x.phase not in OWNER_WAITS}
    loop = asyncio.get_running_loop()
    start = loop.time()
    asked: set[bytes] = set()
    moved_on: set[bytes] = set()
    now_tokens: dict[bytes, Any] = {}
    now_xs: dict[bytes, Any] = {}
    while tokens or xs:
        await wallet.recover()
        now_tokens = {v.oid: v.status for v in await wallet.vouchers()}
        now_xs = {x.n1: x for x in await wallet.exchanges()}
        moving = [o for o in tokens if now_tokens.get(o) in MOVING]
        open_xs = [n for n in xs if n in now_xs and not now_xs[n].finished]
        if not moving and not open_xs:
            break
        if loop.time() - start >= ttp_after_s:
            for n1 in open_xs:
                phase = now_xs[n1].phase
                if n1 not in asked and n1 not in moved_on and phase in ("confirmed", "agreed"):
                    try:
                        await (wallet.resolve(n1) if phase == "confirmed" else wallet.abort(n1))
                    except WalletError as exc:
                        if exc.reason != "refused":
                            raise
                        moved_on.add(n1)  # the cards went on between the read and the order: read again, ask no more
                        continue
                    asked.add(n1)
        if loop.time() - start >= wait_s:
            break
        await asyncio.sleep(RECOVER_EVERY_S / 2)
    rows = []
    peers = {v.oid: v.peer for v in await wallet.vouchers()} if tokens else {}
    for oid, before in tokens.items():
        status = now_tokens.get(oid)
        if status is None:
            outcome, finished = "finished: it left this card", True
        elif status not in MOVING:
            outcome, finished = "finished: it is on this card", True
        else:
            # (trustless: it waits for the authority's trace, which its status words say; not for the other card)
            waits = "" if status == "trustless" else await waiting_on(wallet, "the other card", peers.get(oid))
            outcome, finished = f"still {STATUS_WORDS.get(status, status)}{waits}", False
        rows.append({"what": "transfer", "id": oid.hex(), "before": before, "outcome": outcome, "finished": finished})
    for n1, x in xs.items():
        y = now_xs.get(n1, x)
        words = PHASE_WORDS.get(y.phase, y.phase)
        ttp = " (settled by the TTP)" if n1 in asked else ""
        if y.finished:
            outcome = f"finished: {words}{ttp}"
        elif n1 in asked:
            outcome = f"still {words}" + await waiting_on(wallet, "the TTP", await wallet.ttp())
        else:
            outcome = f"still {words}" + await waiting_on(wallet, "the other card", y.peer)
        rows.append({"what": "exchange", "id": n1.hex(), "before": x.phase, "outcome": outcome,
                     "finished": y.finished})  # fmt: skip
    return rows


async def waiting_on(wallet: Any, who: str, uid: Any) -> str:
    """The end of a "still ..." row: which party (``who``, card ``uid``) has not answered, and where this host sends
    to it (the host's route to its domain, and why it could not deliver there lately, if it could not)."""
    if uid is None:
        return ""
    if uid.domain == wallet.card.domain:
        return f": waiting for {who} {uid}"
    route = await wallet.route(uid.domain)
    if route["where"] == "local":
        where = "a card of your own host"
    elif route["where"] == "route":
        where = f"your host sends to it at {route.get('address')}"
    else:
        where = "your host has no route to its domain: add one to [routes] in your host's config"
    if route.get("undeliverable"):
        where += f"; lately: {route['undeliverable']}"
    return f": waiting for {who} {uid} ({where})"


async def recover_payments(wallet: Any, cfg: wallet_config.WalletConfig) -> list[dict[str, Any]]:
    """Finish e-purse loads, SPEED purchases and Millicent requests a crash interrupted; one row each."""
    from cardnet.cli.speed import _pem_file
    from cardnet.cli.speed_purchase import finish_journal, gone_words
    from cardnet.services.millicent.wallet import WalletError as ScripError
    from cardnet.services.speed.customer import PurchaseError, finish_loads

    rows: list[dict[str, Any]] = []
    loads = await pending_loads(wallet)
    if loads:
        broker, account = cfg.get("broker"), cfg.get("account")
        row: dict[str, Any] = {"what": "e-purse load", "id": f"{len(loads)} load(s)", "finished": False}
        if broker is None or account is None:
            row["outcome"] = "still pending: keep broker and account in the wallet config (`cardnet wallet config`)"
        else:
            try:
                credited = await finish_loads(wallet, broker, account)
                row.update(outcome=f"finished: {credited} credited", finished=True)
            except PurchaseError as exc:
                row["outcome"] = f"still pending: {exc}"
        rows.append(row)
    pending = pending_purchases(cfg)
    if pending:
        ca_cert = cfg.get("ca_cert")
        try:
            if ca_cert is None:
                raise PurchaseError("not_configured", "keep ca_cert in the wallet config (`cardnet wallet config`)")
            out = Path(cfg.get("purchases") or "purchases")
            gone: list[dict[str, Any]] = []
            finished = await finish_journal(wallet, [_pem_file(Path(ca_cert), "the CA certificate")], out,
                                            dropped=gone)  # fmt: skip
            rows += [{"what": "purchase", "id": f["poid"], "outcome": f"finished: paid {f['price']}, "
                      f"{len(f['files'])} product(s) written", "finished": True} for f in finished]  # fmt: skip
            # dropped unpaid, or paid but its key does not open it (kept, the evidence): over, in speed recover's words
            rows += [{"what": "purchase", "id": d["id"], "outcome": gone_words(d, out), "finished": True,
                      "reason": d["reason"]} for d in gone]  # fmt: skip
        except PurchaseError as exc:  # (the ones paid before it stopped are written, and no longer under way)
            rows += [{"what": "purchase", "id": p["id"], "outcome": f"still pending: {exc}", "finished": False}
                     for p in pending_purchases(cfg)]  # fmt: skip
    scrip_wallet = open_scrip_wallet(cfg)
    if scrip_wallet is not None and scrip_wallet.pending():
        try:
            answers = await scrip_wallet.retry_pending(int(time.time()), give_up=False, at=None, vendor=None)
        except ScripError as exc:
            answers = [{"request": rid.hex(), "outcome": "pending", "detail": str(exc)}
                       for rid, _ in scrip_wallet.pending()]  # fmt: skip
        for a in answers:
            done = a.get("outcome") != "pending"  # a request still unsettled stays pending in the scrip wallet
            rows.append({"what": "scrip request", "id": a.get("request", ""),
                         "outcome": f"{'finished' if done else 'still pending'}: {a.get('outcome')} "
                         f"{a.get('detail', '')}".rstrip(), "finished": done})  # fmt: skip
    return rows
