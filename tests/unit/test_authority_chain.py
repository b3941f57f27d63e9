"""The authority's chain records (applets/authority_chain.py): the decisions read them as they read a list.

Every movement goes to records of a fixed size; the trace decision (protocols/trn/trace.py) gives the same verdict
over the records as over the list they came from, nonce collisions and cycles included; a chain in the old
single-record form reads the same and is converted by the next movement.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cardnet.applets import authority_chain as ac
from cardnet.protocols.trn import trace
from cardnet.wire import Uid
from cardnet.wire.cbor import dumps

OID = bytes(range(16))
AGENT = Uid(b"\x0a" * 12)
DEVICES = [Uid(bytes([i]) * 12) for i in range(1, 5)]
SIG = b"\x55" * 64


class Records:
    """A dict with the two methods the chain code uses (the applet's StepContext in a card)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.writes: list[tuple[bytes, bytes]] = []

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self.writes.append((key, value))


def recorded(moves: list[trace.Movement], issuer: Uid = AGENT) -> Records:
    r = Records()
    for m in moves:
        ac.append(r, OID, issuer, ac.load(r.get, OID), m)
    return r


def legacy(moves: list[trace.Movement], issuer: Uid = AGENT) -> Records:
    """The form cards wrote before: the whole chain in ``chain:<oid>``."""
    r = Records()
    r.data[b"chain:" + OID] = dumps([bytes(issuer), *[[bytes(m.frm), bytes(m.to), m.nonce, m.sig] for m in moves]])
    return r


def a_cycle(n: int) -> list[trace.Movement]:
    """``n`` movements agent -> d1 -> d2 -> d1 -> ..., each with its own nonce."""
    moves, at = [], AGENT
    for i in range(n):
        to = DEVICES[i % 2]
        moves.append(trace.Movement(at, to, i.to_bytes(4, "big"), SIG))
        at = to
    return moves


def test_a_movement_writes_three_small_records_however_long_the_chain() -> None:
    r = Records()
    for i, m in enumerate(a_cycle(300)):
        before = len(r.writes)
        ac.append(r, OID, AGENT, ac.load(r.get, OID), m)
        written = r.writes[before:]
        assert sorted(k[:4] for k, _ in written) == [b"chai", b"move", b"mvn:"]
        assert max(len(v) for _, v in written) == 106  # the movement: [from, to, nonce, signature]
        sizes = {k[:4]: len(k) + len(v) for k, v in written}
        assert (sizes[b"move"], sizes[b"mvn:"]) == (131, 28)  # keys included: 25 + 106, 24 + 4
        assert sizes[b"chai"] == 22 + 19 + (i + 1 >= 24) + (i + 1 >= 256), i  # [issuer, length]: the length grows
    chain = ac.load(r.get, OID)
    assert isinstance(chain, ac.RecordChain) and len(chain) == 300 and chain.issuer == AGENT
    assert chain.span(0, 300) == a_cycle(300)
    assert len(r.data[b"chain:" + OID]) == 21


def test_nonces_that_collide_are_told_apart_by_from_and_to() -> None:
    same = b"\x00\x00\x00\x07"
    a, b, c = DEVICES[:3]
    moves = [trace.Movement(AGENT, a, same), trace.Movement(a, b, b"1111"), trace.Movement(b, a, same)]
    moves.append(trace.Movement(a, c, same))
    chain = ac.load(recorded(moves).get, OID)
    assert chain is not None
    assert [chain.position(m) for m in moves] == [0, 1, 2, 3]
    assert chain.position(trace.Movement(a, b, same)) is None
    assert chain.last() == moves[-1] and chain.sent_by(a) == (moves[1], moves[3])


movement = st.builds(
    trace.Movement,
    st.sampled_from([AGENT, *DEVICES]),
    st.sampled_from(DEVICES),
    st.sampled_from([b"\x00\x00\x00\x01", b"\x00\x00\x00\x02", b"\x00\x00\x00\x03"]),  # collisions on purpose
    st.binary(min_size=0, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(movement, max_size=12), movement, st.booleans(), st.sampled_from([None, *DEVICES]))
def test_decide_reads_the_records_as_it_reads_the_list(
    moves: list[trace.Movement], claim: trace.Movement, blocked: bool, destined: Uid | None
) -> None:
    """Any chain (not only a valid one), any claim: the same verdict, the same evidence with its statements."""
    lists = [moves, ac.load(recorded(moves).get, OID), ac.load(legacy(moves).get, OID)]
    verdicts = [
        trace.decide(
            c or (), claim, AGENT, revoked=False, blocked={DEVICES[3]} if blocked else set(), destined=destined
        )
        for c in lists
    ]
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert [[m.sig for m in v.evidence] for v in verdicts] == [[m.sig for m in verdicts[0].evidence]] * 3
    assert trace.last_holder(moves, AGENT) == trace.last_holder(lists[1] or (), AGENT)


def test_an_old_single_record_chain_reads_the_same_and_the_next_movement_converts_it() -> None:
    moves = a_cycle(5)
    r = legacy(moves[:4])
    old = ac.load(r.get, OID)
    assert isinstance(old, ac.LegacyChain) and old.issuer == AGENT and old.span(0, 9) == moves[:4]
    assert old.position(moves[1]) == 1 and old.last() == moves[3]
    ac.append(r, OID, AGENT, old, moves[4])
    assert r.data == recorded(moves).data  # as if it had always been kept in records
    empty = legacy([])
    ac.append(empty, OID, AGENT, ac.load(empty.get, OID), moves[0])
    assert empty.data == recorded(moves[:1]).data


def test_an_empty_chain_is_a_header() -> None:
    r = Records()
    ac.start(r, OID, AGENT)
    chain = ac.load(r.get, OID)
    assert isinstance(chain, ac.RecordChain) and len(chain) == 0 and chain.last() is None
    assert ac.load(r.get, bytes(16)) is None
