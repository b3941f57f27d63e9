"""Damaged fair-exchange messages fed to genuine cards inside genuine sessions: never a crash, never an unfair end.

A host cannot make a fairx message (each is a record of the two cards' sealed session); a changed peer card can.
Here the sending card runs such code (:class:`FuzzWallet`: the genuine applet, except that one message of an
exchange is replaced by garbage or by the genuine message with bytes changed, chosen by hypothesis), the
receiving card is genuine, and the parties then recover as a person would (give up, reject, resolve, abort
through the TTP). After each exchange the two vouchers are each usable on exactly one card, swapped or both home,
and no card logged an applet error. The decoders alone are fuzzed in tests/fuzz/test_fuzz_fairx.py.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt (an eighth of it here: each example is an exchange).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trnkit import recover, status
from trnworld import TrnWorld, fairx_world, uid

from cardnet.applets import fairx as fa
from cardnet.applets.trn import TrnApplet
from cardnet.card import StepContext
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.protocols import fairx as fx
from cardnet.wire import MType, Uid

N = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "200"))
CARD_FUZZ = settings(
    max_examples=max(10, N // 8),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
T1, T2 = b"\x01" * 16, b"\x02" * 16
raw = st.binary(max_size=400) | st.dictionaries(st.integers(0, 8), st.binary(max_size=80), max_size=6).map(cbor2.dumps)


Mutate = Callable[[bytes], bytes]


class FuzzWallet(TrnApplet):
    """Changed card code: the genuine wallet applet, except that the next fairx message of kind ``code`` it sends
    goes through ``mutate`` first (inside the genuine session: the peer's card opens it and must judge it)."""

    def __init__(self) -> None:
        super().__init__()
        self.damage: tuple[int, Mutate] | None = None

    def send_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        if self.damage is not None and raw and raw[0] == self.damage[0]:
            raw = self.damage[1](raw)
            self.damage = None
        super().send_inner(ctx, peer, raw)


@pytest.fixture(scope="module")
def world(ca: pki.CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrnWorld]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-fairx")
    w = fairx_world(
        tmp, ca, {"alice": (T1, b"concert, seat 7"), "bob": (T2, b"one coffee")}, alice=FuzzWallet(), bob=FuzzWallet()
    )
    yield w
    for card in w.cards.values():
        card.close()


def _order(w: TrnWorld, name: str, mtype: MType, **fields: Any) -> dict[str, Any]:
    reply = w.ask(name, mtype, **fields)
    if reply.mtype == cm.REFUSED.code:
        return {"refused": True, **cm.REFUSED.parse(reply)}
    return dict(fa.STATE.parse(reply))


def _phase(w: TrnWorld, name: str, n1: bytes) -> str | None:
    for x in fa.EXCHANGES.parse(w.ask(name, fa.LIST))["exchanges"]:
        if x["n1"] == n1:
            return str(x["phase"])
    return None


def _holder(w: TrnWorld, oid: bytes) -> str:
    [name] = [n for n in ("alice", "bob") if status(w, n, oid) == "enabled"]
    return name


# who sends the damaged message: the initiator (alice) m1 and m3, the responder (bob) m2, m4 and here the request
# (an abort asked while m3 does not come: alice's m3 is damaged too, so bob keeps waiting and asks the TTP)
SENDER = {fx.OFFER: "alice", fx.AGREE: "bob", fx.CONFIRM: "alice", fx.COMMITMENT: "bob", fx.REQUEST: "bob"}
FINAL = {"done", "aborted", "gave_up", None}


def _mutation(data: st.DataObject) -> Mutate:
    if data.draw(st.booleans(), label="garbage"):
        junk = data.draw(raw, label="junk")
        return lambda m: m[:1] + junk  # the kind's code byte, then anything
    changes = data.draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))

    def change(m: bytes) -> bytes:
        out = bytearray(m)
        for pos, byte in changes:
            i = 1 + pos % (len(out) - 1) if len(out) > 1 else 0
            out[i] = byte if out[i] != byte else byte ^ 0xFF
        return bytes(out)

    return change


@CARD_FUZZ
@given(st.sampled_from(sorted(SENDER)), st.data())
def test_a_damaged_message_ends_fair_and_crashes_no_card(
    world: TrnWorld, caplog: pytest.LogCaptureFixture, code: int, data: st.DataObject
) -> None:
    w = world
    caplog.clear()
    a_has, b_has = (T1, T2) if _holder(w, T1) == "alice" else (T2, T1)
    assert _holder(w, b_has) == "bob"
    applet, alices = (w.cards[name]._applets[fa.START.code][0] for name in (SENDER[code], "alice"))
    assert isinstance(applet, FuzzWallet) and isinstance(alices, FuzzWallet)  # (the cards' applets)
    applet.damage = (code, _mutation(data))
    if code == fx.REQUEST:
        alices.damage = (fx.CONFIRM, lambda m: m[:1])  # (m3 refused: bob waits for it, then aborts)

    started = _order(w, "alice", fa.START, give=a_has, want=b_has, to=uid(w, "bob"))
    assert not started.get("refused"), started
    n1 = bytes(started["n1"])
    w.run(300)
    # a damaged message costs its own exchange at most: this offer, the first message since, arrives at once
    assert code == fx.OFFER or _phase(w, "bob", n1) == "proposed", (fx.NAMES[code], _phase(w, "bob", n1))
    _order(w, "bob", fa.ACCEPT, n1=n1)
    w.run(400)
    if code == fx.REQUEST:
        assert _phase(w, "bob", n1) == "agreed"
        _order(w, "bob", fa.ABORT, n1=n1)  # (its abort request to the TTP is the damaged message)
        w.run(400)

    # what a person does with an exchange that did not end: the initiator gives up before m3 or resolves after
    # it, the responder rejects an offer or aborts after agreeing; both keep recovering until both records end
    for _ in range(6):
        a, b = _phase(w, "alice", n1), _phase(w, "bob", n1)
        if a in FINAL and b in FINAL:
            break
        if a == "offered":
            _order(w, "alice", fa.GIVE_UP, n1=n1)
        elif a == "confirmed":
            _order(w, "alice", fa.RESOLVE, n1=n1)
        if b == "proposed":
            _order(w, "bob", fa.REJECT, n1=n1)
        elif b == "agreed":
            _order(w, "bob", fa.ABORT, n1=n1)
        recover(w, "alice", "bob", "ttp")
    assert applet.damage is None and alices.damage is None  # (each damaged message was sent)
    phases = (_phase(w, "alice", n1), _phase(w, "bob", n1))
    assert phases[0] in FINAL and phases[1] in FINAL, phases

    # fair: each voucher usable on exactly one card, both swapped or both home; nobody holds a second copy
    swapped = _holder(w, a_has) == "bob"
    assert _holder(w, b_has) == ("alice" if swapped else "bob"), (swapped, phases)
    if swapped:
        assert status(w, "alice", a_has) is None and status(w, "bob", b_has) is None
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and "failed on" in r.getMessage()]
    assert not crashes, [r.getMessage() for r in crashes]
