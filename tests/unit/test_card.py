"""The card runtime: atomic steps, outbox, group commit, capacity, ports, PIN, privileged mtypes."""

from __future__ import annotations

from typing import Any

import pytest

from cardnet.applets.counter import COUNT, COUNTED, CounterApplet
from cardnet.card import Applet, Card, CardError, Refused, StepContext
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.card.runtime import DELETE_BATCH
from cardnet.crypto import pki, profile
from cardnet.store import SqliteStore, StoreError
from cardnet.wire import Bytes, Field, Message, Schema, Uid, UInt, register
from conftest import NOW, CardFactory

PUT = register(0x0F30, "test.put", "test", Schema("test.put", [Field(0, "key", Bytes(64)), Field(1, "size", UInt())]))
PUT_OK = register(0x0F31, "test.put_ok", "test", Schema("test.put_ok", [Field(0, "copied", UInt())]))
BOOM = register(0x0F32, "test.boom", "test", Schema("test.boom", []))
SECRET = register(0x0F33, "test.secret", "test", Schema("test.secret", []), privileged=True)


class StoreApplet(Applet):
    """Writes ``size`` bytes under ``key``; answers copied=0 on out-of-memory (TRN's clean refusal)."""

    name = "store"
    handles = (PUT, BOOM, SECRET)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        if msg.mtype == BOOM.code:
            ctx.put(b"partial", b"x" * 10)
            ctx.reply(PUT_OK, copied=9)
            raise RuntimeError("applet bug after a write")
        if msg.mtype == SECRET.code:
            ctx.reply(PUT_OK, copied=42)
            return
        try:
            ctx.put(params["key"], b"v" * params["size"])
        except CardError as exc:
            if exc.reason != "out_of_memory":
                raise
            ctx.reply(PUT_OK, copied=0)
            return
        ctx.reply(PUT_OK, copied=1)


def app_of(card: Card, port: int = 1) -> Uid:
    return Uid(card.uid.domain, port)


def refusal(outs: list[Any]) -> dict[str, Any]:
    assert len(outs) == 1 and outs[0].msg.mtype == cm.REFUSED.code and outs[0].seq is None
    return cm.REFUSED.parse(outs[0].msg)


def test_manufacture_generates_a_key_that_survives_reopen(tmp_path: Any) -> None:
    path = str(tmp_path / "c.db")
    card = Card(SqliteStore(path))
    pub = profile.public_bytes(card.public_key)
    assert not card.personalised
    card.close()
    again = Card(SqliteStore(path))
    assert profile.public_bytes(again.public_key) == pub
    again.close()


def test_seeded_rng_makes_the_same_card_key(tmp_path: Any, seeded_rng: Any) -> None:
    import random

    keys = []
    for i in range(2):
        r = random.Random(7)
        card = Card(SqliteStore(str(tmp_path / f"k{i}.db")), rng=r.randbytes)
        keys.append(profile.public_bytes(card.public_key))
        card.close()
    assert keys[0] == keys[1]


def test_personalisation_binds_uid_and_is_once_only(make_card: CardFactory, ca: pki.CertificateAuthority) -> None:
    card = make_card(personalised=False)
    uid = personalise(card, ca, pin="1234", now=NOW, domain=b"\x01" * 12)
    assert uid == Uid(b"\x01" * 12, 0) == card.uid
    cert = pki.cert_from_der(card.certificate_der)
    assert pki.uid_of(cert) == uid
    with pytest.raises(CardError) as e:
        personalise(card, ca, pin="1234", now=NOW)
    assert e.value.reason == "already_personalised"


def test_a_certificate_for_another_key_is_refused(make_card: CardFactory, ca: pki.CertificateAuthority) -> None:
    card = make_card(personalised=False)
    other = profile.generate_private_key().public_key()
    cert = ca.issue(pki.Role.DEVICE, Uid(b"\x02" * 12), other, now=NOW)
    with pytest.raises(CardError) as e:
        card.personalise(pki.cert_to_der(cert), [pki.cert_to_der(ca.certificate)], "1234")
    assert e.value.reason == "refused" and not card.personalised


def test_no_public_attribute_is_a_private_key(make_card: CardFactory) -> None:
    card = make_card()
    for name in dir(card):
        if not name.startswith("_"):
            assert not isinstance(getattr(card, name), profile.PrivateKey), name


def test_step_commits_state_and_releases_outputs(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("c")
    outs = card.step(COUNT.make(app_of(card), card.uid, n=7), 0.0)
    assert len(outs) == 1 and outs[0].seq is not None
    assert COUNTED.parse(outs[0].msg) == {"n": 7, "total": 1}
    assert outs[0].msg.src == card.uid and outs[0].msg.dst == app_of(card)
    card.close()
    again = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    out = again.step(COUNT.make(app_of(again), again.uid, n=8), 0.0)
    assert COUNTED.parse(out[0].msg)["total"] == 2
    again.close()


def test_unacknowledged_outputs_are_re_emitted_after_reopen(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("c")
    a = card.step(COUNT.make(app_of(card), card.uid, n=1), 0.0)[0]
    b = card.step(COUNT.make(app_of(card), card.uid, n=2), 0.0)[0]
    card.ack([a.seq])  # type: ignore[list-item]
    card.close()  # close flushes acks
    again = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    assert [(o.seq, o.msg) for o in again.outbox()] == [(b.seq, b.msg)]
    again.close()


def test_an_ack_lost_in_a_crash_only_causes_a_duplicate(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("c")
    a = card.step(COUNT.make(app_of(card), card.uid, n=1), 0.0)[0]
    card.ack([a.seq])  # type: ignore[list-item]
    assert card.outbox() == []
    card._store.close()  # crash: the ack was never written
    again = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    assert [o.msg for o in again.outbox()] == [a.msg]
    again.close()


def test_acked_outbox_rows_are_deleted_in_batches(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("c")
    seqs = []
    for n in range(DELETE_BATCH + 5):
        out = card.step(COUNT.make(app_of(card), card.uid, n=n), 0.0)[0]
        assert out.seq is not None
        card.ack([out.seq])
        seqs.append(out.seq)
    last = card.step(COUNT.make(app_of(card), card.uid, n=99), 0.0)[0]  # not acknowledged
    card._store.close()  # crash: acks not yet written are lost, rows not yet deleted come back
    again = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    back = [o.seq for o in again.outbox()]
    assert back[-1] == last.seq  # never lost
    assert len(back) <= DELETE_BATCH + 1  # a batch was deleted: at most one batch comes back as duplicates
    assert set(back[:-1]) <= set(seqs)
    again.close()


def test_flush_deletes_every_acknowledged_row(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("c")
    for n in range(3):
        out = card.step(COUNT.make(app_of(card), card.uid, n=n), 0.0)[0]
        card.ack([out.seq])  # type: ignore[list-item]
    card.flush()
    card._store.close()
    again = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    assert again.outbox() == []
    nxt = again.step(COUNT.make(app_of(again), again.uid, n=9), 0.0)[0]
    assert nxt.seq == 4  # sequence numbers continue after the deleted rows
    again.close()


def test_a_partly_acknowledged_row_re_emits_every_unacknowledged_output(make_card: CardFactory, tmp_path: Any) -> None:
    """One transaction commits several outputs (one outbox row); all but one are acknowledged, one of them twice.

    The row must stay until its last output is acknowledged: flushing and closing the card, then reopening it,
    re-emits the output not acknowledged (the acknowledged ones of the row may come back too, as duplicates).
    """
    card = make_card("c")
    outs = [o for res in card.step_many([COUNT.make(app_of(card), card.uid, n=n) for n in range(4)], 0.0) for o in res]
    seqs = [o.seq for o in outs]
    assert len(outs) == 4 and None not in seqs
    card.ack([seqs[0], seqs[2]])  # type: ignore[list-item]
    card.ack([seqs[2]])  # type: ignore[list-item]  # acknowledged again: counts once
    assert [o.seq for o in card.outbox()] == [seqs[1], seqs[3]]
    card.ack([seqs[1]])  # type: ignore[list-item]
    card.flush()
    card.close()
    again = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    back = {o.seq: o.msg for o in again.outbox()}
    assert back.get(seqs[3]) == outs[3].msg  # the one output never acknowledged is still to deliver
    again.ack([o.seq for o in again.outbox()])  # type: ignore[misc]
    again.flush()
    again.close()
    last = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    assert last.outbox() == []  # all four acknowledged: the row is gone
    last.close()


def test_sequence_numbers_are_never_reused(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("c")
    a = card.step(COUNT.make(app_of(card), card.uid, n=1), 0.0)[0]
    card.ack([a.seq])  # type: ignore[list-item]
    card.close()
    again = Card(SqliteStore(str(tmp_path / "c.db")), applets=[CounterApplet()])
    b = again.step(COUNT.make(app_of(again), again.uid, n=2), 0.0)[0]
    assert b.seq is not None and a.seq is not None and b.seq > a.seq
    again.close()


def test_a_failing_applet_leaves_no_trace(make_card: CardFactory) -> None:
    card = make_card(applets=[StoreApplet()])
    before = card.used_bytes
    r = refusal(card.step(BOOM.make(app_of(card), card.uid), 0.0))
    assert r["reason"] == "applet_error" and "applet bug" in r["detail"]
    assert card.used_bytes == before and card.outbox() == []


def test_refusals(make_card: CardFactory, ca: pki.CertificateAuthority) -> None:
    card = make_card(applets=[StoreApplet()])
    other = Uid(b"\x09" * 12)
    assert refusal(card.step(COUNT.make(app_of(card), card.uid, n=1), 0.0))["reason"] == "no_applet"
    assert refusal(card.step(PUT.make(app_of(card), other, key=b"k", size=1), 0.0))["reason"] == "not_for_this_card"
    bad = Message(app_of(card), card.uid, PUT.code, b"\xa1\x00\x41")
    assert refusal(card.step(bad, 0.0))["reason"] == "bad_param"
    blank = make_card("blank", personalised=False)
    assert refusal(blank.step(PUT.make(app_of(card), card.uid, key=b"k", size=1), 0.0))["reason"] == "not_personalised"


def test_a_refusal_is_never_answered(make_card: CardFactory) -> None:
    card = make_card()
    notice = cm.REFUSED.make(Uid(b"\x09" * 12), card.uid, mtype=1, reason="x", detail="y")
    assert card.step(notice, 0.0) == []


def test_out_of_memory_is_a_clean_refusal(make_card: CardFactory) -> None:
    card = make_card(applets=[StoreApplet()], capacity_bytes=1000)
    ok = card.step(PUT.make(app_of(card), card.uid, key=b"a", size=400), 0.0)
    assert PUT_OK.parse(ok[0].msg)["copied"] == 1
    card.ack([ok[0].seq])  # type: ignore[list-item]
    used = card.used_bytes
    full = card.step(PUT.make(app_of(card), card.uid, key=b"b", size=700), 0.0)
    assert PUT_OK.parse(full[0].msg)["copied"] == 0
    assert card.used_bytes <= card.capacity_bytes
    assert card.used_bytes < used + 700


def test_out_of_memory_not_caught_refuses_the_message(make_card: CardFactory) -> None:
    card = make_card(applets=[CounterApplet()], capacity_bytes=40)
    r = refusal(card.step(COUNT.make(app_of(card), card.uid, n=1), 0.0))
    assert r["reason"] == "out_of_memory"
    assert card.outbox() == []


def test_group_commit_keeps_each_message_all_or_nothing(make_card: CardFactory) -> None:
    card = make_card(applets=[StoreApplet()])
    app = app_of(card)
    msgs = [
        PUT.make(app, card.uid, key=b"a", size=3),
        BOOM.make(app, card.uid),
        PUT.make(app, card.uid, key=b"b", size=4),
    ]
    res = card.step_many(msgs, 0.0)
    assert PUT_OK.parse(res[0][0].msg)["copied"] == 1
    assert refusal(res[1])["reason"] == "applet_error"
    assert PUT_OK.parse(res[2][0].msg)["copied"] == 1
    assert [o.seq for o in card.outbox()] == [res[0][0].seq, res[2][0].seq]
    assert (("a.store", b"partial")) not in card._mem


class FailingStore(SqliteStore):
    fail = False

    def transaction(self) -> Any:
        if self.fail:
            raise StoreError("io", "disk gone")
        return super().transaction()

    def write(self, table: str, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        if self.fail:
            raise StoreError("io", "disk gone")
        super().write(table, puts, deletes)


def test_no_output_leaves_before_commit(tmp_path: Any, ca: pki.CertificateAuthority) -> None:
    store = FailingStore(str(tmp_path / "f.db"))
    card = Card(store, applets=[CounterApplet()])
    personalise(card, ca, pin="1234", now=NOW)
    first = card.step(COUNT.make(app_of(card), card.uid, n=1), 0.0)[0]
    store.fail = True
    with pytest.raises(StoreError):
        card.step_many([COUNT.make(app_of(card), card.uid, n=i) for i in range(3)], 0.0)
    store.fail = False
    assert [o.seq for o in card.outbox()] == [first.seq]
    nxt = card.step(COUNT.make(app_of(card), card.uid, n=9), 0.0)[0]
    assert COUNTED.parse(nxt.msg)["total"] == 2 and nxt.seq == (first.seq or 0) + 1
    card.close()


def port_of(card: Card) -> int:
    host = Uid(card.uid.domain, 0xFFFFFFFF)
    out = card.step(cm.PORT_REQUEST.make(host, card.uid), 0.0)
    card.ack([out[0].seq])  # type: ignore[list-item]
    return int(cm.PORT_GRANT.parse(out[0].msg)["port"])


def test_ports_are_never_reused(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("p")
    ports = [port_of(card) for _ in range(3)]
    card.close()
    again = Card(SqliteStore(str(tmp_path / "p.db")))
    ports.append(port_of(again))
    again.close()
    assert ports == [1, 2, 3, 4]


def pin(card: Card, src: Uid, value: str) -> dict[str, Any]:
    outs = card.step(cm.PIN_VERIFY.make(src, card.uid, pin=value), 0.0)
    if outs[0].msg.mtype == cm.REFUSED.code:
        return {"refused": cm.REFUSED.parse(outs[0].msg)["reason"]}
    return cm.PIN_RESULT.parse(outs[0].msg)


def test_pin_unlocks_privileged_mtypes_and_is_volatile(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("pin", applets=[StoreApplet()])
    app = Uid(card.uid.domain, port_of(card))
    assert refusal(card.step(SECRET.make(app, card.uid), 0.0))["reason"] == "privileged"
    assert pin(card, app, "1234") == {"ok": True, "tries_left": 3}
    assert PUT_OK.parse(card.step(SECRET.make(app, card.uid), 0.0)[0].msg)["copied"] == 42
    other_port = Uid(card.uid.domain, port_of(card))
    assert refusal(card.step(SECRET.make(other_port, card.uid), 0.0))["reason"] == "privileged"
    card.step(cm.LOGOUT.make(app, card.uid), 0.0)
    assert refusal(card.step(SECRET.make(app, card.uid), 0.0))["reason"] == "privileged"
    assert pin(card, app, "1234")["ok"] is True
    card.close()
    again = Card(SqliteStore(str(tmp_path / "pin.db")), applets=[StoreApplet()])
    assert refusal(again.step(SECRET.make(app, again.uid), 0.0))["reason"] == "privileged"
    again.close()


def test_pin_tries_are_durable_and_lock(make_card: CardFactory, tmp_path: Any) -> None:
    card = make_card("lock")
    app = Uid(card.uid.domain, port_of(card))
    assert pin(card, app, "0000") == {"ok": False, "tries_left": 2}
    card.close()
    card = Card(SqliteStore(str(tmp_path / "lock.db")))
    assert pin(card, app, "1111") == {"ok": False, "tries_left": 1}
    assert pin(card, app, "1234") == {"ok": True, "tries_left": 3}  # a right PIN resets the counter
    for left in (2, 1, 0):
        assert pin(card, app, "9999") == {"ok": False, "tries_left": left}
    assert pin(card, app, "1234") == {"refused": "pin_locked"}
    card.close()


def test_only_own_domain_granted_ports_may_verify_the_pin(make_card: CardFactory) -> None:
    card = make_card()
    port_of(card)
    assert pin(card, Uid(b"\x07" * 12, 1), "1234") == {"refused": "refused"}  # another domain
    assert pin(card, Uid(card.uid.domain, 5), "1234") == {"refused": "refused"}  # never granted
    assert pin(card, card.uid, "1234") == {"refused": "refused"}  # the card itself


def test_refused_is_a_card_error_with_a_reason() -> None:
    err = Refused("spent", "already spent")
    assert isinstance(err, CardError) and err.reason == "spent" and "already spent" in str(err)


def test_pin_then_privileged_in_one_group_commit(make_card: CardFactory) -> None:
    card = make_card(applets=[StoreApplet()])
    app = Uid(card.uid.domain, port_of(card))
    res = card.step_many([cm.PIN_VERIFY.make(app, card.uid, pin="1234"), SECRET.make(app, card.uid)], 0.0)
    assert cm.PIN_RESULT.parse(res[0][0].msg)["ok"] is True
    assert PUT_OK.parse(res[1][0].msg)["copied"] == 42  # the group's later message sees the login


def test_a_login_whose_commit_failed_never_happened(tmp_path: Any, ca: pki.CertificateAuthority) -> None:
    store = FailingStore(str(tmp_path / "f.db"))
    card = Card(store, applets=[StoreApplet()])
    personalise(card, ca, pin="1234", now=NOW)
    app = Uid(card.uid.domain, port_of(card))
    store.fail = True
    with pytest.raises(StoreError):
        card.step(cm.PIN_VERIFY.make(app, card.uid, pin="1234"), 0.0)
    store.fail = False
    assert refusal(card.step(SECRET.make(app, card.uid), 0.0))["reason"] == "privileged"
    card.close()
