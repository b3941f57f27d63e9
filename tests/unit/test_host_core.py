"""The sans-I/O host in one process, with real cards and real Host objects.

Capabilities fix ``src``; handlers with filters, the inbox and observers; the
card proxy group-commits what is queued for a card; card outputs are
acknowledged only once they left the host; ``replace_card`` re-emits the
outbox; the default Guard and user Guards (HOLD, release, discard);
``host.undeliverable`` notices (never for a notice or a refusal); the bound on
the dispatch table; privileged mtypes from remote senders.

Two hosts are wired by hand, as h11's ``ConnectionPair`` wires two
connections: :class:`Net` feeds every ``SendRemote`` effect of one host's
``pump()`` into the addressed host's ``receive_remote``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cardnet.applets.counter import COUNT, COUNTED, CounterApplet
from cardnet.applets.echo import EchoApplet
from cardnet.applets.notes import NOTES, READ_NOTES, SEND_NOTE, NotesApplet
from cardnet.card import Applet, Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host import Filter, Guard, Host, HostError, Origin, SendRemote, Verdict
from cardnet.host import mtypes as hm
from cardnet.host.core import CARD, HOST_PORT, REMOTE_LOG_BURST, REMOTE_LOG_EVERY_S
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid
from conftest import NOW, CardFactory

T = NOW.timestamp()  # host time inside the test CA's validity
PIN_A, PIN_B = "1111", "2222"
NOWHERE = b"\xee" * 12  # a domain no host has a route for
MAX_NET_ROUNDS = 50


def applets() -> list[Applet]:
    return [EchoApplet(), NotesApplet(), CounterApplet()]


class Net:
    """Hosts by address; ``run()`` pumps them all and carries every remote send until all are idle."""

    def __init__(self, hosts: dict[str, Host]) -> None:
        self.hosts = hosts

    def run(self, now: float = T) -> None:
        for _ in range(MAX_NET_ROUNDS):
            effects = [(address, eff) for address, host in self.hosts.items() for eff in host.pump(now)]
            if not effects and all(h.idle for h in self.hosts.values()):
                return
            for src, eff in effects:
                eff.sent()
                self.hosts[eff.address].receive_remote(eff.msg, src)
        raise AssertionError(f"the hosts did not go idle in {MAX_NET_ROUNDS} rounds")


@dataclass
class Two:
    a: Host
    b: Host
    card_a: Card
    card_b: Card
    net: Net


@pytest.fixture
def two(make_card: CardFactory) -> Two:
    card_a = make_card("a", applets=applets(), pin=PIN_A)
    card_b = make_card("b", applets=applets(), pin=PIN_B)
    a = Host([card_a], routes={card_b.uid.domain: "b"}, name="a")
    b = Host([card_b], routes={card_a.uid.domain: "a"}, name="b")
    return Two(a, b, card_a, card_b, Net({"a": a, "b": b}))


def login(two: Two, cap: Any, pin: str) -> None:
    cap.send(cap.uid.card_uid(), cm.PIN_VERIFY, pin=pin)
    two.net.run()
    [result] = cap.receive_all()
    assert cm.PIN_RESULT.parse(result)["ok"] is True


def durable_outbox(path: Path) -> list[Message]:
    """What a card reopened from its store (after a crash) would re-emit."""
    card = Card(SqliteStore(str(path)))
    try:
        return [o.msg for o in card.outbox()]
    finally:
        card.close()


def outbox(card: Card) -> list[Message]:
    return [o.msg for o in card.outbox()]


# --------------------------------------------------------------------------- capabilities


def test_a_capability_sends_only_as_its_own_uid(two: Two) -> None:
    a, card_a = two.a, two.card_a
    cap = a.acquire()
    other = a.acquire()
    assert cap.uid.domain == card_a.uid.domain and cap.uid.port >= 1
    assert other.uid.port != cap.uid.port  # ports are never handed out twice
    for src in (other.uid, card_a.uid, Uid(card_a.uid.domain, HOST_PORT), Uid(two.card_b.uid.domain, cap.uid.port)):
        with pytest.raises(HostError) as err:
            cap.send_message(REQUEST.make(src, card_a.uid, rid=1, body=b"forged"))
        assert err.value.reason == "forged_src" and str(cap.uid) in str(err.value)
    assert a.idle  # nothing forged reached the dispatch table
    sent = cap.send(card_a.uid, REQUEST, rid=1, body=b"mine")
    assert sent.src == cap.uid
    two.net.run()
    [reply] = cap.receive_all()
    assert reply.src == card_a.uid and REPLY.parse(reply) == {"rid": 1, "body": b"mine", "count": 1}
    assert other.receive_all() == []


def test_the_host_refuses_app_traffic_as_the_card_the_host_port_or_a_foreign_domain(two: Two) -> None:
    # Under the capability's own check, the host checks again (an app never holds port 0 or the host's port).
    a, card_a = two.a, two.card_a
    for src in (card_a.uid, Uid(card_a.uid.domain, HOST_PORT), Uid(two.card_b.uid.domain, 1)):
        with pytest.raises(HostError) as err:
            a._submit_from_app(REQUEST.make(src, card_a.uid, rid=1, body=b""))
        assert err.value.reason == "forged_src"
    assert a.idle


def test_a_closed_capability_cannot_send(two: Two) -> None:
    cap = two.a.acquire()
    cap.close()
    with pytest.raises(HostError) as err:
        cap.send(two.card_a.uid, REQUEST, rid=1, body=b"")
    assert err.value.reason == "closed"


def test_handlers_take_matching_messages_and_the_rest_wait_in_the_inbox(make_card: CardFactory) -> None:
    card_a, card_b = make_card("a", applets=applets()), make_card("b", applets=applets())
    host = Host([card_a, card_b])
    with pytest.raises(HostError) as err:
        host.acquire()  # two cards: the caller must say which one grants the port
    assert err.value.reason == "no_card"
    cap = host.acquire(card_a.uid.domain)
    from_b: list[Message] = []
    replies: list[Message] = []
    cap.on(from_b.append, src=card_b.uid)
    cap.on(replies.append, mtype=REPLY)
    cap.send(card_a.uid, REQUEST, rid=1, body=b"to a")
    cap.send(card_b.uid, REQUEST, rid=2, body=b"to b")
    cap.send(card_a.uid, COUNT, n=7)
    host.pump(T)
    assert [REPLY.parse(m)["rid"] for m in from_b] == [2]  # the first matching handler takes it
    assert [(m.src, REPLY.parse(m)["rid"]) for m in replies] == [(card_a.uid, 1)]
    counted = cap.receive()
    assert counted is not None and COUNTED.parse(counted) == {"n": 7, "total": 1}
    assert cap.receive() is None


def test_observers_see_messages_without_taking_them(two: Two) -> None:
    a, card_a = two.a, two.card_a
    cap = a.acquire()
    everything: list[tuple[int, str]] = []
    replies: list[Message] = []
    a.observe(lambda m, o: everything.append((m.mtype, o.kind)))
    a.observe(lambda m, o: replies.append(m), Filter(mtype=REPLY.code))
    cap.send(card_a.uid, REQUEST, rid=1, body=b"seen")
    a.pump(T)
    assert everything == [(REQUEST.code, "app"), (REPLY.code, "card")]
    delivered = cap.receive_all()
    assert len(replies) == 1 and delivered == replies


# --------------------------------------------------------------------------- the card proxy


class CountingStore:
    """A store that counts transactions (``transaction()`` and ``write()``)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.transactions = 0

    def transaction(self) -> AbstractContextManager[Any]:
        self.transactions += 1
        return self.inner.transaction()

    def write(self, table: str, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self.transactions += 1
        self.inner.write(table, puts, deletes)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def counted_card(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[tuple[Card, CountingStore]]:
    store = CountingStore(SqliteStore(str(tmp_path / "counted.db")))
    card = Card(store, applets=[CounterApplet()])  # type: ignore[arg-type]
    personalise(card, ca, pin="1234", now=NOW)
    yield card, store
    card.close()


def test_the_card_proxy_group_commits_everything_queued_for_a_card(
    counted_card: tuple[Card, CountingStore], tmp_path: Path
) -> None:
    card, store = counted_card
    host = Host([card])
    caps = [host.acquire() for _ in range(3)]
    before = store.transactions
    for i, cap in enumerate(caps):
        for n in range(5):
            cap.send(card.uid, COUNT, n=10 * i + n)
    host.pump(T)
    assert store.transactions == before + 1  # 15 messages from 3 applications: one transaction
    got = {cap.uid: [COUNTED.parse(m) for m in cap.receive_all()] for cap in caps}
    for i, cap in enumerate(caps):
        assert [p["n"] for p in got[cap.uid]] == [10 * i + n for n in range(5)]
    assert sorted(p["total"] for ps in got.values() for p in ps) == list(range(1, 16))
    # The 15 replies were delivered, so they are acknowledged; finished rows are deleted in batches.
    assert card.outbox() == []
    assert len(durable_outbox(tmp_path / "counted.db")) == 18  # 3 port grants + 15 replies, not deleted yet
    host.pump(T)
    assert store.transactions == before + 1  # nothing queued: no transaction just for acks
    caps[0].send(card.uid, COUNT, n=99)
    host.pump(T)
    assert store.transactions == before + 2
    assert COUNTED.parse(durable_outbox(tmp_path / "counted.db")[-1])["n"] == 99
    card.flush()  # deletes every acknowledged row at once
    assert store.transactions == before + 3
    assert durable_outbox(tmp_path / "counted.db") == []


def _reply_waiting_for_b(two: Two) -> tuple[Any, SendRemote]:
    """An app on b asks card a; card a's reply is handed to the driver as a SendRemote (not yet sent)."""
    app_b = two.b.acquire()
    app_b.send(two.card_a.uid, REQUEST, rid=1, body=b"across")
    [req] = two.b.pump(T)
    assert req.address == "a" and req.msg.dst == two.card_a.uid
    req.sent()
    assert two.a.receive_remote(req.msg, "b") is True
    [rep] = two.a.pump(T)
    assert rep.address == "b" and rep.msg.mtype == REPLY.code and rep.msg.dst == app_b.uid
    return app_b, rep


def test_a_card_output_is_acknowledged_only_once_it_left_the_host(two: Two, tmp_path: Path) -> None:
    a, card_a = two.a, two.card_a
    app_a = a.acquire()
    app_b, rep = _reply_waiting_for_b(two)
    assert outbox(card_a) == [rep.msg]
    app_a.send(card_a.uid, COUNT, n=1)  # later commits do not release it
    assert a.pump(T) == []
    assert outbox(card_a) == [rep.msg]
    assert rep.msg in durable_outbox(tmp_path / "a.db")
    rep.sent()  # the transport took it
    assert outbox(card_a) == []
    assert rep.msg in durable_outbox(tmp_path / "a.db")  # the ack is not written yet...
    app_a.send(card_a.uid, COUNT, n=2)
    a.pump(T)
    card_a.flush()  # finished outbox rows are deleted in batches; flush deletes them now
    assert rep.msg not in durable_outbox(tmp_path / "a.db")
    assert two.b.receive_remote(rep.msg, "a") is True
    two.b.pump(T)
    assert [REPLY.parse(m)["body"] for m in app_b.receive_all()] == [b"across"]


def test_replace_card_re_emits_the_outbox_once(two: Two, make_card: CardFactory) -> None:
    card_a = two.card_a
    _, rep = _reply_waiting_for_b(two)  # the host crashes before the transport takes the reply
    reopened = make_card("a", applets=applets())
    assert outbox(reopened) == [rep.msg]
    two.a.replace_card(reopened)
    [again] = two.a.pump(T)
    assert (again.address, again.msg) == ("b", rep.msg)
    again.sent()
    assert outbox(reopened) == []
    # A restarted host re-emits the old card object's outbox when the card is added; replacing the card
    # then forgets those queued entries, so each output is emitted once, acknowledged on the new object.
    assert outbox(card_a) == [rep.msg]
    restarted = Host([card_a], routes=dict(two.a.routes), name="a")
    assert not restarted.idle
    fresh = make_card("a", applets=applets())
    restarted.replace_card(fresh)
    [once] = restarted.pump(T)
    assert once.msg == rep.msg
    once.sent()
    assert outbox(fresh) == [] and outbox(card_a) == [rep.msg]


def test_two_hosts_carry_a_signed_note_card_to_card(two: Two) -> None:
    app_a, app_b = two.a.acquire(), two.b.acquire()
    login(two, app_a, PIN_A)
    login(two, app_b, PIN_B)
    app_a.send(two.card_a.uid, SEND_NOTE, to=two.card_b.uid, text="hello, b")
    two.net.run()
    app_b.send(two.card_b.uid, READ_NOTES)
    two.net.run()
    [notes] = app_b.receive_all()
    assert [(n["from"], n["text"]) for n in NOTES.parse(notes)["notes"]] == [(two.card_a.uid, "hello, b")]
    assert outbox(two.card_a) == [] and outbox(two.card_b) == []  # everything left its host


# --------------------------------------------------------------------------- guards


def test_the_default_guard_drops_remote_messages_claiming_a_local_domain(two: Two) -> None:
    a, card_a = two.a, two.card_a
    app_a = a.acquire()
    login(two, app_a, PIN_A)
    forged = READ_NOTES.make(app_a.uid, card_a.uid)  # a remote host poses as the authenticated app
    assert a.receive_remote(forged, "b") is False
    assert a.receive_remote(REQUEST.make(card_a.uid, card_a.uid, rid=1, body=b""), "b") is False
    assert a.dropped == 2 and a.idle
    two.net.run()
    assert app_a.receive_all() == []  # the card never saw them
    app_a.send_message(forged)  # the same message from the application itself passes
    two.net.run()
    [notes] = app_a.receive_all()
    assert notes.mtype == NOTES.code
    stranger = Uid(two.card_b.uid.domain, 77)  # remote messages from other domains pass
    assert a.receive_remote(REQUEST.make(stranger, card_a.uid, rid=1, body=b""), "b") is True
    assert a.dropped == 2


def test_a_flood_of_dropped_messages_is_logged_a_few_times_a_window_with_the_count_left_out(
    two: Two, caplog: pytest.LogCaptureFixture
) -> None:
    """A remote peer decides how often a guard drops: each window of ``REMOTE_LOG_EVERY_S`` logs at most
    ``REMOTE_LOG_BURST`` drops, and the first line of the next window says how many were left out."""
    a, card_a = two.a, two.card_a
    forged = REQUEST.make(card_a.uid, card_a.uid, rid=1, body=b"")
    with caplog.at_level("WARNING", "cardnet.host"):
        a.pump(1000.0)
        for _ in range(3 * REMOTE_LOG_BURST):
            a.receive_remote(forged, "b")
        a.pump(1000.0 + REMOTE_LOG_EVERY_S)
        a.receive_remote(forged, "b")
    lines = [r.getMessage() for r in caplog.records if "guard forged-local-domain dropped" in r.getMessage()]
    assert a.dropped == 3 * REMOTE_LOG_BURST + 1 and len(lines) == REMOTE_LOG_BURST + 1
    assert lines[-1].endswith(f"(and {2 * REMOTE_LOG_BURST} more since the last such line, not logged)")
    assert "more since" not in "".join(lines[:-1])


def test_a_user_guard_holds_messages_until_released_or_discarded(two: Two) -> None:
    a, card_a = two.a, two.card_a
    asked: list[Message] = []

    def prompt(msg: Message, origin: Origin) -> Verdict:
        if msg.mtype == COUNT.code and origin.kind == "remote":
            asked.append(msg)
            return Verdict.HOLD
        return Verdict.PASS

    a.guards.append(Guard("prompt", prompt))
    app_b = two.b.acquire()
    app_b.send(card_a.uid, COUNT, n=1)
    app_b.send(card_a.uid, COUNT, n=2)
    two.net.run()
    assert app_b.receive_all() == []
    assert len(asked) == 2 and len(a.held) == 2
    (first, h1), (second, h2) = sorted(a.held.items())
    assert h1.guard == "prompt" and h1.origin == Origin("remote", "b")
    assert [COUNT.parse(h.msg)["n"] for h in (h1, h2)] == [1, 2]
    a.release(first)
    a.discard(second)
    assert a.held == {}
    two.net.run()
    [answer] = app_b.receive_all()
    assert COUNTED.parse(answer) == {"n": 1, "total": 1}  # released past every guard; the other one vanished
    assert len(asked) == 2  # a released message is not asked about again
    with pytest.raises(KeyError):
        a.release(second)


def test_a_held_card_output_is_acknowledged_when_discarded_or_delivered(two: Two) -> None:
    a, card_a = two.a, two.card_a

    def hold_card_answers(msg: Message, origin: Origin) -> Verdict:
        return Verdict.HOLD if origin == CARD and msg.mtype == COUNTED.code else Verdict.PASS

    a.guards.append(Guard("hold-answers", hold_card_answers))
    app = a.acquire()
    app.send(card_a.uid, COUNT, n=1)
    app.send(card_a.uid, COUNT, n=2)
    a.pump(T)
    (first, h1), (second, h2) = sorted(a.held.items())
    assert h1.origin == CARD and outbox(card_a) == [h1.msg, h2.msg]  # held: still the card's to re-emit
    a.discard(first)
    assert outbox(card_a) == [h2.msg]
    a.release(second)
    a.pump(T)
    assert app.receive_all() == [h2.msg]
    assert outbox(card_a) == []


# --------------------------------------------------------------------------- undeliverable messages


def _notice(msg: Message) -> dict[str, Any]:
    assert msg.mtype == hm.UNDELIVERABLE.code
    return hm.UNDELIVERABLE.parse(msg)


@pytest.mark.parametrize(
    ("where", "why"),
    [("no_route", "no route to domain"), ("no_app", "no application")],
)
def test_an_undeliverable_message_gets_a_notice_to_its_sender(two: Two, where: str, why: str) -> None:
    a = two.a
    app = a.acquire()
    seen: list[tuple[int, str]] = []
    a.observe(lambda m, o: seen.append((m.mtype, o.kind)))
    lost = Uid(NOWHERE, 3) if where == "no_route" else Uid(two.card_a.uid.domain, 999)
    app.send(lost, REQUEST, rid=1, body=b"")
    a.pump(T)
    [notice] = app.receive_all()
    assert (notice.src, notice.dst) == (lost, app.uid)
    p = _notice(notice)
    assert (p["mtype"], p["dst"]) == (REQUEST.code, lost) and why in p["reason"]
    assert seen == [(REQUEST.code, "app"), (hm.UNDELIVERABLE.code, "host")]  # observers see the host's notice too


def test_no_notice_for_a_notice_or_a_refusal(two: Two) -> None:
    a = two.a
    app = a.acquire()
    entered: list[int] = []
    a.observe(lambda m, o: entered.append(m.mtype))
    lost = Uid(NOWHERE, 1)
    quiet = [
        hm.UNDELIVERABLE.make(app.uid, lost, mtype=REQUEST.code, dst=lost, reason="forged notice"),
        cm.REFUSED.make(app.uid, lost, mtype=REQUEST.code, reason="x", detail="y"),
        hm.REFUSED.make(app.uid, lost, mtype=REQUEST.code, reason="z"),
    ]
    for msg in quiet:
        app.send_message(msg)
    a.pump(T)
    assert entered == [m.mtype for m in quiet]  # nothing came back
    assert app.receive_all() == [] and a.idle
    app.send(lost, REQUEST, rid=1, body=b"")  # whereas an ordinary message gets its notice
    a.pump(T)
    [notice] = app.receive_all()
    assert _notice(notice)["mtype"] == REQUEST.code


def test_a_card_answer_to_nowhere_ends_without_a_loop(two: Two) -> None:
    a, card_a = two.a, two.card_a
    entered: list[tuple[Message, str]] = []
    a.observe(lambda m, o: entered.append((m, o.kind)))
    stranger = Uid(NOWHERE, 5)  # a remote sender whose domain this host cannot reach
    assert a.receive_remote(REQUEST.make(stranger, card_a.uid, rid=1, body=b"?"), "x") is True
    assert a.pump(T) == []
    assert a.idle
    # Observers watch arrivals (apps, cards, remote hosts) and the host's own notices.
    assert [(m.mtype, kind) for m, kind in entered] == [
        (REQUEST.code, "remote"),
        (REPLY.code, "card"),  # no route back, so the card is told ...
        (hm.UNDELIVERABLE.code, "host"),  # ... (host.undeliverable) ...
        (cm.REFUSED.code, "card"),  # ... refuses the notice (no applet handles it), and that refusal gets no notice
    ]
    refusal = cm.REFUSED.parse(entered[3][0])
    assert (refusal["mtype"], refusal["reason"]) == (hm.UNDELIVERABLE.code, "no_applet")
    assert outbox(card_a) == []  # the undeliverable answer was acknowledged: it will not come back


def test_a_message_to_a_closed_capability_is_undeliverable(two: Two) -> None:
    a, card_a = two.a, two.card_a
    app = a.acquire()
    app.send(card_a.uid, REQUEST, rid=1, body=b"")
    app.close()
    a.pump(T)
    assert a.idle and outbox(card_a) == []
    assert app.receive_all() == []


# --------------------------------------------------------------------------- bounds and privilege


def test_the_dispatch_table_is_bounded(make_card: CardFactory) -> None:
    card = make_card("bounded", applets=applets())
    host = Host([card], max_queue=4)
    app = host.acquire()
    for n in range(4):
        app.send(card.uid, COUNT, n=n)
    with pytest.raises(HostError) as err:
        app.send(card.uid, COUNT, n=4)
    assert err.value.reason == "busy" and host.dropped == 1
    # a remote arrival that does not fit is dropped, as a lossy network would, and never raises
    assert not host.receive_remote(REQUEST.make(Uid(NOWHERE, 1), card.uid, rid=1, body=b""), "x")  # says so
    assert host.dropped == 2
    host.pump(T)
    assert [COUNTED.parse(m)["n"] for m in app.receive_all()] == [0, 1, 2, 3]
    app.send(card.uid, COUNT, n=5)  # room again
    host.pump(T)
    assert [COUNTED.parse(m)["n"] for m in app.receive_all()] == [5]


def test_the_dispatch_table_is_bounded_in_bytes_too(make_card: CardFactory) -> None:
    """``max_queue_bytes``: beyond it a remote arrival is dropped and an application is told ``busy``, whatever
    the count allows; one message of any size fits an empty table; a pump that takes the table frees its bytes."""
    card = make_card("bytes", applets=applets())
    host = Host([card], max_queue_bytes=1000)
    app = host.acquire()
    big = Message(Uid(NOWHERE, 1), card.uid, REQUEST.code, bytes(2000))  # above the bound: fits the empty table
    assert host.receive_remote(big, "x")
    assert not host.receive_remote(REQUEST.make(Uid(NOWHERE, 1), card.uid, rid=2, body=b""), "x")
    with pytest.raises(HostError) as err:
        app.send(card.uid, COUNT, n=0)
    assert err.value.reason == "busy" and host.dropped == 2
    host.pump(T)
    for n in range(3):  # room again: small messages fit until their bytes reach the bound
        app.send(card.uid, COUNT, n=n)
    assert not host.receive_remote(Message(Uid(NOWHERE, 1), card.uid, REQUEST.code, bytes(1000)), "x")
    host.pump(T)
    assert [COUNTED.parse(m)["n"] for m in app.receive_all()] == [0, 1, 2]


def test_a_privileged_mtype_from_a_remote_sender_is_refused_by_the_card(two: Two) -> None:
    app_b = two.b.acquire()
    login(two, app_b, PIN_B)  # authenticated on its own card b
    app_b.send(two.card_b.uid, READ_NOTES)
    two.net.run()
    [own] = app_b.receive_all()
    assert own.mtype == NOTES.code
    app_b.send(two.card_a.uid, READ_NOTES)  # not on card a
    two.net.run()
    [refused] = app_b.receive_all()
    assert refused.src == two.card_a.uid and refused.mtype == cm.REFUSED.code
    r = cm.REFUSED.parse(refused)
    assert (r["reason"], r["mtype"]) == ("privileged", READ_NOTES.code)
    app_b.send(two.card_a.uid, cm.PIN_VERIFY, pin=PIN_A)  # and it cannot authenticate there, even with the PIN
    two.net.run()
    [refused] = app_b.receive_all()
    assert cm.REFUSED.parse(refused)["reason"] == "refused"


# --------------------------------------------------------------------------- failures between cards


def read_only(card: Card) -> None:
    """The card's store refuses every write from now on (SQLite's query_only: a write raises, as on a locked EEPROM)."""
    card._store._c.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]


def writable(card: Card) -> None:
    card._store._c.execute("PRAGMA query_only = OFF")  # type: ignore[attr-defined]


def test_a_failed_step_of_the_receiving_card_leaves_the_senders_output_to_re_emit(make_card: CardFactory) -> None:
    """Two cards on one host: the receiver's store fails, so the note stays in the sender's outbox and comes back."""
    card_a = make_card("a", applets=applets(), pin=PIN_A)
    card_b = make_card("b", applets=applets(), pin=PIN_B)
    host = Host([card_a, card_b], name="one")
    app_a, app_b = host.acquire(card_a.uid.domain), host.acquire(card_b.uid.domain)
    for app, card, pin in ((app_a, card_a, PIN_A), (app_b, card_b, PIN_B)):
        app.send(card.uid, cm.PIN_VERIFY, pin=pin)
    host.pump(T)
    read_only(card_b)
    app_a.send(card_a.uid, SEND_NOTE, to=card_b.uid, text="through a failing store")
    host.pump(T)  # card a steps and emits the note; card b's step raises a StoreError
    assert host.idle
    [note] = outbox(card_a)
    assert note.dst == card_b.uid  # not acknowledged: card b never took it
    writable(card_b)
    assert host.resend_unacked() == 0  # first sweep: a suspect
    assert host.resend_unacked() == 1  # second sweep: re-emitted
    host.pump(T)
    assert outbox(card_a) == []
    app_b.send(card_b.uid, READ_NOTES)
    host.pump(T)
    texts = [n["text"] for m in app_b.receive_all() if m.mtype == NOTES.code for n in NOTES.parse(m)["notes"]]
    assert texts == ["through a failing store"]


def test_a_host_restart_re_emits_the_unsent_outputs_of_a_partly_sent_group(two: Two, tmp_path: Path) -> None:
    """Card a answers three requests in one group commit; the transport takes two, then host a stops and restarts."""
    app_b = two.b.acquire()
    for rid in (1, 2, 3):
        app_b.send(two.card_a.uid, REQUEST, rid=rid, body=b"r%d" % rid)
    for req in two.b.pump(T):
        req.sent()
        two.a.receive_remote(req.msg, "b")
    reps = two.a.pump(T)  # one group commit: three replies in one outbox row
    assert [r.msg.mtype for r in reps] == [REPLY.code] * 3
    reps[0].sent()
    reps[2].sent()
    two.card_a.close()  # host a stops (the card writes what it can) ...
    reopened = Card(SqliteStore(str(tmp_path / "a.db")), applets=applets())
    restarted = Host([reopened], routes=dict(two.a.routes), name="a")  # ... and restarts
    again = restarted.pump(T)
    assert reps[1].msg in [e.msg for e in again]  # the reply the transport never took comes back
    for eff in again:
        eff.sent()
        two.b.receive_remote(eff.msg, "a")
    two.b.pump(T)
    assert {REPLY.parse(m)["rid"] for m in app_b.receive_all()} >= {2}
    reopened.close()


def test_the_host_answers_where_a_domain_is_and_remembers_undeliverable_notices(two: Two) -> None:
    """host.route: local card, routed, or nowhere; plus the last notice the asking app's card got about it."""
    a, card_a, card_b = two.a, two.card_a, two.card_b
    app = a.acquire()
    host_port = Uid(card_a.uid.domain, HOST_PORT)

    def where(domain: bytes) -> dict[str, Any]:
        app.send(host_port, hm.ROUTE, domain=domain)
        a.pump(T)
        [answer] = app.receive_all()
        assert answer.src == host_port
        return hm.ROUTE_IS.parse(answer)

    assert where(card_a.uid.domain)["where"] == "local"
    assert where(card_b.uid.domain) == {"domain": card_b.uid.domain, "where": "route", "address": "b"}
    assert where(NOWHERE) == {"domain": NOWHERE, "where": "none"}
    # the card's own message to nowhere (as a TRN card's session.hello would be): remembered for that card
    a.receive_remote(REQUEST.make(Uid(NOWHERE, 1), card_a.uid, rid=2, body=b""), "b")  # its reply goes nowhere
    a.pump(T + 5)
    got = where(NOWHERE)
    assert got["where"] == "none" and "no route to domain" in got["undeliverable"]
    assert got["undeliverable_at"] == int(T + 5)
    # a remote host's notice about the card's message is remembered too
    notice = hm.UNDELIVERABLE.make(Uid(card_b.uid.domain, 0), card_a.uid, mtype=REQUEST.code,
                                   dst=card_b.uid, reason="no card here")  # fmt: skip
    a.receive_remote(notice, "b")
    a.pump(T + 6)
    assert where(card_b.uid.domain)["undeliverable"] == "no card here"
    # only the host's own applications ask: the same question from a remote host gets nothing back
    a.receive_remote(hm.ROUTE.make(Uid(card_b.uid.domain, 3), host_port, domain=NOWHERE), "b")
    assert all(e.msg.mtype != hm.ROUTE_IS.code for e in a.pump(T))
