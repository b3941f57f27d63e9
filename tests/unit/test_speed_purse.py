"""SPEED's e-purse, the pure functions: key diversification, the seven messages, the purse's moves, the SAM's checks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cardnet.crypto import profile
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import purse as pp
from cardnet.wire import DecodeError, Uid

MASTER = b"M" * 32
UID = Uid.card(b"\x01" * 12)
OTHER = Uid.card(b"\x02" * 12)
KEY = pp.diversify(MASTER, UID)
RC, RS = b"c" * 16, b"s" * 16
POID = b"order-0001"


def loaded(amount: int = 1000, currency: str = "EUR", state: pp.PurseState | None = None) -> pp.PurseState:
    """``state`` (a fresh purse) credited ``amount`` through L1/L2/L3."""
    st, l1 = pp.begin_load(state or pp.PurseState(), key=KEY, uid=UID, currency=currency, amount=amount, rc=RC)
    l2 = pp.sam_answer_l1(KEY, l1, currency=currency, amount=amount, rs=RS)
    st, l3 = pp.apply_l2(st, key=KEY, uid=UID, l2=l2)
    pp.sam_check_l3(KEY, l3, uid=UID, l2=l2)
    return st


def debit_s2(
    st: pp.PurseState, poid: bytes = POID, amount: int = 250, currency: str = "EUR"
) -> tuple[pp.PurseState, pp.S1, pp.S2]:
    st, s1 = pp.begin_debit(st, key=KEY, uid=UID, poid=poid, currency=currency, amount=amount, rc=RC)
    return st, s1, pp.sam_answer_s1(KEY, s1, poid=poid, currency=currency, amount=amount, rs=RS)


# --- diversification --------------------------------------------------------------------------------------------


def test_diversified_keys_differ_per_card_and_per_master_and_are_stable() -> None:
    keys = {pp.diversify(m, u) for m in (MASTER, b"N" * 32) for u in (UID, OTHER, UID.with_port(1))}
    assert len(keys) == 6
    assert all(len(k) == pp.KEY_BYTES for k in keys)
    assert pp.diversify(MASTER, UID) == KEY
    assert KEY != MASTER
    # the derivation is stated: HKDF-SHA256 with the protocol's salt and the Uid in the info
    info = b"cardnet/speed/purse/card-key/v1\x00" + bytes(UID)
    assert profile.hkdf(MASTER, salt=b"cardnet/speed/purse", info=info) == KEY


@pytest.mark.parametrize("master", [b"", b"k" * 31, b"k" * 33])
def test_a_master_key_is_32_bytes(master: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        pp.diversify(master, UID)
    assert e.value.reason == "bad_key"


# --- the messages -----------------------------------------------------------------------------------------------

SAMPLES: dict[str, dict[str, Any]] = {
    "S1": {"uid": UID, "n": 7, "rc": RC, "poid": POID, "currency": "EUR", "amount": 250},
    "S2": {"poid": POID, "n": 7, "rc": RC, "rs": RS, "currency": "EUR", "amount": 250},
    "S3": {"uid": UID, "poid": POID, "n": 7, "rs": RS, "currency": "EUR", "amount": 250},
    "L1": {"uid": UID, "m": 3, "rc": RC, "currency": "USD", "amount": 500},
    "L2": {"m": 3, "rc": RC, "rs": RS, "currency": "USD", "amount": 500},
    "L3": {"uid": UID, "m": 3, "rs": RS, "currency": "USD", "amount": 500},
    "LR": {"uid": UID, "m": 3, "rc": RC},
    "SE": {"uid": UID, "n": 7, "rc": RC, "declined": True, "poid": POID},
}
CLASSES = {cls.NAME: cls for cls in pp.MESSAGES}


def _tampered(value: object) -> object:
    """A different, still well-formed value of the same field."""
    if isinstance(value, Uid):
        return OTHER
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, str):
        return "USD" if value != "USD" else "EUR"
    if isinstance(value, bool):
        return not value
    assert isinstance(value, int)
    return value + 1


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_message_round_trips_and_its_mac_checks(name: str) -> None:
    cls = CLASSES[name]
    msg = cls.make(KEY, **SAMPLES[name])
    raw = msg.encode()
    assert cls.decode(raw) == msg
    assert cls.decode(raw).encode() == raw
    msg.check(KEY)
    with pytest.raises(ProtocolError) as e:
        msg.check(pp.diversify(MASTER, OTHER))  # another card's key
    assert e.value.reason == "bad_mac"


@pytest.mark.parametrize(("name", "field"), [(n, f) for n, fields in SAMPLES.items() for f in [*fields, "mac"]])
def test_every_tampered_field_of_every_message_is_refused(name: str, field: str) -> None:
    cls = CLASSES[name]
    msg = cls.make(KEY, **SAMPLES[name])
    forged = replace(msg, **{field: _tampered(getattr(msg, field))})  # type: ignore[type-var]
    again = cls.decode(forged.encode())  # well-formed: only the MAC tells
    with pytest.raises(ProtocolError) as e:
        again.check(KEY)
    assert e.value.reason == "bad_mac"


def test_a_message_of_one_kind_does_not_pass_for_another() -> None:
    """Same fields, another label: the MACs differ (an S1 cannot be reflected as an S3, an S2 as an L2)."""
    s1 = pp.S1.make(KEY, **SAMPLES["S1"])
    as_s3 = pp.S3(uid=s1.uid, poid=s1.poid, n=s1.n, rs=s1.rc, currency=s1.currency, amount=s1.amount, mac=s1.mac)
    with pytest.raises(ProtocolError):
        as_s3.check(KEY)
    l2 = pp.L2.make(KEY, **SAMPLES["L2"])
    s2_like: dict[str, Any] = {
        "poid": POID,
        "n": l2.m,
        "rc": l2.rc,
        "rs": l2.rs,
        "currency": l2.currency,
        "amount": l2.amount,
    }
    with pytest.raises(ProtocolError):
        pp.S2(**s2_like, mac=l2.mac).check(KEY)


@pytest.mark.parametrize("code", ["eur", "EU", "EURO", "E1R", "", "ÉUR", "€UR", "Eur", "US$", 978, None])
def test_bad_currency_codes_are_refused(code: object) -> None:
    with pytest.raises(ProtocolError) as e:
        pp.check_currency(code)
    assert e.value.reason == "bad_currency"
    with pytest.raises(ProtocolError):
        pp.S1.make(KEY, **{**SAMPLES["S1"], "currency": code})
    with pytest.raises(ProtocolError):
        pp.begin_load(pp.PurseState(), key=KEY, uid=UID, currency=code, amount=1, rc=RC)  # type: ignore[arg-type]


def test_a_currency_that_is_not_three_capitals_on_the_wire_is_refused() -> None:
    raw = pp.S1.make(KEY, **SAMPLES["S1"]).encode()
    bad = raw.replace(b"cEUR", b"ceur")
    assert bad != raw
    with pytest.raises(ProtocolError):
        pp.S1.decode(bad)


@pytest.mark.parametrize("amount", [0, -1, pp.MAX_AMOUNT + 1, True, 1.5])
def test_amounts_are_whole_minor_units_in_range(amount: object) -> None:
    with pytest.raises((ProtocolError, DecodeError)):
        pp.S1.make(KEY, **{**SAMPLES["S1"], "amount": amount})
    with pytest.raises(ProtocolError) as e:
        pp.begin_load(pp.PurseState(), key=KEY, uid=UID, currency="EUR", amount=amount, rc=RC)  # type: ignore[arg-type]
    assert e.value.reason == "bad_amount"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("poid", b"", "bad_poid"),
        ("poid", b"x" * 65, "bad_poid"),
        ("rc", b"r" * 15, "bad_nonce"),
        ("n", -1, "bad_counter"),
        ("n", pp.MAX_COUNTER + 1, "bad_counter"),
        ("uid", b"\x00" * 16, "bad_uid"),
        ("mac", b"m" * 16, "bad_mac"),
    ],
)
def test_malformed_values_are_refused_on_construction(field: str, value: object, reason: str) -> None:
    with pytest.raises(ProtocolError) as e:
        pp.S1(**{**SAMPLES["S1"], "mac": b"m" * 32, field: value})
    assert e.value.reason == reason


def test_the_largest_messages_are_max_message_bytes() -> None:
    big = {"n": pp.MAX_COUNTER, "poid": b"p" * pp.POID_MAX_BYTES, "amount": pp.MAX_AMOUNT}
    sizes = {
        name: len(CLASSES[name].make(KEY, **{**fields, **{k: v for k, v in big.items() if k in fields}}).encode())
        for name, fields in SAMPLES.items()
    }
    assert max(sizes.values()) == pp.MAX_MESSAGE_BYTES
    assert sizes["S1"] == sizes["S2"] == sizes["S3"] == pp.MAX_MESSAGE_BYTES


# --- the purse -----------------------------------------------------------------------------------------------


def test_load_then_debit_moves_the_balance_and_keeps_the_proof() -> None:
    st = loaded(1000)
    assert st.accounts["EUR"] == pp.Account(balance=1000, loaded=1000, debited=0)
    assert st.m == 1 and not st.loads and len(st.load_proofs) == 1
    st, s1, s2 = debit_s2(st)
    assert s1.n == 0 and st.n == 1 and POID in st.debits
    assert st.balance("EUR") == 1000  # nothing moves before S2
    st, s3 = pp.apply_s2(st, key=KEY, uid=UID, s2=s2)
    pp.sam_check_s3(KEY, s3, uid=UID, s2=s2)
    assert st.accounts["EUR"] == pp.Account(balance=750, loaded=1000, debited=250)
    assert not st.debits and st.proofs == {POID: s3}
    assert (s3.uid, s3.poid, s3.n, s3.rs, s3.currency, s3.amount) == (UID, POID, 0, RS, "EUR", 250)


def test_a_replayed_s2_gives_the_same_s3_and_debits_nothing() -> None:
    st, _, s2 = debit_s2(loaded(1000))
    st, s3 = pp.apply_s2(st, key=KEY, uid=UID, s2=s2)
    for _ in range(3):
        again, s3_again = pp.apply_s2(st, key=KEY, uid=UID, s2=pp.S2.decode(s2.encode()))
        assert s3_again == s3 and again == st
    assert st.balance("EUR") == 750


def test_beginning_a_pending_debit_again_gives_the_same_s1() -> None:
    st, s1, _ = debit_s2(loaded(1000))
    again, s1b = pp.begin_debit(st, key=KEY, uid=UID, poid=POID, currency="EUR", amount=250, rc=b"z" * 16)
    assert again == st and s1b == s1
    with pytest.raises(ProtocolError) as e:
        pp.begin_debit(st, key=KEY, uid=UID, poid=POID, currency="EUR", amount=251, rc=RC)
    assert e.value.reason == "conflict"


def test_an_order_paid_cannot_be_begun_again() -> None:
    st, _, s2 = debit_s2(loaded(1000))
    st, _ = pp.apply_s2(st, key=KEY, uid=UID, s2=s2)
    with pytest.raises(ProtocolError) as e:
        pp.begin_debit(st, key=KEY, uid=UID, poid=POID, currency="EUR", amount=250, rc=RC)
    assert e.value.reason == "already_paid"


def test_a_debit_larger_than_the_balance_is_refused_with_nothing_changed() -> None:
    st = loaded(300)
    with pytest.raises(ProtocolError) as e:
        pp.begin_debit(st, key=KEY, uid=UID, poid=POID, currency="EUR", amount=301, rc=RC)
    assert e.value.reason == "insufficient"
    with pytest.raises(ProtocolError) as e:
        pp.begin_debit(st, key=KEY, uid=UID, poid=POID, currency="USD", amount=1, rc=RC)
    assert e.value.reason == "insufficient"
    # two debits that each fit but not together: the second S2 is refused and changes nothing
    st, _, s2a = debit_s2(st, b"a", 200)
    st, _, s2b = debit_s2(st, b"b", 200)
    st, _ = pp.apply_s2(st, key=KEY, uid=UID, s2=s2a)
    with pytest.raises(ProtocolError) as e:
        pp.apply_s2(st, key=KEY, uid=UID, s2=s2b)
    assert e.value.reason == "insufficient"
    assert st.balance("EUR") == 100 and b"b" in st.debits  # still pending: load, then present the S2 again
    st = loaded(100, state=st)
    st, _ = pp.apply_s2(st, key=KEY, uid=UID, s2=s2b)
    assert st.balance("EUR") == 0 and st.accounts["EUR"].debited == 400


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("poid", b"another order", "no_pending"),
        ("amount", 251, "mismatch"),
        ("amount", 249, "mismatch"),
        ("n", 1, "mismatch"),
        ("rc", b"d" * 16, "mismatch"),
        ("currency", "USD", "mismatch"),
    ],
)
def test_an_s2_for_another_poid_amount_or_n_is_refused(field: str, value: object, reason: str) -> None:
    st, s1, _ = debit_s2(loaded(1000))
    fields = {"poid": POID, "n": s1.n, "rc": RC, "rs": RS, "currency": "EUR", "amount": 250, field: value}
    s2 = pp.S2.make(KEY, **fields)  # genuine MAC: a SAM that answered something else
    with pytest.raises(ProtocolError) as e:
        pp.apply_s2(st, key=KEY, uid=UID, s2=s2)
    assert e.value.reason == reason


def test_a_forged_s2_is_refused_before_anything_else() -> None:
    st, _, s2 = debit_s2(loaded(1000))
    for forged in (replace(s2, amount=1), replace(s2, mac=bytes(32)), pp.S2.make(b"k" * 32, **SAMPLES["S2"])):
        with pytest.raises(ProtocolError) as e:
            pp.apply_s2(st, key=KEY, uid=UID, s2=forged)
        assert e.value.reason == "bad_mac"


def test_another_cards_s2_is_refused() -> None:
    other_key = pp.diversify(MASTER, OTHER)
    mine, _, s2 = debit_s2(loaded(1000))
    theirs, _ = pp.begin_load(pp.PurseState(), key=other_key, uid=OTHER, currency="EUR", amount=1000, rc=RC)
    with pytest.raises(ProtocolError) as e:
        pp.apply_s2(theirs, key=other_key, uid=OTHER, s2=s2)
    assert e.value.reason == "bad_mac"
    assert mine.debits  # untouched


def test_a_replayed_l2_credits_once() -> None:
    st, l1 = pp.begin_load(pp.PurseState(), key=KEY, uid=UID, currency="USD", amount=500, rc=RC)
    l2 = pp.sam_answer_l1(KEY, l1, currency="USD", amount=500, rs=RS)
    st, l3 = pp.apply_l2(st, key=KEY, uid=UID, l2=l2)
    again, l3b = pp.apply_l2(st, key=KEY, uid=UID, l2=l2)
    assert again == st and l3b == l3 and st.balance("USD") == 500
    with pytest.raises(ProtocolError) as e:
        pp.apply_l2(st, key=KEY, uid=UID, l2=pp.L2.make(KEY, **{**SAMPLES["L2"], "m": 0, "rs": b"t" * 16}))
    assert e.value.reason == "conflict"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("m", 5, "no_pending"),
        ("amount", 501, "mismatch"),
        ("rc", b"d" * 16, "mismatch"),
        ("currency", "EUR", "mismatch"),
    ],
)
def test_an_l2_for_another_load_is_refused(field: str, value: object, reason: str) -> None:
    st, l1 = pp.begin_load(pp.PurseState(), key=KEY, uid=UID, currency="USD", amount=500, rc=RC)
    fields = {"m": l1.m, "rc": RC, "rs": RS, "currency": "USD", "amount": 500, field: value}
    with pytest.raises(ProtocolError) as e:
        pp.apply_l2(st, key=KEY, uid=UID, l2=pp.L2.make(KEY, **fields))
    assert e.value.reason == reason


def test_balances_cannot_overflow_and_currencies_are_bounded() -> None:
    st = loaded(pp.MAX_BALANCE)
    with pytest.raises(ProtocolError) as e:
        pp.begin_load(st, key=KEY, uid=UID, currency="EUR", amount=1, rc=RC)
    assert e.value.reason == "overflow"
    # an L2 that would overflow is refused at credit time too (two loads begun, each fitting alone)
    st2, l1a = pp.begin_load(pp.PurseState(), key=KEY, uid=UID, currency="EUR", amount=pp.MAX_AMOUNT, rc=RC)
    st2, l1b = pp.begin_load(st2, key=KEY, uid=UID, currency="EUR", amount=1, rc=RC)
    st2, _ = pp.apply_l2(
        st2, key=KEY, uid=UID, l2=pp.sam_answer_l1(KEY, l1a, currency="EUR", amount=pp.MAX_AMOUNT, rs=RS)
    )
    with pytest.raises(ProtocolError) as e:
        pp.apply_l2(st2, key=KEY, uid=UID, l2=pp.sam_answer_l1(KEY, l1b, currency="EUR", amount=1, rs=RS))
    assert e.value.reason == "overflow"
    many = pp.PurseState(accounts={f"X{chr(65 + i // 26)}{chr(65 + i % 26)}": pp.Account() for i in range(16)})
    with pytest.raises(ProtocolError) as e:
        pp.begin_load(many, key=KEY, uid=UID, currency="EUR", amount=1, rc=RC)
    assert e.value.reason == "too_many_currencies"


def test_a_17th_pending_debit_is_refused_and_none_is_forgotten() -> None:
    """The SAM may have authorised any pending debit (its S2 lost on the way: the purchase it pays is finished by
    recovery, which presents that S2): the purse never drops one to make room. A 17th is refused ``debits_pending``
    with nothing changed, and the first debit's S2, however late, is debited (it used to be refused no_pending)."""
    st = loaded(10_000)
    st, _, first = debit_s2(st, poid=b"p0", amount=300)
    for i in range(1, pp.MAX_PENDING):
        st, _, _ = debit_s2(st, poid=b"p%d" % i, amount=1)
    with pytest.raises(ProtocolError) as e:
        pp.begin_debit(st, key=KEY, uid=UID, poid=b"p16", currency="EUR", amount=1, rc=RC)
    assert e.value.reason == "debits_pending" and "finish them first" in str(e.value)
    assert len(st.debits) == pp.MAX_PENDING and st.n == pp.MAX_PENDING
    st, s3 = pp.apply_s2(st, key=KEY, uid=UID, s2=first)
    assert st.balance("EUR") == 10_000 - 300 and s3.n == 0
    st, _, _ = debit_s2(st, poid=b"p16", amount=1)  # room again
    assert len(st.debits) == pp.MAX_PENDING


def test_a_pending_debit_is_forgotten_only_on_the_sams_sr_for_it() -> None:
    st = loaded(1000)
    st, s1, _ = debit_s2(st, poid=b"p0", amount=300)
    st, other, other_s2 = debit_s2(st, poid=b"p1", amount=7)
    sr = pp.sam_end_debit(KEY, pp.end_debit(st, key=KEY, uid=UID, poid=b"p0"))
    assert (sr.uid, sr.n, sr.rc, sr.poid) == (UID, 0, RC, b"p0")
    assert len(sr.encode()) <= pp.MAX_MESSAGE_BYTES
    for forged, reason in [
        (replace(sr, mac=bytes(32)), "bad_mac"),  # a host cannot make one
        (pp.SR.make(pp.diversify(MASTER, OTHER), uid=OTHER, n=0, rc=RC, poid=b"p0"), "bad_mac"),  # another card's
        (pp.SR.make(KEY, uid=UID, n=1, rc=RC, poid=b"p0"), "mismatch"),  # not the debit p0 has under way
        (pp.SR.make(KEY, uid=UID, n=2, rc=RC, poid=b"p9"), "no_pending"),  # a debit never begun
    ]:
        with pytest.raises(ProtocolError) as e:
            pp.apply_sr(st, key=KEY, uid=UID, sr=forged)
        assert e.value.reason == reason
    with pytest.raises(ProtocolError) as e:
        pp.apply_sr(st, key=KEY, uid=OTHER, sr=sr)  # presented to another card
    assert e.value.reason in ("bad_mac", "mismatch")
    assert [x.n for x in pp.pending_s1s(st, key=KEY, uid=UID)] == [0, 1]
    assert pp.pending_s1s(st, key=KEY, uid=UID) == [s1, other]  # the same bytes as the first time
    dropped, was = pp.apply_sr(st, key=KEY, uid=UID, sr=sr)
    assert was and list(dropped.debits) == [b"p1"] and dropped.n == st.n and dropped.accounts == st.accounts
    again, was = pp.apply_sr(dropped, key=KEY, uid=UID, sr=sr)  # the same SR again: nothing more
    assert not was and again is dropped
    with pytest.raises(ProtocolError) as e:  # its S2 cannot exist (the SAM refused it); had it come, nothing debits
        pp.apply_s2(dropped, key=KEY, uid=UID, s2=pp.sam_answer_s1(KEY, s1, poid=b"p0", currency="EUR", amount=300,
                                                                  rs=RS))  # fmt: skip
    assert e.value.reason == "no_pending"
    debited, _ = pp.apply_s2(dropped, key=KEY, uid=UID, s2=other_s2)
    with pytest.raises(ProtocolError) as e:  # a debit made is never refused
        pp.apply_sr(debited, key=KEY, uid=UID, sr=pp.sam_end_debit(KEY, pp.end_debit(st, key=KEY, uid=UID, poid=b"p1")))
    assert e.value.reason == "conflict"
    assert debited.balance("EUR") == 1000 - 7


def test_an_s2_the_purse_declines_is_never_applied_and_the_debit_ends_only_on_the_sams_sr() -> None:
    """The owner declines an S2 the purse cannot pay: the debit is marked declined (its S2 is refused from then on,
    so its S3 never exists) and stays pending, holding its place, until the SAM's SR; the card's SE says so."""
    st = loaded(1000)
    st, s1, s2 = debit_s2(st, poid=b"p0", amount=300)
    plain = pp.end_debit(st, key=KEY, uid=UID, poid=b"p0")
    assert (plain.uid, plain.n, plain.rc, plain.declined, plain.poid) == (UID, 0, RC, False, b"p0")
    declined, se = pp.decline_s2(st, key=KEY, uid=UID, s2=s2)
    assert se.declined and (se.n, se.rc, se.poid) == (0, RC, b"p0") and se.mac != plain.mac
    assert pp.decline_s2(declined, key=KEY, uid=UID, s2=s2) == (declined, se)  # the same again, nothing more
    assert pp.end_debit(declined, key=KEY, uid=UID, poid=b"p0") == se
    assert len(se.encode()) <= pp.MAX_MESSAGE_BYTES
    assert declined.balance("EUR") == 1000 and list(declined.debits) == [b"p0"]
    for refused in (
        lambda: pp.apply_s2(declined, key=KEY, uid=UID, s2=s2),
        lambda: pp.begin_debit(declined, key=KEY, uid=UID, poid=b"p0", currency="EUR", amount=300, rc=RC),
    ):
        with pytest.raises(ProtocolError) as e:
            refused()
        assert e.value.reason == "debit_refused"
    with pytest.raises(ProtocolError) as e:  # a host cannot make the SAM's S2 for a decline of its own
        pp.decline_s2(st, key=KEY, uid=UID, s2=replace(s2, mac=bytes(32)))
    assert e.value.reason == "bad_mac"
    debited, _ = pp.apply_s2(st, key=KEY, uid=UID, s2=s2)
    with pytest.raises(ProtocolError) as e:  # a debit made is never declined
        pp.decline_s2(debited, key=KEY, uid=UID, s2=s2)
    assert e.value.reason == "conflict"
    with pytest.raises(ProtocolError) as e:
        pp.end_debit(debited, key=KEY, uid=UID, poid=b"p0")
    assert e.value.reason == "no_pending"
    sr = pp.sam_end_debit(KEY, se)
    with pytest.raises(ProtocolError) as e:  # the SAM takes the card's SE only
        pp.sam_end_debit(pp.diversify(MASTER, OTHER), se)
    assert e.value.reason == "bad_mac"
    gone, was = pp.apply_sr(declined, key=KEY, uid=UID, sr=sr)
    assert was and not gone.debits and gone.accounts == st.accounts
    assert s1.n == sr.n


def test_a_17th_pending_load_is_refused_and_none_is_forgotten() -> None:
    """The broker may have charged any pending load (its L2 lost on the way): the purse never drops one to make room.
    A 17th is refused ``loads_pending`` with nothing changed, and the first load's L2, however late, is credited."""
    st, first = pp.begin_load(pp.PurseState(), key=KEY, uid=UID, currency="EUR", amount=500, rc=RC)
    for _ in range(pp.MAX_PENDING - 1):
        st, _ = pp.begin_load(st, key=KEY, uid=UID, currency="EUR", amount=1, rc=RC)
    with pytest.raises(ProtocolError) as e:
        pp.begin_load(st, key=KEY, uid=UID, currency="EUR", amount=1, rc=RC)
    assert e.value.reason == "loads_pending"
    assert len(st.loads) == pp.MAX_PENDING and st.m == pp.MAX_PENDING
    st, _ = pp.apply_l2(st, key=KEY, uid=UID, l2=pp.sam_answer_l1(KEY, first, currency="EUR", amount=500, rs=RS))
    assert st.balance("EUR") == 500
    st, _ = pp.begin_load(st, key=KEY, uid=UID, currency="EUR", amount=1, rc=RC)  # room again
    assert len(st.loads) == pp.MAX_PENDING


def test_a_pending_load_is_forgotten_only_on_the_sams_lr_for_it() -> None:
    st, l1 = pp.begin_load(pp.PurseState(), key=KEY, uid=UID, currency="EUR", amount=500, rc=RC)
    st, other = pp.begin_load(st, key=KEY, uid=UID, currency="EUR", amount=7, rc=RS)
    lr = pp.sam_refuse_l1(KEY, l1)
    assert (lr.uid, lr.m, lr.rc) == (UID, 0, RC)
    for forged, reason in [
        (replace(lr, mac=bytes(32)), "bad_mac"),  # a host cannot make one
        (pp.LR.make(pp.diversify(MASTER, OTHER), uid=OTHER, m=0, rc=RC), "bad_mac"),  # another card's LR
        (pp.LR.make(KEY, uid=UID, m=1, rc=RC), "mismatch"),  # not for the L1 this purse began as load 1
        (pp.LR.make(KEY, uid=UID, m=2, rc=RC), "no_pending"),  # a load never begun
    ]:
        with pytest.raises(ProtocolError) as e:
            pp.apply_lr(st, key=KEY, uid=UID, lr=forged)
        assert e.value.reason == reason
    with pytest.raises(ProtocolError) as e:
        pp.apply_lr(st, key=KEY, uid=OTHER, lr=lr)  # presented to another card
    assert e.value.reason in ("bad_mac", "mismatch")
    dropped, was = pp.apply_lr(st, key=KEY, uid=UID, lr=lr)
    assert was and list(dropped.loads) == [1] and dropped.m == st.m and dropped.accounts == st.accounts
    again, was = pp.apply_lr(dropped, key=KEY, uid=UID, lr=lr)  # the same LR again: nothing more
    assert not was and again is dropped
    with pytest.raises(ProtocolError) as e:  # its L2 cannot exist (the SAM refused it); had it come, nothing credits
        pp.apply_l2(dropped, key=KEY, uid=UID, l2=pp.sam_answer_l1(KEY, l1, currency="EUR", amount=500, rs=RS))
    assert e.value.reason == "no_pending"
    credited, _ = pp.apply_l2(
        dropped, key=KEY, uid=UID, l2=pp.sam_answer_l1(KEY, other, currency="EUR", amount=7, rs=RS)
    )
    with pytest.raises(ProtocolError) as e:  # a load credited is never refused
        pp.apply_lr(credited, key=KEY, uid=UID, lr=pp.sam_refuse_l1(KEY, other))
    assert e.value.reason == "conflict"
    with pytest.raises(ProtocolError) as e:
        pp.sam_refuse_l1(KEY, replace(l1, amount=1))  # the SAM refuses only the card's own L1
    assert e.value.reason == "bad_mac"


def test_at_most_max_kept_proofs_are_kept_the_oldest_dropped() -> None:
    st = loaded(10_000)
    for i in range(pp.MAX_KEPT + 3):
        st, _, s2 = debit_s2(st, poid=b"p%d" % i, amount=1)
        st, _ = pp.apply_s2(st, key=KEY, uid=UID, s2=s2)
    assert len(st.proofs) == pp.MAX_KEPT
    assert min(p.n for p in st.proofs.values()) == 3
    assert st.accounts["EUR"].debited == pp.MAX_KEPT + 3


# --- the SAM's checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("poid", b"other"), ("currency", "USD"), ("amount", 1)])
def test_the_sam_answers_only_an_s1_for_what_the_broker_says_is_due(field: str, value: object) -> None:
    _, s1, _ = debit_s2(loaded(1000))
    due: dict[str, Any] = {"poid": POID, "currency": "EUR", "amount": 250, field: value}
    with pytest.raises(ProtocolError) as e:
        pp.sam_answer_s1(KEY, s1, rs=RS, **due)
    assert e.value.reason == "not_due"


def test_the_sam_refuses_a_forged_s1_and_l1() -> None:
    _, s1, _ = debit_s2(loaded(1000))
    with pytest.raises(ProtocolError) as e:
        pp.sam_answer_s1(pp.diversify(MASTER, OTHER), s1, poid=POID, currency="EUR", amount=250, rs=RS)
    assert e.value.reason == "bad_mac"
    l1 = pp.L1.make(KEY, **SAMPLES["L1"])
    with pytest.raises(ProtocolError) as e:
        pp.sam_answer_l1(KEY, replace(l1, amount=5000), currency="USD", amount=5000, rs=RS)
    assert e.value.reason == "bad_mac"
    with pytest.raises(ProtocolError) as e:
        pp.sam_answer_l1(KEY, l1, currency="USD", amount=5000, rs=RS)
    assert e.value.reason == "not_due"


def test_the_sam_checks_an_s3_and_l3_against_what_it_authorised() -> None:
    st, _, s2 = debit_s2(loaded(1000))
    _, s3 = pp.apply_s2(st, key=KEY, uid=UID, s2=s2)
    pp.sam_check_s3(KEY, s3, uid=UID, s2=s2)
    with pytest.raises(ProtocolError) as e:
        pp.sam_check_s3(KEY, s3, uid=UID, s2=replace(s2, rs=b"q" * 16))
    assert e.value.reason == "mismatch"
    with pytest.raises(ProtocolError) as e:
        pp.sam_check_s3(KEY, s3, uid=OTHER, s2=s2)
    assert e.value.reason == "mismatch"
    with pytest.raises(ProtocolError) as e:
        pp.sam_check_s3(KEY, replace(s3, amount=1), uid=UID, s2=s2)
    assert e.value.reason == "bad_mac"
    l3 = pp.L3.make(KEY, **SAMPLES["L3"])
    l2 = pp.L2.make(KEY, **SAMPLES["L2"])
    pp.sam_check_l3(KEY, l3, uid=UID, l2=l2)
    with pytest.raises(ProtocolError) as e:
        pp.sam_check_l3(KEY, l3, uid=UID, l2=replace(l2, m=4))
    assert e.value.reason == "mismatch"


@pytest.mark.parametrize(
    ("n", "poid_bytes", "amount", "s_bytes", "l_bytes"),
    [
        (0, 1, 1, 84, 81),  # the smallest
        (5, 16, 250, 100, 82),  # a usual one (the figures docs/speed.md gives)
        (1000, 32, 100_000, 122, 87),
        (pp.MAX_COUNTER, 64, pp.MAX_AMOUNT, 160, 93),  # the largest
    ],
)
def test_message_sizes_as_documented(n: int, poid_bytes: int, amount: int, s_bytes: int, l_bytes: int) -> None:
    poid = b"P" * poid_bytes
    common: dict[str, Any] = {"currency": "EUR", "amount": amount}
    msgs = [
        pp.S1.make(KEY, uid=UID, n=n, rc=RC, poid=poid, **common),
        pp.S2.make(KEY, poid=poid, n=n, rc=RC, rs=RS, **common),
        pp.S3.make(KEY, uid=UID, poid=poid, n=n, rs=RS, **common),
        pp.L1.make(KEY, uid=UID, m=n, rc=RC, **common),
        pp.L2.make(KEY, m=n, rc=RC, rs=RS, **common),
        pp.L3.make(KEY, uid=UID, m=n, rs=RS, **common),
    ]
    assert [len(m.encode()) for m in msgs] == [s_bytes] * 3 + [l_bytes] * 3
    assert len(pp.LR.make(KEY, uid=UID, m=n, rc=RC).encode()) == {0: 74, 5: 74, 1000: 76}.get(n, 78)
    assert len(pp.SR.make(KEY, uid=UID, n=n, rc=RC, poid=poid).encode()) == {0: 77, 5: 92, 1000: 111}.get(n, 145)
