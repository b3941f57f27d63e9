"""The host's batching: ``pump(now, max_group=...)``, ``all_sent`` and ``receive_many``, with real cards.

Group sizes are read where a card writes them: a card stores one outbox row
per commit, holding that commit's outputs, and the counter applet answers
each message with one output, so the rows of a card's SQLite file (read
through a second connection to it) are its transactions, in order, and their
lengths are the group sizes. Remote traffic is carried by hand: the test is
the driver that calls ``pump``, sends the ``SendRemote`` effects (``all_sent``)
and pumps again while the host is not ``idle``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from cardnet.applets.counter import COUNT, COUNTED, CounterApplet
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.card.runtime import OUT, RECORD_TAG, STORE_TABLE
from cardnet.crypto import pki
from cardnet.host import Guard, Host, HostError, Origin, SendRemote, Verdict
from cardnet.host import mtypes as hm
from cardnet.host.core import all_sent
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid
from conftest import NOW, CardFactory

T = NOW.timestamp()  # host time inside the test CA's validity
FAR = b"\xfa" * 12  # a remote host's domain, routed to address "far"
NOWHERE = b"\xee" * 12  # a domain no host has a route for
PEER = Uid(FAR, 7)  # an application on the remote host
REMOTE = Origin("remote", "far")
MAX_PUMPS = 50  # a driver loop that does not end is a bug


def count(card: Card, n: int, src: Uid = PEER) -> Message:
    return COUNT.make(src, card.uid, n=n)


def db(card_name: str, tmp_path: Path) -> Path:
    return tmp_path / f"{card_name}.db"  # where conftest's make_card keeps the card


def commits(path: Path) -> list[list[dict[str, int]]]:
    """The counter answers of each durable outbox row of the card at ``path``, oldest first: one row per commit."""
    store = SqliteStore(str(path))
    try:
        with store.transaction() as txn:
            rows = txn.scan(STORE_TABLE, OUT.encode() + b"\x00")
    finally:
        store.close()
    out: list[list[dict[str, int]]] = []
    for _, tagged in sorted(rows):
        value = tagged[RECORD_TAG:]  # a stored card record is its integrity tag, then the value
        msgs: list[Message] = []
        pos = 0
        while pos < len(value):  # a row: each output as a 4-byte length and the encoded message
            n = int.from_bytes(value[pos : pos + 4], "big")
            msgs.append(Message.decode(value[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        answers = [COUNTED.parse(x) for x in msgs if x.mtype == COUNTED.code]
        if answers:
            out.append(answers)
    return out


def group_sizes(path: Path) -> list[int]:
    return [len(row) for row in commits(path)]


def drive(host: Host, max_group: int) -> list[list[SendRemote]]:
    """What a host process does: pump, send what it returned, pump again while not idle; the sends per pump."""
    pumps: list[list[SendRemote]] = []
    for _ in range(MAX_PUMPS):
        effects = host.pump(T, max_group=max_group)
        pumps.append(effects)
        all_sent(effects)
        if host.idle:
            return pumps
    raise AssertionError(f"the host was not idle after {MAX_PUMPS} pumps")


def ns(effects: Iterable[SendRemote]) -> list[int]:
    return [COUNTED.parse(e.msg)["n"] for e in effects]


# --------------------------------------------------------------------------- pump(max_group)


def test_max_group_splits_a_cards_queue_into_transactions_in_order(make_card: CardFactory, tmp_path: Path) -> None:
    card = make_card("a")
    host = Host([card])
    caps = [host.acquire() for _ in range(2)]
    for n in range(10):
        caps[n % 2].send(card.uid, COUNT, n=n)
    assert host.pump(T, max_group=4) == []  # nothing remote: nothing to send first, so one pump steps it all
    assert host.idle
    rows = commits(db("a", tmp_path))
    assert [len(row) for row in rows] == [4, 4, 2]  # at most max_group a transaction, the rest in the next
    assert [[a["n"] for a in row] for row in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [a["total"] for row in rows for a in row] == list(range(1, 11))  # stepped in arrival order
    for i, cap in enumerate(caps):
        assert [COUNTED.parse(x)["n"] for x in cap.receive_all()] == list(range(i, 10, 2))
    # without max_group everything queued for the card is one transaction
    for n in range(10, 17):
        caps[0].send(card.uid, COUNT, n=n)
    host.pump(T)
    assert group_sizes(db("a", tmp_path)) == [4, 4, 2, 7]


def test_with_remote_sends_ready_the_pump_returns_after_each_group(make_card: CardFactory, tmp_path: Path) -> None:
    card = make_card("a")
    host = Host([card], routes={FAR: "far"})
    host.receive_many([count(card, n) for n in range(10)], REMOTE)
    first = host.pump(T, max_group=3)
    assert ns(first) == [0, 1, 2]  # one group stepped, its answers ready to send: the pump returns
    assert not host.idle  # seven steps still queued
    assert group_sizes(db("a", tmp_path)) == [3]
    all_sent(first)
    assert host.receive_remote(count(card, 100), "far")  # a newer arrival queues behind the rest
    pumps = drive(host, max_group=3)
    assert [ns(p) for p in pumps] == [[3, 4, 5], [6, 7, 8], [9, 100]]
    assert host.idle and host.pump(T, max_group=3) == []
    rows = commits(db("a", tmp_path))
    assert [len(row) for row in rows] == [3, 3, 3, 2]
    assert [(a["n"], a["total"]) for row in rows for a in row] == [
        *((n, n + 1) for n in range(10)),
        (100, 11),
    ]
    assert all(e.address == "far" for p in [first, *pumps] for e in p)
    assert card.outbox() == []  # every answer was sent, so acknowledged


def test_idle_only_once_everything_is_stepped(make_card: CardFactory, tmp_path: Path) -> None:
    card = make_card("a")
    host = Host([card], routes={FAR: "far"})
    assert host.idle
    host.receive_many([count(card, n) for n in range(7)], REMOTE)
    assert not host.idle
    idle_after: list[bool] = []
    stepped: list[int] = []
    for _ in range(MAX_PUMPS):
        effects = host.pump(T, max_group=2)
        stepped.append(len(effects))
        idle_after.append(host.idle)
        all_sent(effects)
        if host.idle:
            break
    assert stepped == [2, 2, 2, 1]
    assert idle_after == [False, False, False, True]
    assert group_sizes(db("a", tmp_path)) == [2, 2, 2, 1]


def test_a_pump_steps_a_group_even_when_sends_are_ready_before_it(make_card: CardFactory, tmp_path: Path) -> None:
    card = make_card("a")
    host = Host([card], routes={FAR: "far"})
    app = host.acquire()
    forwarded = app.send(Uid(FAR, 1), COUNT, n=42)  # routed to the remote host before any card step
    host.receive_many([count(card, n) for n in range(5)], REMOTE)
    effects = host.pump(T, max_group=2)
    assert [e.msg for e in effects[:1]] == [forwarded]
    assert ns(effects[1:]) == [0, 1]  # ... and still one group stepped: a pump always makes progress
    all_sent(effects)
    assert [ns(p) for p in drive(host, max_group=2)] == [[2, 3], [4]]
    assert group_sizes(db("a", tmp_path)) == [2, 2, 1]


def test_each_card_steps_one_group_per_pump(make_card: CardFactory, tmp_path: Path) -> None:
    card_a, card_b = make_card("a"), make_card("b")
    host = Host([card_a, card_b], routes={FAR: "far"})
    host.receive_many((count(card, n) for n in range(5) for card in (card_a, card_b)), REMOTE)  # interleaved
    pumps = drive(host, max_group=2)
    by_card = [
        ([COUNTED.parse(e.msg)["n"] for e in p if e.msg.src == card_a.uid], ns(e for e in p if e.msg.src == card_b.uid))
        for p in pumps
    ]
    assert by_card == [([0, 1], [0, 1]), ([2, 3], [2, 3]), ([4], [4])]  # no card waits for the other's queue
    assert group_sizes(db("a", tmp_path)) == group_sizes(db("b", tmp_path)) == [2, 2, 1]


# --------------------------------------------------------------------------- all_sent


class AckCountingCard(Card):
    """A real card that also records each ``ack`` call (the acknowledgement ``all_sent`` must batch)."""

    def __init__(self, path: Path) -> None:
        super().__init__(SqliteStore(str(path)), applets=[CounterApplet()])
        self.ack_calls: list[list[int]] = []

    def ack(self, seqs: Iterable[int]) -> None:
        got = list(seqs)
        self.ack_calls.append(got)
        super().ack(got)


@pytest.fixture
def ack_cards(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[tuple[AckCountingCard, AckCountingCard]]:
    cards = (AckCountingCard(tmp_path / "x.db"), AckCountingCard(tmp_path / "y.db"))
    for card in cards:
        personalise(card, ca, pin="1234", now=NOW)
    yield cards
    for card in cards:
        card.close()


def test_all_sent_acknowledges_once_per_card(
    ack_cards: tuple[AckCountingCard, AckCountingCard], tmp_path: Path
) -> None:
    x, y = ack_cards
    host = Host([x, y], routes={FAR: "far"})
    app = host.acquire(x.uid.domain)
    forwarded = app.send(Uid(FAR, 1), COUNT, n=42)  # an application's message: nothing to acknowledge
    host.receive_many([count(x, 0), count(y, 0), count(x, 1), count(x, 2), count(y, 1)], REMOTE)
    effects = host.pump(T)
    assert len(effects) == 6 and forwarded in [e.msg for e in effects]
    seqs_x = [o.seq for o in x.outbox()]
    seqs_y = [o.seq for o in y.outbox()]
    assert len(seqs_x) == 3 and len(seqs_y) == 2  # unacknowledged until the driver says they were sent
    x.ack_calls.clear()
    y.ack_calls.clear()
    all_sent(effects)
    assert x.ack_calls == [seqs_x]  # one acknowledgement per card, in order
    assert y.ack_calls == [seqs_y]
    assert x.outbox() == [] and y.outbox() == []
    all_sent(effects)  # an effect acknowledges once: again is a no-op, as is sent()
    for e in effects:
        e.sent()
    all_sent([])
    assert x.ack_calls == [seqs_x] and y.ack_calls == [seqs_y]
    # the acknowledgement reaches the store with the card's next transaction (here: flush)
    assert commits(tmp_path / "x.db") != []
    x.flush()
    y.flush()
    assert commits(tmp_path / "x.db") == commits(tmp_path / "y.db") == []


def test_all_sent_acknowledges_what_sent_would(make_card: CardFactory) -> None:
    card_a, card_b = make_card("a"), make_card("b")
    hosts = [Host([card], routes={FAR: "far"}) for card in (card_a, card_b)]
    for host, card in zip(hosts, (card_a, card_b), strict=True):
        host.receive_many([count(card, n) for n in range(4)], REMOTE)
    effects_a, effects_b = (host.pump(T) for host in hosts)
    all_sent(effects_a[:3])  # a driver whose link took the first three
    for e in effects_b[:3]:
        e.sent()
    assert [o.msg.param for o in card_a.outbox()] == [o.msg.param for o in card_b.outbox()] == [effects_a[3].msg.param]


# --------------------------------------------------------------------------- receive_many


def _arrivals(card: Card) -> list[Message]:
    return [
        count(card, 0),
        count(card, 13),  # the user guard drops it
        count(card, 1, src=Uid(card.uid.domain, 5)),  # claims the card's own domain: the default guard drops it
        count(card, 2),
        COUNT.make(PEER, Uid(NOWHERE, 0), n=3),  # no route: an undeliverable notice goes back to PEER
        count(card, 4),
    ]


def _no_13(msg: Message, origin: Origin) -> Verdict:
    unlucky = msg.mtype == COUNT.code and COUNT.parse(msg)["n"] == 13
    return Verdict.DROP if unlucky else Verdict.PASS


def _observed_host(card: Card, seen: list[tuple[int, bytes, str]]) -> Host:
    host = Host([card], routes={FAR: "far"}, guards=[Guard("no-13", _no_13)])
    host.observe(lambda msg, origin: seen.append((msg.mtype, msg.param, origin.kind)))
    return host


def test_receive_many_is_submit_for_each_in_order(make_card: CardFactory) -> None:
    card_a, card_b = make_card("a"), make_card("b")
    seen_a: list[tuple[int, bytes, str]] = []
    seen_b: list[tuple[int, bytes, str]] = []
    batched, one_by_one = _observed_host(card_a, seen_a), _observed_host(card_b, seen_b)
    batched.receive_many(iter(_arrivals(card_a)), REMOTE)
    admitted = [one_by_one.submit(msg, REMOTE) for msg in _arrivals(card_b)]
    assert admitted == [True, False, False, True, True, True]
    assert seen_a == seen_b and len(seen_a) == 6  # every arrival shown to the observers, in order
    assert batched.dropped == one_by_one.dropped == 2  # and to the guards
    sends_a, sends_b = batched.pump(T), one_by_one.pump(T)
    assert [(e.address, e.msg.mtype, e.msg.param) for e in sends_a] == [
        (e.address, e.msg.mtype, e.msg.param) for e in sends_b
    ]
    notices = [hm.UNDELIVERABLE.parse(e.msg) for e in sends_a if e.msg.mtype == hm.UNDELIVERABLE.code]
    assert [(x["mtype"], x["dst"]) for x in notices] == [(COUNT.code, Uid(NOWHERE, 0))]
    answers = [COUNTED.parse(e.msg) for e in sends_a if e.msg.mtype == COUNTED.code]
    assert [(a["n"], a["total"]) for a in answers] == [(0, 1), (2, 2), (4, 3)]  # stepped in arrival order


@pytest.mark.parametrize("max_group", [0, -3])
def test_a_max_group_below_one_is_refused_before_anything_is_stepped(
    make_card: CardFactory, tmp_path: Path, max_group: int
) -> None:
    card = make_card("a")
    host = Host([card])
    cap = host.acquire()
    cap.send(card.uid, COUNT, n=1)
    with pytest.raises(HostError) as ei:
        host.pump(T, max_group=max_group)
    assert ei.value.reason == "bad_config" and "1 or more" in str(ei.value)
    assert not host.idle and cap.receive_all() == []  # nothing stepped; the message still waits
    host.pump(T, max_group=1)
    assert [COUNTED.parse(x)["n"] for x in cap.receive_all()] == [1]
