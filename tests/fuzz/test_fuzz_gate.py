"""Fuzzing the gate's decoders and a gate card: bad input gets a ProtocolError or a refusal, never a crash.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.applets.gate import ADMISSIONS, EVENT, LIST, PRUNE, PRUNED, REFRESH, SETUP, STATE, TICK, GateApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.protocols import gate
from cardnet.protocols.errors import ProtocolError
from cardnet.store import SqliteStore
from cardnet.wire import DecodeError, Message, MType, Uid
from conftest import NOW

N = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=N, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
T = NOW.timestamp()
OID = b"\x07" * 16

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=80) | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.integers(0, 10), kids, max_size=8),
    max_leaves=16,
)
raw = st.binary(max_size=300) | cbor_values.map(cbor2.dumps)


@FUZZ
@given(raw)
def test_admission_decoder(body: bytes) -> None:
    try:
        adm = gate.Admission.decode(OID, body)
    except ProtocolError as exc:
        assert exc.reason == "bad_admission"
        return
    assert gate.Admission.decode(OID, adm.encode()) == adm


@FUZZ
@given(raw | st.binary(min_size=9, max_size=9))
def test_admission_record_decoder(body: bytes) -> None:
    """``adm:<oid>`` holds a full record or a pruned one's marker: either round-trips, or ``bad_admission``."""
    try:
        rec = gate.decode_record(OID, body)
    except ProtocolError as exc:
        assert exc.reason == "bad_admission"
        return
    assert gate.decode_record(OID, rec.encode()) == rec
    if isinstance(rec, gate.Pruned):
        assert len(body) == gate.PRUNED_BYTES and rec.report != gate.WAITING and rec.verdict != gate.PENDING


@FUZZ
@given(raw)
def test_settings_decoder(body: bytes) -> None:
    try:
        s = gate.Settings.decode(body)
    except ProtocolError as exc:
        assert exc.reason == "bad_settings"
        return
    assert gate.Settings.decode(s.encode()) == s


admissions = st.builds(
    gate.Admission,
    st.just(OID),
    st.binary(min_size=12, max_size=12).map(Uid.card),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 2**40),
    st.sampled_from(gate.VERDICTS),
    st.text(max_size=40),
    st.sampled_from(gate.REPORTS),
    st.none() | st.text(max_size=40),
)


@FUZZ
@given(admissions, st.integers(0, 2**41), st.booleans(), st.text(max_size=40), st.integers(0, 60_000), st.booleans())
def test_the_rules_never_undo_a_decision(
    adm: gate.Admission, now_ms: int, ok: bool, reason: str, wait_ms: int, strict: bool
) -> None:
    """Ticks and trace answers in any order: a decided verdict never changes, a report is answered once."""
    s = gate.Settings(wait_ms, strict)
    assert gate.Admission.decode(OID, adm.encode()) == adm
    after = gate.on_trace(gate.on_tick(adm, now_ms, s), ok, reason)
    if adm.verdict != gate.PENDING:
        assert after.verdict == adm.verdict
    if adm.report != gate.WAITING:
        assert after.report == adm.report and after.report_reason == adm.report_reason
    assert gate.on_trace(after, not ok, "again") == after or after.report == gate.WAITING
    if gate.prunable(after, now_ms):  # what pruning keeps: the outcome and the time, read back as they were
        kept = gate.decode_record(OID, gate.prune(after).encode())
        assert isinstance(kept, gate.Pruned) and (kept.verdict, kept.report, kept.at_ms) == (
            after.verdict, after.report, after.at_ms,
        )  # fmt: skip
        assert kept.admitted == after.admitted


@pytest.fixture(scope="module")
def gate_card(ca: pki.CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Card:
    tmp: Path = tmp_path_factory.mktemp("fuzz-gate")
    card = Card(SqliteStore(str(tmp / "g.db"), durable=False), applets=[GateApplet()])
    personalise(card, ca, pin="1", now=NOW)
    return card


GATE_MTYPES = [SETUP, LIST, TICK, REFRESH, PRUNE]


@FUZZ
@given(st.sampled_from(GATE_MTYPES), raw, st.booleans(), st.booleans())
def test_a_gate_card_never_crashes(gate_card: Card, mtype: MType, body: bytes, valid: bool, owner: bool) -> None:
    """Random gate orders from its owner (logged in) or a stranger: answered or refused, never an applet error."""
    card = gate_card
    app = Uid(card.uid.domain, 1) if owner else Uid(b"\x0e" * 12, 5)
    if owner:
        assert card.step(cm.PIN_VERIFY.make(app, card.uid, pin="1"), T)
    if valid:  # well-formed params with random content
        options: dict[int, dict[str, Any]] = {
            SETUP.code: {"issuers": [body[:600]], "wait_ms": len(body) * 300, "strict": bool(body[:1] == b"\0")},
            LIST.code: {"after": body[:16].ljust(16, b"\0"), "pruned": bool(body[:1] == b"\1")},
            PRUNE.code: {"before_ms": int.from_bytes(body[:8], "big")},
            TICK.code: {},
            REFRESH.code: {},
        }
        msg = mtype.make_from(app, card.uid, options[mtype.code])
    else:
        msg = Message(app, card.uid, mtype.code, body)
    for out in card.step(msg, T):
        if out.msg.mtype == cm.REFUSED.code:
            assert cm.REFUSED.parse(out.msg)["reason"] != "applet_error", cm.REFUSED.parse(out.msg)
        else:
            assert out.msg.mtype in (STATE.code, ADMISSIONS.code, EVENT.code, PRUNED.code), out.msg


@FUZZ
@given(raw)
def test_gate_answers_decode_strictly(body: bytes) -> None:
    """What a gate card pushes or answers, decoded by the gate service and the CLI: DecodeError or a round-trip."""
    for mtype in (STATE, ADMISSIONS, EVENT, PRUNED):
        try:
            fields = mtype.schema.decode(body)
        except DecodeError:
            continue
        assert mtype.schema.encode(fields) == body
