"""SPEED's e-purse on real cards (in-process, durable SQLite stores): the customer's purse and the broker's SAM.

The SAM issues each purse its diversified key sealed to the card; value is loaded and spent through L1/L2/L3 and
S1/S2/S3 carried by the hosts (here: the test), which may drop, duplicate, replay and restart; at the end the
purses' debits and loads equal the SAM's log, and no balance ever went negative.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.card import Applet, Card, StepContext
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki, profile
from cardnet.protocols.speed import purse as pp
from cardnet.store import SqliteStore
from cardnet.wire import Bytes, Field, Message, MType, Schema, Text, Uid, UInt, lookup, register
from conftest import NOW

PIN = "2468"
T0 = NOW.timestamp()
DAY0 = int(T0 // 86400)
POID = b"PO-2026-11-23-0001"


# --- a conductor-like applet: pays from inside its own step with the purse's module functions -------------------
PAY = register(
    0x0F60,
    "test.speed_pay",
    "test",
    Schema(
        "test.speed_pay", [Field(0, "poid", Bytes(64, 1)), Field(1, "currency", Text(3)), Field(2, "amount", UInt())]
    ),
)
PAYING = register(0x0F61, "test.speed_paying", "test", Schema("test.speed_paying", [Field(0, "s1", Bytes(200))]))
SETTLE = register(0x0F62, "test.speed_settle", "test", Schema("test.speed_settle", [Field(0, "s2", Bytes(200))]))
SETTLED = register(0x0F63, "test.speed_settled", "test", Schema("test.speed_settled", [Field(0, "s3", Bytes(200))]))


class Conductor(Applet):
    name = "conductor"
    handles = (PAY, SETTLE)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        if msg.mtype == PAY.code:
            s1 = pa.begin_debit(ctx, params["poid"], params["currency"], params["amount"])
            ctx.put(b"paying", params["poid"])  # its own table, in the same step
            ctx.reply(PAYING, s1=s1)
        else:
            s3 = pa.finish_debit(ctx, params["s2"])
            ctx.delete(b"paying")
            ctx.reply(SETTLED, s3=s3)


# --- the world: cards stepped directly by their owners' applications ---------------------------------------------


@dataclass
class Slot:
    path: Path
    applets: Callable[[], list[Applet]]
    card: Card
    app: Uid = field(default_factory=lambda: Uid(b"\x00" * 12, 0))


@dataclass
class World:
    tmp: Path
    ca: pki.CertificateAuthority
    now: float = T0
    slots: dict[str, Slot] = field(default_factory=dict)
    answers: list[Message] = field(default_factory=list)  # every answer any card gave

    def add(self, name: str, applets: Callable[[], list[Applet]], role: pki.Role = pki.Role.DEVICE) -> Card:
        path = self.tmp / f"{name}.db"
        card = Card(SqliteStore(str(path)), applets=applets())
        personalise(card, self.ca, pin=PIN, now=NOW, role=role, name=name)
        self.slots[name] = Slot(path, applets, card)
        self.login(name)
        return card

    def login(self, name: str) -> None:
        """A fresh application port of ``name``'s card that verified the PIN."""
        slot = self.slots[name]
        grant = self._step(slot.card, cm.PORT_REQUEST.make(Uid(slot.card.uid.domain, 2**32 - 1), slot.card.uid))
        slot.app = slot.card.uid.with_port(cm.PORT_GRANT.parse(grant)["port"])
        assert cm.PIN_RESULT.parse(self._step(slot.card, cm.PIN_VERIFY.make(slot.app, slot.card.uid, pin=PIN)))["ok"]

    def restart(self, name: str) -> None:
        """The card's host crashes and restarts: the card is closed and opened again from its store."""
        slot = self.slots[name]
        slot.card.close()
        slot.card = Card(SqliteStore(str(slot.path)), applets=slot.applets())
        self.login(name)

    def _step(self, card: Card, msg: Message) -> Message:
        outs = card.step(msg, self.now)
        card.ack([o.seq for o in outs if o.seq is not None])
        assert len(outs) == 1, outs
        self.answers.append(outs[0].msg)
        return outs[0].msg

    def ask(self, name: str, mtype: MType, /, **fields: Any) -> Message:
        slot = self.slots[name]
        return self._step(slot.card, mtype.make(slot.app, slot.card.uid, **fields))

    def order(self, name: str, mtype: MType, /, **fields: Any) -> dict[str, Any]:
        """The answer's fields, or ``{"refused": reason, "detail": ...}``."""
        reply = self.ask(name, mtype, **fields)
        if reply.mtype == cm.REFUSED.code:
            r = cm.REFUSED.parse(reply)
            return {"refused": r["reason"], "detail": r["detail"]}
        return dict(lookup(reply.mtype).parse(reply))

    def ok(self, name: str, mtype: MType, /, **fields: Any) -> dict[str, Any]:
        got = self.order(name, mtype, **fields)
        assert "refused" not in got, got
        return got

    def close(self) -> None:
        for slot in self.slots.values():
            slot.card.close()

    # -- the protocol's moves, as the hosts carry them -------------------------------------------------------------
    def issue(self, name: str) -> None:
        key = self.ok("broker", sa.ISSUE_KEY, card_cert=self.slots[name].card.certificate_der)
        assert key["uid"] == self.slots[name].card.uid
        assert self.ok(name, pa.INSTALL_KEY, sealed=key["sealed"])["fresh"]

    def load(self, name: str, currency: str, amount: int) -> dict[str, Any]:
        l1 = self.ok(name, pa.LOAD_BEGIN, currency=currency, amount=amount)["l1"]
        l2 = self.ok("broker", sa.LOAD_START, l1=l1, currency=currency, amount=amount)["l2"]
        l3 = self.ok(name, pa.LOAD, l2=l2)["l3"]
        return self.ok("broker", sa.LOAD_FINISH, l3=l3)

    def s2_for(self, name: str, poid: bytes, currency: str, amount: int) -> bytes:
        s1 = self.ok(name, pa.DEBIT_BEGIN, poid=poid, currency=currency, amount=amount)["s1"]
        return bytes(self.ok("broker", sa.DEBIT_START, s1=s1, poid=poid, currency=currency, amount=amount)["s2"])

    def se(self, name: str, s1: bytes) -> bytes:
        """The card's SE asking the SAM to end its pending debit of ``s1`` (its owner's order)."""
        return bytes(self.ok(name, pa.END_DEBIT, poid=pp.S1.decode(s1).poid)["se"])

    def pay(self, name: str, poid: bytes, currency: str, amount: int) -> dict[str, Any]:
        s3 = self.ok(name, pa.DEBIT, s2=self.s2_for(name, poid, currency, amount))["s3"]
        return self.ok("broker", sa.DEBIT_FINISH, s3=s3)

    def accounts(self, name: str) -> dict[str, dict[str, int]]:
        got = self.ok(name, pa.BALANCE)
        return {a["currency"]: {k: a[k] for k in ("balance", "loaded", "debited")} for a in got["accounts"]}

    def sums(self, day: int) -> tuple[dict[str, int], dict[str, int]]:
        got = self.ok("broker", sa.TOTALS, day=day)
        return {s["currency"]: s["amount"] for s in got["debits"]}, {s["currency"]: s["amount"] for s in got["loads"]}


def purse_applets() -> list[Applet]:
    return [pa.PurseApplet(), Conductor()]


def sam_applets() -> list[Applet]:
    return [sa.SamApplet()]


def make_world(tmp: Path, ca: pki.CertificateAuthority, purses: tuple[str, ...] = ("alice",)) -> World:
    w = World(tmp, ca)
    w.add("broker", sam_applets, pki.Role.SERVICE)
    assert w.ok("broker", sa.INIT)["fresh"]
    for name in purses:
        w.add(name, purse_applets)
        w.issue(name)
    return w


# --- the story --------------------------------------------------------------------------------------------------


def test_load_and_debit_show_in_the_balances_and_in_the_sams_log_and_totals(purse_world: World) -> None:
    w = purse_world
    assert w.ok("broker", sa.INIT) == {"fresh": False}  # drawn once
    assert w.load("alice", "EUR", 1000) == {
        "uid": w.slots["alice"].card.uid,
        "m": 0,
        "currency": "EUR",
        "amount": 1000,
        "day": DAY0,
    }
    w.load("alice", "USD", 500)
    debited = w.pay("alice", POID, "EUR", 250)
    assert debited == {
        "uid": w.slots["alice"].card.uid,
        "n": 0,
        "poid": POID,
        "currency": "EUR",
        "amount": 250,
        "day": DAY0,
    }
    assert w.accounts("alice") == {
        "EUR": {"balance": 750, "loaded": 1000, "debited": 250},
        "USD": {"balance": 500, "loaded": 500, "debited": 0},
    }
    bal = w.ok("alice", pa.BALANCE)
    assert (bal["n"], bal["m"], bal["pending_debits"], bal["pending_loads"], bal["kept"], bal["keyed"]) == (
        1,
        2,
        0,
        0,
        1,
        True,
    )
    log = w.ok("broker", sa.LOG, day=DAY0)
    alice = w.slots["alice"].card.uid
    assert log == {
        "day": DAY0,
        "entries": [
            {"kind": "load", "uid": alice, "ctr": 0, "currency": "EUR", "amount": 1000},
            {"kind": "load", "uid": alice, "ctr": 1, "currency": "USD", "amount": 500},
            {"kind": "debit", "uid": alice, "ctr": 0, "poid": POID, "currency": "EUR", "amount": 250},
        ],
    }
    assert w.sums(DAY0) == ({"EUR": 250}, {"EUR": 1000, "USD": 500})
    assert w.sums(DAY0 + 1) == ({}, {})
    assert w.ok("broker", sa.LOG, day=DAY0 - 1)["entries"] == []
    # the next day's debit goes to the next day's log
    w.now += 86400
    assert w.pay("alice", b"PO-2", "USD", 125)["day"] == DAY0 + 1
    assert w.sums(DAY0 + 1) == ({"USD": 125}, {})
    assert w.sums(DAY0) == ({"EUR": 250}, {"EUR": 1000, "USD": 500})


def test_a_replayed_s2_after_a_restart_gives_the_same_proof_and_debits_nothing(purse_world: World) -> None:
    w = purse_world
    w.load("alice", "EUR", 1000)
    s2 = w.s2_for("alice", POID, "EUR", 250)
    s3 = w.ok("alice", pa.DEBIT, s2=s2)["s3"]  # the S3 is lost on the way, and alice's host crashes
    w.restart("alice")
    assert w.accounts("alice")["EUR"]["balance"] == 750  # the debit was durable with the step that made the S3
    assert w.ok("alice", pa.PROOFS) == {"s3": [s3], "l3": [w.ok("alice", pa.PROOFS)["l3"][0]]}
    again = w.ok("alice", pa.DEBIT, s2=s2)["s3"]  # the broker's host sends the S2 again
    assert again == s3
    assert w.accounts("alice")["EUR"] == {"balance": 750, "loaded": 1000, "debited": 250}
    # the kept proof reaches the SAM: logged once, however often it comes
    first = w.ok("broker", sa.DEBIT_FINISH, s3=s3)
    w.restart("broker")
    w.now += 86400  # even a day later: the same answer, nothing logged anew
    assert w.ok("broker", sa.DEBIT_FINISH, s3=s3) == first
    assert first["day"] == DAY0
    assert w.sums(DAY0)[0] == {"EUR": 250} and w.sums(DAY0 + 1) == ({}, {})
    assert len(w.ok("broker", sa.LOG, day=DAY0)["entries"]) == 2


def test_a_second_purse_cannot_use_the_first_cards_s2(purse_world: World) -> None:
    w = purse_world
    w.load("alice", "EUR", 1000)
    w.load("bob", "EUR", 1000)
    s2 = w.s2_for("alice", POID, "EUR", 250)
    assert w.order("bob", pa.DEBIT, s2=s2)["refused"] == "bad_mac"  # no pending: still the MAC is the first check
    assert "s1" in w.ok("bob", pa.DEBIT_BEGIN, poid=POID, currency="EUR", amount=250)  # bob begins the same order
    assert w.order("bob", pa.DEBIT, s2=s2)["refused"] == "bad_mac"
    assert w.accounts("bob")["EUR"]["balance"] == 1000
    # bob's S1 for that order is refused by the SAM: it is alice's debit
    s1 = w.ok("bob", pa.DEBIT_BEGIN, poid=POID, currency="EUR", amount=250)["s1"]
    got = w.order("broker", sa.DEBIT_START, s1=s1, poid=POID, currency="EUR", amount=250)
    assert got["refused"] == "already_paid"
    assert w.ok("alice", pa.DEBIT, s2=s2)["s3"]
    assert w.accounts("alice")["EUR"]["balance"] == 750


def test_the_same_s3_or_l3_gives_the_same_answer_and_an_unknown_one_is_refused(purse_world: World) -> None:
    w = purse_world
    l1 = w.ok("alice", pa.LOAD_BEGIN, currency="EUR", amount=1000)["l1"]
    l2 = w.ok("broker", sa.LOAD_START, l1=l1, currency="EUR", amount=1000)["l2"]
    assert w.ok("broker", sa.LOAD_START, l1=l1, currency="EUR", amount=1000)["l2"] == l2  # the same L1: the same L2
    assert w.order("broker", sa.LOAD_START, l1=l1, currency="EUR", amount=999)["refused"] == "not_due"
    l3 = w.ok("alice", pa.LOAD, l2=l2)["l3"]
    assert w.ok("alice", pa.LOAD, l2=l2)["l3"] == l3  # a duplicated L2 credits once
    loaded = [w.ok("broker", sa.LOAD_FINISH, l3=l3) for _ in range(3)]
    assert loaded[0] == loaded[1] == loaded[2]
    assert w.accounts("alice")["EUR"]["balance"] == 1000 and w.sums(DAY0)[1] == {"EUR": 1000}
    s1 = w.ok("alice", pa.DEBIT_BEGIN, poid=POID, currency="EUR", amount=250)["s1"]
    assert w.ok("alice", pa.DEBIT_BEGIN, poid=POID, currency="EUR", amount=250)["s1"] == s1  # begun again: same S1
    s2 = w.ok("broker", sa.DEBIT_START, s1=s1, poid=POID, currency="EUR", amount=250)["s2"]
    assert w.ok("broker", sa.DEBIT_START, s1=s1, poid=POID, currency="EUR", amount=250)["s2"] == s2
    s3 = w.ok("alice", pa.DEBIT, s2=s2)["s3"]
    forged = pp.S3.decode(s3)
    for bad, reason in (
        (pp.S3.make(b"k" * 32, **{**forged.body(), "n": 9}).encode(), "no_pending"),
        (pp.S3.make(b"k" * 32, **forged.body()).encode(), "bad_mac"),
        (b"\xa0", "missing_key"),
    ):
        assert w.order("broker", sa.DEBIT_FINISH, s3=bad)["refused"] == reason
    assert w.ok("broker", sa.DEBIT_FINISH, s3=s3) == w.ok("broker", sa.DEBIT_FINISH, s3=s3)
    assert len(w.ok("broker", sa.LOG, day=DAY0)["entries"]) == 2


def test_a_debit_larger_than_the_balance_is_refused_on_the_card(purse_world: World) -> None:
    w = purse_world
    w.load("alice", "EUR", 300)
    before = w.ok("alice", pa.BALANCE)
    got = w.order("alice", pa.DEBIT_BEGIN, poid=POID, currency="EUR", amount=301)
    assert got["refused"] == "insufficient"
    assert w.ok("alice", pa.BALANCE) == before
    s2a = w.s2_for("alice", b"a", "EUR", 200)
    s2b = w.s2_for("alice", b"b", "EUR", 200)
    w.ok("alice", pa.DEBIT, s2=s2a)
    before = w.ok("alice", pa.BALANCE)
    assert w.order("alice", pa.DEBIT, s2=s2b)["refused"] == "insufficient"
    assert w.ok("alice", pa.BALANCE) == before  # nothing changed: still pending
    w.load("alice", "EUR", 100)
    w.ok("alice", pa.DEBIT, s2=s2b)
    assert w.accounts("alice")["EUR"] == {"balance": 0, "loaded": 400, "debited": 400}


def test_unprivileged_orders_are_refused(purse_world: World) -> None:
    w = purse_world
    for name, orders in (("alice", pa.ORDERS), ("broker", sa.ORDERS)):
        card = w.slots[name].card
        grant = w._step(card, cm.PORT_REQUEST.make(Uid(card.uid.domain, 2**32 - 1), card.uid))
        stranger = card.uid.with_port(cm.PORT_GRANT.parse(grant)["port"])  # a port, but no PIN
        for mt in orders:
            reply = w._step(card, Message(stranger, card.uid, mt.code, b"\xa0"))
            assert cm.REFUSED.parse(reply)["reason"] == "privileged", mt.name


def test_a_purse_takes_one_key_once(purse_world: World) -> None:
    w = purse_world
    alice = w.slots["alice"].card
    sealed = w.ok("broker", sa.ISSUE_KEY, card_cert=alice.certificate_der)["sealed"]
    assert w.ok("alice", pa.INSTALL_KEY, sealed=sealed) == {"fresh": False}  # the same key again
    other = profile.hpke_seal(alice.public_key, b"x" * 32, pa.KEY_INFO)
    assert w.order("alice", pa.INSTALL_KEY, sealed=other)["refused"] == "key_installed"
    bob_sealed = w.ok("broker", sa.ISSUE_KEY, card_cert=w.slots["bob"].card.certificate_der)["sealed"]
    assert w.order("alice", pa.INSTALL_KEY, sealed=bob_sealed)["refused"] == "bad_ciphertext"
    wrong_info = profile.hpke_seal(alice.public_key, b"x" * 32, b"another use")
    assert w.order("alice", pa.INSTALL_KEY, sealed=wrong_info)["refused"] == "bad_ciphertext"


def test_a_purse_without_a_key_and_a_sam_without_a_master_refuse(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = World(tmp_path, ca)
    try:
        w.add("broker", sam_applets, pki.Role.SERVICE)
        w.add("carol", purse_applets)
        assert w.order("carol", pa.LOAD_BEGIN, currency="EUR", amount=1)["refused"] == "no_key"
        assert w.ok("carol", pa.BALANCE)["keyed"] is False
        cert = w.slots["carol"].card.certificate_der
        assert w.order("broker", sa.ISSUE_KEY, card_cert=cert)["refused"] == "not_initialised"
    finally:
        w.close()


def test_the_sam_issues_keys_only_to_cards_of_its_ca(purse_world: World, ca: pki.CertificateAuthority) -> None:
    w = purse_world
    broker_cert = w.slots["broker"].card.certificate_der  # a service card, not a purse
    assert w.order("broker", sa.ISSUE_KEY, card_cert=broker_cert)["refused"] == "wrong_usage"
    stranger_ca = pki.CertificateAuthority.create("another CA", now=NOW)
    key = profile.generate_private_key()
    cert = stranger_ca.issue(pki.Role.DEVICE, Uid.card(b"\x07" * 12), key.public_key(), now=NOW)
    got = w.order("broker", sa.ISSUE_KEY, card_cert=pki.cert_to_der(cert))
    assert "refused" in got and got["refused"] != "applet_error"
    assert w.order("broker", sa.ISSUE_KEY, card_cert=b"not a certificate")["refused"] not in ("applet_error", None)


def test_the_sam_refuses_the_same_debit_number_for_another_order(
    purse_world: World, ca: pki.CertificateAuthority
) -> None:
    """A host that holds a genuine card's key (here: a key certified by the CA outside any card) forges S1s."""
    w = purse_world
    w.load("alice", "EUR", 1000)
    key = profile.generate_private_key()
    uid = Uid.card(b"\x0e" * 12)
    cert = ca.issue(pki.Role.DEVICE, uid, key.public_key(), now=NOW)
    got = w.ok("broker", sa.ISSUE_KEY, card_cert=pki.cert_to_der(cert))
    purse_key = profile.hpke_open(key, got["sealed"], pa.KEY_INFO)

    def s1(n: int, poid: bytes, amount: int = 100) -> bytes:
        return pp.S1.make(purse_key, uid=uid, n=n, rc=b"r" * 16, poid=poid, currency="EUR", amount=amount).encode()

    assert w.ok("broker", sa.DEBIT_START, s1=s1(5, b"one"), poid=b"one", currency="EUR", amount=100)
    assert w.order("broker", sa.DEBIT_START, s1=s1(5, b"two"), poid=b"two", currency="EUR", amount=100) == {
        "refused": "conflict",
        "detail": f"debit 5 of {uid} was authorised for another order or amount",
    }
    got = w.order("broker", sa.DEBIT_START, s1=s1(5, b"one", 99), poid=b"one", currency="EUR", amount=99)
    assert got["refused"] == "conflict"
    got = w.order("broker", sa.DEBIT_START, s1=s1(6, b"one"), poid=b"one", currency="EUR", amount=100)
    assert got["refused"] == "already_paid"
    got = w.order("broker", sa.DEBIT_START, s1=s1(7, b"three"), poid=b"three", currency="EUR", amount=101)
    assert got["refused"] == "not_due"


def test_a_load_refused_for_good_ends_on_the_card_only_with_the_sams_lr(purse_world: World) -> None:
    """The SAM's LR for a load it never authorised makes the card forget it (durably), and the SAM never authorises
    that load afterwards; a load the SAM authorised gets no LR, and no host-made or other card's LR drops a load."""
    w = purse_world
    refused = w.ok("alice", pa.LOAD_BEGIN, currency="EUR", amount=500)["l1"]
    charged = w.ok("alice", pa.LOAD_BEGIN, currency="EUR", amount=300)["l1"]
    l2 = w.ok("broker", sa.LOAD_START, l1=charged, currency="EUR", amount=300)["l2"]  # the L2 is lost on the way
    assert w.order("broker", sa.REFUSE_L1, l1=charged)["refused"] == "authorised"
    lr = w.ok("broker", sa.REFUSE_L1, l1=refused)["lr"]
    assert w.ok("broker", sa.REFUSE_L1, l1=refused)["lr"] == lr  # the same again
    good = pp.LR.decode(lr)
    forged = pp.LR(uid=good.uid, m=1, rc=pp.L1.decode(charged).rc, mac=good.mac).encode()  # the charged one, by a host
    assert w.order("alice", pa.DROP_LOAD, lr=forged)["refused"] == "bad_mac"
    assert w.order("bob", pa.DROP_LOAD, lr=lr)["refused"] in ("bad_mac", "mismatch")  # another card's LR
    assert w.ok("alice", pa.BALANCE)["pending_loads"] == 2
    w.restart("alice")
    assert w.ok("alice", pa.DROP_LOAD, lr=lr) == {"m": 0, "dropped": True}
    w.restart("alice")
    assert w.ok("alice", pa.DROP_LOAD, lr=lr) == {"m": 0, "dropped": False}  # a replay: nothing more
    assert w.ok("alice", pa.PENDING_LOADS)["l1"] == [charged]
    assert w.order("broker", sa.LOAD_START, l1=refused, currency="EUR", amount=500)["refused"] == "load_refused"
    w.restart("broker")
    assert w.order("broker", sa.LOAD_START, l1=refused, currency="EUR", amount=500)["refused"] == "load_refused"
    l3 = w.ok("alice", pa.LOAD, l2=l2)["l3"]  # the charged load is credited, late
    w.ok("broker", sa.LOAD_FINISH, l3=l3)
    assert w.accounts("alice")["EUR"] == {"balance": 300, "loaded": 300, "debited": 0}
    assert w.sums(DAY0)[1] == {"EUR": 300}


def test_a_17th_pending_debit_is_refused_and_the_oldest_authorised_one_is_still_debited(purse_world: World) -> None:
    """Sixteen debits under way, the SAM authorised the first (its S2 lost on the way): the card refuses a 17th
    (``debits_pending``) and keeps every one, across a restart, so the first one's S2, late, still debits and its S3
    is logged; room comes back once a debit ends. (The purse used to drop the oldest: its S2 was refused no_pending,
    the SAM's authorisation stayed open for ever and the purchase could never be finished.)"""
    w = purse_world
    w.load("alice", "EUR", 1000)
    first = w.s2_for("alice", b"first", "EUR", 250)
    for i in range(1, pp.MAX_PENDING):
        w.ok("alice", pa.DEBIT_BEGIN, poid=b"p-%d" % i, currency="EUR", amount=1)
    got = w.order("alice", pa.DEBIT_BEGIN, poid=b"one-more", currency="EUR", amount=1)
    assert got["refused"] == "debits_pending" and "finish them first" in got["detail"]
    w.restart("alice")
    assert w.ok("alice", pa.BALANCE)["pending_debits"] == pp.MAX_PENDING
    assert pp.S1.decode(w.ok("alice", pa.PENDING_DEBITS)["s1"][0]).poid == b"first"
    s3 = w.ok("alice", pa.DEBIT, s2=first)["s3"]
    assert w.ok("broker", sa.DEBIT_FINISH, s3=s3)["amount"] == 250
    assert w.accounts("alice")["EUR"]["balance"] == 750 and w.sums(DAY0)[0] == {"EUR": 250}
    assert "s1" in w.ok("alice", pa.DEBIT_BEGIN, poid=b"one-more", currency="EUR", amount=1)


def test_a_debit_refused_for_good_ends_on_the_card_only_with_the_sams_sr(purse_world: World) -> None:
    """The SAM's SR for a debit it never authorised makes the card forget it (durably), and the SAM never authorises
    that debit afterwards; a debit the SAM authorised gets no SR, and no host-made or other card's SR drops a debit."""
    w = purse_world
    w.load("alice", "EUR", 1000)
    refused = w.ok("alice", pa.DEBIT_BEGIN, poid=b"refused", currency="EUR", amount=500)["s1"]
    s2 = w.s2_for("alice", b"authorised", "EUR", 300)  # the S2 is lost on the way
    authorised = w.ok("alice", pa.PENDING_DEBITS)["s1"][1]
    assert w.order("broker", sa.END_DEBIT, se=w.se("alice", authorised))["refused"] == "authorised"
    se = w.se("alice", refused)
    sr = w.ok("broker", sa.END_DEBIT, se=se)["sr"]
    assert w.ok("broker", sa.END_DEBIT, se=se)["sr"] == sr  # the same again
    good = pp.SR.decode(sr)
    forged = pp.SR(uid=good.uid, n=1, rc=pp.S1.decode(authorised).rc, poid=b"authorised", mac=good.mac).encode()
    assert w.order("alice", pa.DROP_DEBIT, sr=forged)["refused"] == "bad_mac"
    assert w.order("bob", pa.DROP_DEBIT, sr=sr)["refused"] in ("bad_mac", "mismatch")  # another card's SR
    assert w.ok("alice", pa.BALANCE)["pending_debits"] == 2
    w.restart("alice")
    assert w.ok("alice", pa.DROP_DEBIT, sr=sr) == {"n": 0, "dropped": True}
    w.restart("alice")
    assert w.ok("alice", pa.DROP_DEBIT, sr=sr) == {"n": 0, "dropped": False}  # a replay: nothing more
    assert w.ok("alice", pa.PENDING_DEBITS)["s1"] == [authorised]
    got = w.order("broker", sa.DEBIT_START, s1=refused, poid=b"refused", currency="EUR", amount=500)
    assert got["refused"] == "debit_refused"
    w.restart("broker")
    got = w.order("broker", sa.DEBIT_START, s1=refused, poid=b"refused", currency="EUR", amount=500)
    assert got["refused"] == "debit_refused"
    s3 = w.ok("alice", pa.DEBIT, s2=s2)["s3"]  # the authorised debit is made, late
    w.ok("broker", sa.DEBIT_FINISH, s3=s3)
    assert w.order("alice", pa.DROP_DEBIT, sr=w.ok("broker", sa.END_DEBIT, se=se)["sr"])["dropped"] is False
    assert w.accounts("alice")["EUR"] == {"balance": 700, "loaded": 1000, "debited": 300}
    assert w.sums(DAY0)[0] == {"EUR": 300}


def test_an_s2_the_purse_cannot_pay_is_declined_and_the_sams_sr_frees_its_place(purse_world: World) -> None:
    """Two debits authorised at once draw the balance down: the second S2 is refused ``insufficient``. The card
    declines it (durably: that S2 is never applied), the SAM drops its authorisation on the card's SE and answers the
    SR, on which the card forgets the debit: its place is free, nothing was debited or logged for it, and the
    SAM holds no open authorisation. Without the decline the SAM refuses to end an authorised debit."""
    w = purse_world
    w.load("alice", "EUR", 1000)
    first = w.s2_for("alice", b"first", "EUR", 700)
    second = w.s2_for("alice", b"second", "EUR", 600)
    w.ok("broker", sa.DEBIT_FINISH, s3=w.ok("alice", pa.DEBIT, s2=first)["s3"])
    assert w.order("alice", pa.DEBIT, s2=second)["refused"] == "insufficient"
    plain = w.ok("alice", pa.END_DEBIT, poid=b"second")["se"]  # the owner's SE, not declining the S2
    assert w.order("broker", sa.END_DEBIT, se=plain)["refused"] == "authorised"
    se = w.ok("alice", pa.DECLINE_DEBIT, s2=second)["se"]
    w.restart("alice")
    assert w.ok("alice", pa.DECLINE_DEBIT, s2=second)["se"] == se  # the same again
    assert w.ok("alice", pa.END_DEBIT, poid=b"second")["se"] == se  # what `end-debits` sends after a lost answer
    w.load("alice", "EUR", 500)
    assert w.order("alice", pa.DEBIT, s2=second)["refused"] == "debit_refused"  # declined: never applied
    assert w.ok("alice", pa.BALANCE)["pending_debits"] == 1  # the place is held until the SAM's SR
    assert w.ok("broker", sa.DAYS)["open"] == 1
    w.restart("broker")
    sr = w.ok("broker", sa.END_DEBIT, se=se)["sr"]
    assert w.ok("broker", sa.END_DEBIT, se=se)["sr"] == sr  # the same again
    assert w.ok("broker", sa.DAYS)["open"] == 0  # the authorisation is gone: no S3 of it can exist
    got = w.order("broker", sa.DEBIT_START, s1=w.ok("alice", pa.PENDING_DEBITS)["s1"][0], poid=b"second",
                  currency="EUR", amount=600)  # fmt: skip
    assert got["refused"] == "debit_refused"
    assert w.ok("alice", pa.DROP_DEBIT, sr=sr) == {"n": 1, "dropped": True}
    assert w.ok("alice", pa.BALANCE)["pending_debits"] == 0 and w.ok("alice", pa.PENDING_DEBITS)["s1"] == []
    assert w.order("alice", pa.DEBIT, s2=second)["refused"] == "no_pending"
    assert w.accounts("alice")["EUR"] == {"balance": 800, "loaded": 1500, "debited": 700}
    assert w.sums(DAY0)[0] == {"EUR": 700}  # purse debits = the SAM's log


def test_only_the_cards_own_se_ends_a_debit_an_s1_does_not(purse_world: World) -> None:
    """Whoever holds a debit's S1 (it travels to the broker) cannot have the SAM end it: the SAM ends a debit only on
    the card's SE, which the card makes on its owner's (PIN-verified) order; an S1 or an altered SE does not pass
    for one, and the payment is then made as usual."""
    w = purse_world
    w.load("alice", "EUR", 1000)
    s1 = w.ok("alice", pa.DEBIT_BEGIN, poid=b"in-flight", currency="EUR", amount=250)["s1"]
    assert w.order("broker", sa.END_DEBIT, se=s1)["refused"] == "unknown_key"  # an S1 is no SE
    se = pp.SE.decode(w.ok("alice", pa.END_DEBIT, poid=b"in-flight")["se"])
    for forged in (
        pp.SE(uid=se.uid, n=se.n, rc=se.rc, declined=True, poid=se.poid, mac=se.mac),  # says the card declined
        pp.SE(uid=se.uid, n=se.n + 1, rc=se.rc, declined=False, poid=se.poid, mac=se.mac),  # another debit
    ):
        assert w.order("broker", sa.END_DEBIT, se=forged.encode())["refused"] == "bad_mac"
    got = w.ok("broker", sa.DEBIT_START, s1=s1, poid=b"in-flight", currency="EUR", amount=250)  # not ended
    w.ok("broker", sa.DEBIT_FINISH, s3=w.ok("alice", pa.DEBIT, s2=got["s2"])["s3"])
    assert w.accounts("alice")["EUR"]["debited"] == 250 and w.sums(DAY0)[0] == {"EUR": 250}


def test_the_master_key_never_leaves_the_sam(purse_world: World) -> None:
    w = purse_world
    w.load("alice", "EUR", 1000)
    w.pay("alice", POID, "EUR", 250)
    w.ok("broker", sa.LOG, day=DAY0)
    w.ok("broker", sa.TOTALS, day=DAY0)
    master = w.slots["broker"].card._read(("a.sam", b"master"))
    assert master is not None and len(master) == 32
    assert not [m for m in w.answers if master in m.param]


def test_another_applet_pays_inside_its_own_step(purse_world: World) -> None:
    w = purse_world
    w.load("alice", "EUR", 1000)
    s1 = w.ok("alice", PAY, poid=POID, currency="EUR", amount=250)["s1"]
    assert w.ok("alice", pa.BALANCE)["pending_debits"] == 1
    s2 = w.ok("broker", sa.DEBIT_START, s1=s1, poid=POID, currency="EUR", amount=250)["s2"]
    s3 = w.ok("alice", SETTLE, s2=s2)["s3"]
    assert w.ok("alice", pa.PROOFS)["s3"] == [s3]
    assert w.ok("broker", sa.DEBIT_FINISH, s3=s3)["amount"] == 250
    assert w.accounts("alice")["EUR"]["balance"] == 750
    assert w.order("alice", PAY, poid=POID, currency="EUR", amount=250)["refused"] == "already_paid"


# --- the property: conservation under drops, duplicates, replays and restarts -------------------------------------

FATE = st.sampled_from(["deliver", "drop", "dup"])
OP = st.one_of(
    st.tuples(st.just("load"), st.sampled_from(["EUR", "USD"]), st.integers(1, 800), FATE, FATE),
    st.tuples(st.just("debit"), st.sampled_from(["EUR", "USD"]), st.integers(1, 600), FATE, FATE),
    st.tuples(st.just("replay"), st.integers(0, 2**16), st.just(""), st.just(""), st.just("")),
    st.tuples(st.just("restart"), st.sampled_from(["alice", "broker"]), st.just(""), st.just(""), st.just("")),
    st.tuples(st.just("later"), st.integers(1, 40_000), st.just(""), st.just(""), st.just("")),
    st.tuples(st.just("refuse"), st.sampled_from(["EUR", "USD"]), st.integers(1, 800), FATE, st.booleans()),
    st.tuples(st.just("end"), st.sampled_from(["EUR", "USD"]), st.integers(1, 600), FATE, st.booleans()),
    st.tuples(st.just("decline"), st.integers(0, 2**16), st.just(""), FATE, st.just("")),
)
# (debit_refused: an S2 presented again after the card declined it)
ALLOWED = {"insufficient", "no_pending", "mismatch", "conflict", "overflow", "debit_refused"}
# a start of a load or debit the SAM refused for good: its record, or (once the SAM pruned it) the card's floor
NEVER = {"load_refused", "debit_refused", "pruned"}


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OP, max_size=40))
def test_purse_debits_and_loads_equal_the_sams_log_under_drops_duplicates_and_restarts(
    ops: list[tuple[Any, ...]], ca: pki.CertificateAuthority
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = make_world(Path(tmp), ca)
        try:
            run_ops(w, ops)
        finally:
            w.close()


REPS = {"deliver": 1, "drop": 0, "dup": 2}  # a fate: how often a message is delivered


class PurseMoves:
    """The purse's and the SAM's hosts' moves in a hypothesis run: each S2 or L2 made is delivered to the purse and
    each S3 or L3 to the SAM (``finish``) once, twice or not at all, made ones replayed, cards restarted; what the
    card proved it debited and credited (``debits``, ``credits``: by counter)."""

    def __init__(self, w: World, finish: Callable[[MType, bytes, int], None]) -> None:
        self.w = w
        self.finish = finish
        self.to_card: list[tuple[MType, str, bytes]] = []  # every S2 and L2 made, to replay
        self.to_sam: list[tuple[MType, str, bytes]] = []  # every S3 and L3 made, to replay
        self.debits: dict[int, tuple[str, int]] = {}  # n -> what the card debited (from the S3s it gave)
        self.credits: dict[int, tuple[str, int]] = {}

    def to_purse(self, mtype: MType, field_name: str, raw: bytes, times: int) -> bytes | None:
        """Deliver an S2, L2, LR or SR ``times`` times; the proof the card gave (the same each time), if any."""
        out = None
        for _ in range(times):
            got = self.w.order("alice", mtype, **{field_name: raw})
            if "refused" in got:
                assert got["refused"] in ALLOWED, got
                return None
            if mtype in (pa.DROP_LOAD, pa.DROP_DEBIT):
                continue
            proof_raw = bytes(got["s3"] if "s3" in got else got["l3"])
            assert out is None or proof_raw == out
            out = proof_raw
            if "s3" in got:
                s3 = pp.S3.decode(proof_raw)
                assert self.debits.setdefault(s3.n, (s3.currency, s3.amount)) == (s3.currency, s3.amount)
                self.to_sam.append((sa.DEBIT_FINISH, "s3", proof_raw))
            else:
                l3 = pp.L3.decode(proof_raw)
                assert self.credits.setdefault(l3.m, (l3.currency, l3.amount)) == (l3.currency, l3.amount)
                self.to_sam.append((sa.LOAD_FINISH, "l3", proof_raw))
        return out

    def _ended(self, s1: bytes, sr: bytes, times: int) -> None:
        """Deliver the SAM's ``sr`` for the debit of ``s1`` ``times`` times; the SAM never authorises it after."""
        self.to_card.append((pa.DROP_DEBIT, "sr", sr))
        self.to_purse(pa.DROP_DEBIT, "sr", sr, times)
        s1m = pp.S1.decode(s1)
        refused = self.w.order("broker", sa.DEBIT_START, s1=s1, poid=s1m.poid, currency=s1m.currency, amount=s1m.amount)
        assert refused.get("refused") in NEVER, refused  # never authorised after its SR

    def move(self, i: int, kind: str, a: Any, b: Any, fate1: str, fate2: str) -> bool:
        """Make move number ``i`` (load, debit, replay or restart); False for another kind (the caller's)."""
        w, reps, finish = self.w, REPS, self.finish
        if kind == "load":
            l1 = w.order("alice", pa.LOAD_BEGIN, currency=a, amount=b)
            if "refused" in l1:
                assert l1["refused"] in ("overflow", "loads_pending")
                return True
            l2 = w.ok("broker", sa.LOAD_START, l1=l1["l1"], currency=a, amount=b)["l2"]
            self.to_card.append((pa.LOAD, "l2", l2))
            l3 = self.to_purse(pa.LOAD, "l2", l2, reps[fate1])
            if l3 is not None:
                finish(sa.LOAD_FINISH, l3, reps[fate2])
        elif kind == "debit":
            poid = b"po-%d" % i
            s1 = w.order("alice", pa.DEBIT_BEGIN, poid=poid, currency=a, amount=b)
            if "refused" in s1:
                assert s1["refused"] in ("insufficient", "debits_pending")  # (16 pending: none is ever dropped)
                return True
            s2 = w.ok("broker", sa.DEBIT_START, s1=s1["s1"], poid=poid, currency=a, amount=b)["s2"]
            self.to_card.append((pa.DEBIT, "s2", s2))
            s3 = self.to_purse(pa.DEBIT, "s2", s2, reps[fate1])
            if s3 is not None:
                finish(sa.DEBIT_FINISH, s3, reps[fate2])
        elif kind == "refuse":  # a load the broker refuses for good (fate2: the oldest one pending, if any, instead)
            pending = w.ok("alice", pa.PENDING_LOADS)["l1"]
            if fate2 and pending:
                l1 = pending[0]
            else:
                got = w.order("alice", pa.LOAD_BEGIN, currency=a, amount=b)
                if "refused" in got:
                    assert got["refused"] in ("overflow", "loads_pending")
                    return True
                l1 = got["l1"]
            lr = w.order("broker", sa.REFUSE_L1, l1=l1)
            if "refused" in lr:  # the SAM authorised it: it is charged, never refused
                assert lr["refused"] == "authorised" and fate2
                return True
            self.to_card.append((pa.DROP_LOAD, "lr", lr["lr"]))
            self.to_purse(pa.DROP_LOAD, "lr", lr["lr"], reps[fate1])
            l1m = pp.L1.decode(l1)
            refused = w.order("broker", sa.LOAD_START, l1=l1, currency=l1m.currency, amount=l1m.amount)
            assert refused.get("refused") in NEVER, refused  # never authorised after its LR
        elif kind == "end":  # a debit whose purchase is over ends by the SAM's SR (fate2: the oldest pending instead)
            pending = w.ok("alice", pa.PENDING_DEBITS)["s1"]
            if fate2 and pending:
                s1 = pending[0]
            else:
                got = w.order("alice", pa.DEBIT_BEGIN, poid=b"end-%d" % i, currency=a, amount=b)
                if "refused" in got:
                    assert got["refused"] in ("insufficient", "debits_pending")
                    return True
                s1 = got["s1"]
            sr = w.order("broker", sa.END_DEBIT, se=w.se("alice", s1))  # the card's owner ends it (its SE)
            if "refused" in sr:  # the SAM authorised it (its S2 exists, not declined): it ends by debiting
                assert sr["refused"] == "authorised" and fate2
                return True
            self._ended(s1, sr["sr"], reps[fate1])
        elif kind == "decline":  # the card declines an S2 it has not applied (too little in the purse, say)
            pending = {pp.S1.decode(x).poid: x for x in w.ok("alice", pa.PENDING_DEBITS)["s1"]}
            s2s = [raw for mtype, _, raw in self.to_card if mtype is pa.DEBIT and pp.S2.decode(raw).poid in pending]
            if not s2s:
                return True
            s2 = s2s[a % len(s2s)]
            se = w.ok("alice", pa.DECLINE_DEBIT, s2=s2)["se"]
            assert w.order("alice", pa.DEBIT, s2=s2)["refused"] == "debit_refused"  # never applied from now on
            self._ended(pending[pp.S2.decode(s2).poid], w.ok("broker", sa.END_DEBIT, se=se)["sr"], reps[fate1])
        elif kind == "replay":
            pool = self.to_card + self.to_sam
            if pool:
                mtype, field_name, raw = pool[a % len(pool)]
                if mtype in (pa.LOAD, pa.DEBIT, pa.DROP_LOAD, pa.DROP_DEBIT):
                    self.to_purse(mtype, field_name, raw, 1)
                else:
                    finish(mtype, raw, 1)
        elif kind == "restart":
            w.restart(a)
        else:
            return False
        return True


def run_ops(w: World, ops: list[tuple[Any, ...]]) -> None:
    days = {DAY0}

    def finish(mtype: MType, raw: bytes, times: int) -> None:
        field_name = "s3" if mtype is sa.DEBIT_FINISH else "l3"
        for _ in range(times):
            got = w.order("broker", mtype, **{field_name: raw})
            assert "refused" not in got, got
            days.add(got["day"])

    moves = PurseMoves(w, finish)
    debits, credits = moves.debits, moves.credits
    for i, (kind, a, b, fate1, fate2) in enumerate(ops):
        if not moves.move(i, kind, a, b, fate1, fate2):
            w.now += a
        for acc in w.accounts("alice").values():  # the card's own books add up, never below zero
            assert acc["balance"] >= 0 and acc["balance"] == acc["loaded"] - acc["debited"]
        for cur, acc in w.accounts("alice").items():
            model = sum(x for c, x in credits.values() if c == cur) - sum(x for c, x in debits.values() if c == cur)
            assert acc["balance"] == model

    # heal: the purse's host presents every kept proof again (what it does after a crash)
    kept = w.ok("alice", pa.PROOFS)
    for raw in kept["s3"]:
        finish(sa.DEBIT_FINISH, raw, 1)
    for raw in kept["l3"]:
        finish(sa.LOAD_FINISH, raw, 1)
    sam_debits: dict[str, int] = {}
    sam_loads: dict[str, int] = {}
    for day in days:
        d, ld = w.sums(day)
        for cur, x in d.items():
            sam_debits[cur] = sam_debits.get(cur, 0) + x
        for cur, x in ld.items():
            sam_loads[cur] = sam_loads.get(cur, 0) + x
    accounts = w.accounts("alice")
    assert {c: a["debited"] for c, a in accounts.items() if a["debited"]} == sam_debits
    assert {c: a["loaded"] for c, a in accounts.items() if a["loaded"]} == sam_loads
    entries = sum(len(w.ok("broker", sa.LOG, day=day)["entries"]) for day in days)
    assert entries == len(debits) + len(credits)
