"""The TRN 2PC move table (protocols/trn/transfer.py): every (state, event) pair, and properties of the table."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import Token
from cardnet.wire import Uid

OID = bytes(range(16))
ISSUER = Uid.card(b"\x0a" * 12)
TOKEN = Token(OID, ISSUER, b"\x01" * 64, b"seat 1").encode()
P = Uid.card(b"\x01" * 12)
Q = Uid.card(b"\x02" * 12)
N = b"\x00\x00\x00\x07"


def holding(state: str, peer: Uid = P, nonce: bytes = N) -> tr.Holding | None:
    if state == tr.NULL:
        return None
    return {
        "enabled": tr.Holding(OID, tr.Status.ENABLED, token=TOKEN),
        "disabled+O": tr.Holding(OID, tr.Status.DISABLED, True, peer, nonce, TOKEN),
        "disabled": tr.Holding(OID, tr.Status.DISABLED, True, peer, nonce, None),
        "trustless_disabled": tr.Holding(OID, tr.Status.TRUSTLESS_DISABLED, True, peer, nonce, TOKEN),
        "trustless": tr.Holding(OID, tr.Status.TRUSTLESS, True, peer, nonce, TOKEN),
        "offered": tr.Holding(OID, tr.Status.OFFERED, True, peer, nonce, TOKEN),
        "exchanging": tr.Holding(OID, tr.Status.EXCHANGING, True, peer, None, TOKEN),
    }[state]


def sign(oid: bytes, to: Uid, nonce: bytes) -> bytes:
    """A stand-in for the sender card's key: the move table only carries the signature."""
    return bytes(to)[:12] + nonce + bytes(48)


def event(kind: str, peer: Uid = P, nonce: bytes = N, ok: bool = True) -> tr.Event:
    return tr.Event(kind, peer, nonce, token=TOKEN if kind == "copy" else None, ok=ok, sign=sign)


def test_states_and_events_cover_the_table() -> None:
    assert set(tr.MOVES) <= {(s, e) for s in tr.STATES for e in tr.EVENTS}
    for s in tr.STATES[1:]:
        h = holding(s)
        assert h is not None and h.state == s


@pytest.mark.parametrize("state", tr.STATES)
@pytest.mark.parametrize("kind", tr.EVENTS)
def test_every_state_event_pair(state: str, kind: str) -> None:
    h = holding(state)
    if (state, kind) in tr.MOVES:
        out = tr.apply(h, event(kind), OID)
        assert isinstance(out, tr.Outcome)
        for code, fields in out.send:  # every message a move emits encodes under its schema
            assert tr.decode_inner(tr.encode_inner(code, fields)) == (code, fields)
        if out.holding is not None:
            assert tr.Holding.decode(OID, out.holding.encode()) == out.holding
    else:
        with pytest.raises(ProtocolError) as e:
            tr.apply(h, event(kind), OID)
        assert e.value.reason == "illegal_move"


def test_sender_path_i_to_vi() -> None:
    h = holding("enabled")
    out = tr.apply(h, tr.Event("start", P, N, sign=sign), OID)
    assert out.holding is not None and out.holding.state == "disabled+O" and not out.holding.usable
    assert out.send == [(tr.COPY, {"nonce": N, "token": TOKEN, "traceable": True})]
    out = tr.apply(out.holding, event("copied"), OID)
    assert out.holding is not None and out.holding.state == "disabled"
    assert out.send == [(tr.COMMIT, {"nonce": N, "oid": OID, "sig": sign(OID, P, N)})]
    assert tr.apply(out.holding, event("recover"), OID).send == out.send  # (IV)/(V): resend commit
    assert tr.apply(out.holding, event("copied"), OID).send == out.send  # a duplicate copied, too
    assert tr.apply(out.holding, event("committed"), OID).holding is None  # (VI)


def test_receiver_path_and_untraceable() -> None:
    out = tr.apply(None, event("copy"), OID)
    assert out.holding is not None and out.holding.state == "trustless_disabled" and not out.holding.usable
    assert out.send == [(tr.COPIED, {"nonce": N, "ok": True})]
    done = tr.apply(out.holding, event("commit"), OID)
    assert done.committed_transfer and done.holding is not None and done.holding.state == "trustless"
    traced = tr.apply(done.holding, tr.Event("traced", P), OID)
    assert traced.holding is not None and traced.holding.state == "enabled" and traced.holding.peer is None
    why = "branch: the token left its holder twice (signer 000000000000000000000000:00000000 blocked)"
    refused = tr.apply(done.holding, tr.Event("traced", P, ok=False, reason=why), OID)
    # still trustless (the same copy), with the kind of the refusal kept for its owner to see
    assert refused.holding == replace(done.holding, refused="branch") and refused.holding.state == "trustless"
    again = tr.apply(refused.holding, tr.Event("traced", P), OID).holding  # recorded after all: enabled, said no more
    assert again is not None and again.state == "enabled" and again.refused is None
    untraced = tr.apply(None, tr.Event("copy", P, N, token=TOKEN, traceable=False), OID)
    assert untraced.holding is not None
    enabled = tr.apply(untraced.holding, event("commit"), OID).holding
    assert enabled is not None and enabled.state == "enabled" and not enabled.traceable
    # untraceable is sticky: asking for a traced transfer of an untraced token sends it untraced
    again = tr.apply(enabled, tr.Event("start", Q, N, traceable=True), OID)
    assert again.send[0][1]["traceable"] is False


def test_copied_false_rolls_back_and_mismatched_answers_are_ignored() -> None:
    h = holding("disabled+O")
    back = tr.apply(h, event("copied", ok=False), OID).holding
    assert back is not None and back.state == "enabled" and back.peer is None and back.token == TOKEN
    assert tr.apply(h, event("copied", nonce=b"\x00\x00\x00\x08"), OID).holding == h
    assert tr.apply(h, event("copied", peer=Q), OID).holding == h
    d = holding("disabled")
    assert tr.apply(d, event("committed", ok=False), OID).holding == d
    assert tr.apply(d, event("committed", nonce=b"\x00\x00\x00\x08"), OID).holding == d
    assert tr.apply(d, event("copied", ok=False), OID).send == []  # a late refusal cannot undo (IV)


def test_cancel_only_before_commit() -> None:
    out = tr.apply(holding("disabled+O"), event("cancel"), OID)
    assert out.holding is not None and out.holding.state == "enabled"
    assert out.send == [(tr.ABORT, {"nonce": N, "oid": OID})]
    with pytest.raises(ProtocolError):
        tr.apply(holding("disabled"), event("cancel"), OID)
    # the receiver discards its copy on the abort of that very transfer, not of another
    assert tr.apply(holding("trustless_disabled"), event("abort"), OID).holding is None
    other = tr.apply(holding("trustless_disabled"), event("abort", nonce=b"\x00\x00\x00\x08"), OID)
    assert other.holding == holding("trustless_disabled")
    # an abort can never take a committed copy
    assert tr.apply(holding("trustless"), event("abort"), OID).holding == holding("trustless")


def test_duplicate_copy_and_competing_copies() -> None:
    td = holding("trustless_disabled")
    assert tr.apply(td, event("copy"), OID).send == [(tr.COPIED, {"nonce": N, "ok": True})]
    newer = tr.apply(td, event("copy", nonce=b"\x00\x00\x00\x09"), OID)  # same sender started over
    assert newer.holding is not None and newer.holding.nonce == b"\x00\x00\x00\x09"
    # another sender has the oid: the pending transfer must have been aborted (its notice lost): superseded
    other = tr.apply(td, event("copy", peer=Q), OID)
    assert other.holding is not None and other.holding.peer == Q and other.send[0][1]["ok"] is True
    held = tr.apply(holding("enabled"), event("copy", peer=Q), OID)
    assert held.send[0][1] == {"nonce": N, "ok": False, "reason": "already held"}
    # a commit for another transfer is refused, unless it is a resend of one committed before (the applet
    # looks that up and passes it as ``ok``): the earlier sender must not stay in (IV)/(V)
    assert tr.apply(td, event("commit", nonce=b"\x00\x00\x00\x08", ok=False), OID).send[0][1]["ok"] is False
    resent = tr.apply(td, event("commit", nonce=b"\x00\x00\x00\x08", ok=True), OID)
    assert resent.send[0][1]["ok"] is True and resent.holding == td


def test_resent_commit_at_null_is_answered_from_memory() -> None:
    assert tr.apply(None, event("commit", ok=True), OID).send == [(tr.COMMITTED, {"nonce": N, "ok": True})]
    assert tr.apply(None, event("commit", ok=False), OID).send == [(tr.COMMITTED, {"nonce": N, "ok": False})]


def test_inner_decoder_refuses_garbage() -> None:
    for raw in (b"", b"\x00", b"\x63\xa0", b"\x01\xa0", bytes([tr.COMMIT]) + b"\xff"):
        with pytest.raises(ProtocolError) as e:
            tr.decode_inner(raw)
        assert e.value.reason == "bad_record"


# --- a model of devices running the table, under faults -----------------------------------------

DEVICES = (Uid.card(b"\x01" * 12), Uid.card(b"\x02" * 12), Uid.card(b"\x03" * 12))
KIND = {tr.COPY: "copy", tr.COPIED: "copied", tr.COMMIT: "commit", tr.COMMITTED: "committed", tr.ABORT: "abort",
        tr.ABORTED: "aborted"}  # fmt: skip


@dataclass
class Dev:
    uid: Uid
    h: tr.Holding | None = None
    committed: set[tuple[Uid, bytes]] = field(default_factory=set)  # the applet's d:<peer><nonce>
    admit: str = ""  # the owner's acceptance policy's verdict on every copy: take, ASK, or a refusal
    rejected: set[tuple[Uid, bytes]] = field(default_factory=set)  # the applet's n:<peer><nonce>


@dataclass
class Net:
    devs: list[Dev]
    flight: list[tuple[Uid, Uid, int, dict[str, object]]] = field(default_factory=list)  # (src, dst, code, fields)
    nonces: int = 0

    def dev(self, uid: Uid) -> Dev:
        return next(d for d in self.devs if d.uid == uid)

    def step(self, d: Dev, e: tr.Event) -> None:
        """What the applet does (applets/trn.py on_inner and commands), around ``transfer.apply``."""
        e = replace(e, sign=sign)  # the device's card key
        if e.kind in ("copied", "committed", "aborted") and (d.h is None or (d.h.peer, d.h.nonce) != (e.peer, e.nonce)):
            return  # an answer about a transfer the device no longer tracks
        if e.kind == "commit" and (
            d.h is None or d.h.state != "trustless_disabled" or (d.h.peer, d.h.nonce) != (e.peer, e.nonce)
        ):
            e = tr.Event("commit", e.peer, e.nonce, ok=(e.peer, e.nonce) in d.committed)
        if e.kind == "copy":  # the applet's _check_copy: a rejected transfer gets the same answer, else the policy's
            e = replace(e, admit=tr.REFUSED_BY_OWNER if (e.peer, e.nonce) in d.rejected else d.admit)
        out = tr.apply(d.h, e, OID)
        if out.committed_transfer:
            d.committed.add((e.peer, e.nonce))
        d.h = out.holding
        for code, fields in out.send:
            self.flight.append((d.uid, e.peer, code, fields))

    def deliver(self, i: int, keep: bool) -> None:
        src, dst, code, f = self.flight[i] if keep else self.flight.pop(i)
        token = f.get("token")
        ev = tr.Event(KIND[code], src, f["nonce"], token=token if isinstance(token, bytes) else None,  # type: ignore[arg-type]
                      ok=bool(f.get("ok", True)), traceable=bool(f.get("traceable", True)))  # fmt: skip
        self.step(self.dev(dst), ev)

    def command(self, d: Dev, kind: str, to: Uid, traceable: bool = True) -> None:
        state = d.h.state if d.h is not None else tr.NULL
        if (state, kind) not in tr.MOVES or (kind == "start" and to == d.uid):
            return  # the applet refuses (illegal_move) and nothing changes
        if kind == "start":
            self.nonces += 1
            self.step(d, tr.Event("start", to, self.nonces.to_bytes(4, "big"), traceable=traceable))
        elif kind == "cancel":
            assert d.h is not None and d.h.peer is not None
            self.step(d, tr.Event("cancel", d.h.peer))
        elif kind == "recover":
            if d.h is not None and d.h.status is tr.Status.DISABLED and d.h.peer is not None:
                self.step(d, tr.Event("recover", d.h.peer))
        elif kind in ("accept", "reject"):  # the owner answers an offer (the applet's _answer)
            assert d.h is not None and d.h.peer is not None and d.h.nonce is not None
            if kind == "reject":
                d.rejected.add((d.h.peer, d.h.nonce))
            self.step(d, tr.Event(kind, d.h.peer, d.h.nonce))
        else:  # the authority answered the trace
            self.step(d, tr.Event("traced", d.uid))

    def check(self) -> None:
        usable = [d for d in self.devs if d.h is not None and d.h.usable]
        assert len(usable) <= 1, f"two usable copies: {[d.h for d in usable]}"
        assert any(d.h is not None and d.h.token is not None for d in self.devs), "the token object was lost"


def fresh(admits: tuple[str, ...] = ("", "", "")) -> Net:
    net = Net([Dev(u, admit=a) for u, a in zip(DEVICES, admits, strict=True)])
    net.devs[0].h = tr.Holding(OID, tr.Status.ENABLED, token=TOKEN)
    return net


ACTION = st.tuples(
    st.sampled_from(["deliver", "duplicate", "drop", "start", "cancel", "recover", "traced", "accept", "reject"]),
    st.integers(0, 1000),
    st.integers(0, 2),
)
# each device's owner: takes everything, asks first, or refuses this issuer (docs/trn.md section 3.1)
ADMITS = st.tuples(*[st.sampled_from(["", tr.ASK, tr.ISSUER_NOT_ACCEPTED])] * 3)


def run(net: Net, actions: list[tuple[str, int, int]], *, fifo: bool) -> None:
    for what, i, j in actions:
        d = net.devs[j]
        if what in ("deliver", "duplicate", "drop"):
            if not net.flight:
                continue
            k = 0 if fifo else i % len(net.flight)
            if what == "drop":
                net.flight.pop(k)
            else:
                net.deliver(k, keep=what == "duplicate" and not fifo)
        else:
            net.command(d, what, net.devs[i % 3].uid, traceable=i % 7 != 0)
        net.check()


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTION, max_size=60), ADMITS)
def test_no_move_doubles_or_loses_a_token_under_any_delivery(
    actions: list[tuple[str, int, int]], admits: tuple[str, ...]
) -> None:
    """Three devices whose owners take, ask first (and accept or reject at any time) or refuse; messages
    delivered in any order, duplicated or lost: never two usable copies, never no copy of the object."""
    run(fresh(admits), actions, fifo=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTION, max_size=60), ADMITS, st.sampled_from(["accept", "reject"]))
@example(
    [("start", 2, 0), ("deliver", 0, 0), ("drop", 0, 0), ("cancel", 0, 0), ("drop", 0, 0)], ("",) * 3, "accept"
)  # abort lost
@example(
    [("start", 1, 0), ("deliver", 0, 0), ("deliver", 0, 0), ("drop", 0, 0), ("recover", 0, 0)], ("",) * 3, "accept"
)  # commit lost
@example(
    [("start", 1, 0), ("deliver", 0, 0), ("reject", 0, 1), ("drop", 0, 0), ("recover", 0, 0)], (tr.ASK,) * 3, "accept"
)
# (the rejection's answer is lost and recovery resends the copy: answered again from the memory of rejections)
def test_recovery_finishes_with_exactly_one_enabled_copy(
    actions: list[tuple[str, int, int]], admits: tuple[str, ...], answer: str
) -> None:
    """Session-like channels (in order, lossy; resends are new messages): after the faults stop and the owners
    answer their offers, recovery and the trace leave exactly one enabled copy and no transfer half-done."""
    net = fresh(admits)
    run(net, actions, fifo=True)
    for _ in range(4):  # heal: everybody recovers, everything is delivered, offers and traces answered
        for d in net.devs:
            net.command(d, "recover", d.uid)
        while net.flight:
            net.deliver(0, keep=False)
            net.check()
        for d in net.devs:
            net.command(d, answer, d.uid)
            net.command(d, "traced", d.uid)
    states = sorted(d.h.state for d in net.devs if d.h is not None)
    assert states.count("enabled") == 1, states
    assert not {"disabled", "disabled+O", "trustless", "offered"} & set(states), states
    for d in net.devs:  # the owners now take everything
        d.admit = ""
    # and the token can still go anywhere: no leftover (e.g. a copy whose abort notice was lost) blocks it
    for step in (1, 1, 1, -1, -1, -1):  # round the ring both ways: every device receives from both neighbours
        holder = next(d for d in net.devs if d.h is not None and d.h.state == "enabled")
        target = net.devs[(net.devs.index(holder) + step) % len(net.devs)]
        net.command(holder, "start", target.uid)
        while net.flight:
            net.deliver(0, keep=False)
        net.command(target, "traced", target.uid)
        assert target.h is not None and target.h.state == "enabled", (target.uid, target.h)


def test_a_delayed_old_copy_does_not_lose_a_live_pending_one() -> None:
    """Found by the simulator (transfer seed 2797): P sent the token, cancelled (its abort delayed), the token went
    on and Q's transfer reached the receiver, which answered ``copied ok`` (Q dropped the object). Then P's old copy
    arrives and supersedes Q's; then P's abort. The receiver must fall back to Q's copy, and take Q's commit."""
    q_nonce, p_nonce = b"\x00\x00\x00\x09", N
    live = tr.apply(None, event("copy", peer=Q, nonce=q_nonce), OID).holding
    assert live is not None and live.state == "trustless_disabled"
    old = tr.apply(live, event("copy", peer=P, nonce=p_nonce), OID)  # the delayed copy of the cancelled transfer
    assert old.holding is not None and old.holding.peer == P and old.holding.also == ((Q, q_nonce),)
    assert tr.Holding.decode(OID, old.holding.encode()) == old.holding
    aborted = tr.apply(old.holding, event("abort", peer=P, nonce=p_nonce), OID)
    assert aborted.holding is not None and (aborted.holding.peer, aborted.holding.nonce) == (Q, q_nonce)
    committed = tr.apply(aborted.holding, tr.Event("commit", Q, q_nonce, sig=b"s" * 64), OID)
    assert committed.holding is not None and committed.holding.state == "trustless"
    assert committed.send == [(tr.COMMITTED, {"nonce": q_nonce, "ok": True})]
    # Q's commit is taken even while the old copy still stands in front of it (its abort not yet arrived)
    early = tr.apply(old.holding, tr.Event("commit", Q, q_nonce, sig=b"s" * 64), OID)
    assert early.holding is not None and early.holding.state == "trustless" and early.holding.peer == Q
    assert early.holding.also == ()
