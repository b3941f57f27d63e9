"""Fuzzing the e-purse decoders (S1, S2, S3, L1, L2, L3, LR, SR of :mod:`cardnet.protocols.speed.purse`).

Random bytes and mutated valid encodings get :class:`DecodeError` or :class:`ProtocolError`, never another
exception; whatever decodes re-encodes to the same bytes, and its MAC check answers None or ``bad_mac``.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import purse as pp
from cardnet.wire import DecodeError, Uid
from conftest import mutate

EXAMPLES = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "300"))
UID = Uid.card(b"\x05" * 12)
KEY = pp.diversify(b"m" * 32, UID)
VALID: dict[type[pp.Authenticated], pp.Authenticated] = {
    pp.S1: pp.S1.make(KEY, uid=UID, n=41, rc=b"c" * 16, poid=b"PO-7", currency="EUR", amount=250),
    pp.S2: pp.S2.make(KEY, poid=b"PO-7", n=41, rc=b"c" * 16, rs=b"s" * 16, currency="EUR", amount=250),
    pp.S3: pp.S3.make(KEY, uid=UID, poid=b"PO-7", n=41, rs=b"s" * 16, currency="EUR", amount=250),
    pp.L1: pp.L1.make(KEY, uid=UID, m=3, rc=b"c" * 16, currency="USD", amount=2**40),
    pp.L2: pp.L2.make(KEY, m=3, rc=b"c" * 16, rs=b"s" * 16, currency="USD", amount=2**40),
    pp.L3: pp.L3.make(KEY, uid=UID, m=3, rs=b"s" * 16, currency="USD", amount=2**40),
    pp.LR: pp.LR.make(KEY, uid=UID, m=3, rc=b"c" * 16),
    pp.SR: pp.SR.make(KEY, uid=UID, n=41, rc=b"c" * 16, poid=b"PO-7"),
    pp.SE: pp.SE.make(KEY, uid=UID, n=41, rc=b"c" * 16, declined=True, poid=b"PO-7"),
}
# a purse whose load 3 (the L1 above) is pending: only the genuine LR for it makes the purse forget it
PENDING = pp.PurseState(m=4, loads={3: pp.PendingLoad(rc=b"c" * 16, currency="USD", amount=2**40)})
# and one whose debit 41 (the S1 above) is pending: only the genuine SR for it makes the purse forget it
PENDING_DEBIT = pp.PurseState(n=42, debits={b"PO-7": pp.PendingDebit(n=41, rc=b"c" * 16, currency="EUR", amount=250)})


def decode_or_refuse(cls: type[pp.Authenticated], raw: bytes) -> None:
    try:
        msg = cls.decode(raw)
    except (DecodeError, ProtocolError):
        return
    assert msg.encode() == raw  # one encoding per message
    try:
        msg.check(KEY)
    except ProtocolError as exc:
        assert exc.reason == "bad_mac"
    else:
        assert raw == VALID[cls].encode()  # only the genuine bytes pass the MAC


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.NAME)
@settings(max_examples=EXAMPLES, deadline=None)
@given(raw=st.binary(max_size=200))
def test_random_bytes_are_refused_cleanly(cls: type[pp.Authenticated], raw: bytes) -> None:
    decode_or_refuse(cls, raw)


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.NAME)
@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_mutated_valid_messages_are_refused_cleanly(cls: type[pp.Authenticated], seed: int) -> None:
    r = random.Random(seed)
    source = VALID[r.choice(list(VALID))].encode()  # any kind's bytes, fed to every decoder
    decode_or_refuse(cls, mutate(source, r))


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.NAME)
def test_every_valid_message_passes_its_own_decoder_and_no_other(cls: type[pp.Authenticated]) -> None:
    raw = VALID[cls].encode()
    assert cls.decode(raw) == VALID[cls]
    for other in VALID:
        if other is not cls:
            with pytest.raises((DecodeError, ProtocolError)):
                other.decode(raw).check(KEY)


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32), raw=st.none() | st.binary(max_size=120))
def test_no_lr_but_the_sams_makes_the_purse_forget_a_pending_load(seed: int, raw: bytes | None) -> None:
    """What a host may send as ``purse.drop_load``: random bytes, or any message mutated (an L1 or L2 of that load, the
    LR itself). The purse refuses it with ``DecodeError`` or ``ProtocolError``, or forgets load 3 on the genuine LR."""
    if raw is None:
        r = random.Random(seed)
        raw = mutate(VALID[r.choice(list(VALID))].encode(), r)
    try:
        state, dropped = pp.apply_lr(PENDING, key=KEY, uid=UID, lr=pp.LR.decode(raw))
    except (DecodeError, ProtocolError):
        return
    assert raw == VALID[pp.LR].encode() and dropped and not state.loads


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32), raw=st.none() | st.binary(max_size=160))
def test_no_sr_but_the_sams_makes_the_purse_forget_a_pending_debit(seed: int, raw: bytes | None) -> None:
    """The same for ``purse.drop_debit``: the purse forgets debit 41 on the genuine SR only."""
    if raw is None:
        r = random.Random(seed)
        raw = mutate(VALID[r.choice(list(VALID))].encode(), r)
    try:
        state, dropped = pp.apply_sr(PENDING_DEBIT, key=KEY, uid=UID, sr=pp.SR.decode(raw))
    except (DecodeError, ProtocolError):
        return
    assert raw == VALID[pp.SR].encode() and dropped and not state.debits
