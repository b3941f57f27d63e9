"""Fuzzing the host with a real card: arbitrary messages from applications and remote hosts.

The contract: whatever arrives, ``submit``/``receive_remote``/``send_message``
raise nothing but :class:`HostError` (``busy`` when the dispatch table is
full, ``forged_src`` when an application sends as someone else), ``pump()``
never raises, and the card answers a param it cannot decode with
``card.refused`` ``bad_param`` (never a crash, never a state change).

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
from fuzzing import fuzz_settings
from hypothesis import assume, example, given
from hypothesis import strategies as st

from cardnet.applets.counter import COUNT, CounterApplet
from cardnet.applets.echo import EchoApplet
from cardnet.applets.notes import NOTE, NOTE_ACK, NotesApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host import Capability, Host, HostError, Origin
from cardnet.host import mtypes as hm
from cardnet.host.core import HOST_PORT
from cardnet.protocols.echo import REQUEST
from cardnet.store import SqliteStore
from cardnet.wire import DecodeError, Message, MType, Uid
from cardnet.wire.mtypes import all_mtypes
from conftest import NOW

FUZZ = fuzz_settings(200, deadline_s=5, large_data=True)
T = NOW.timestamp()
REMOTE = b"\x0b" * 12  # routed to another host
STRANGER = b"\x0c" * 12  # no route
MAX_QUEUE = 8  # small, so that bursts hit the bound


def new_host(ca: pki.CertificateAuthority) -> tuple[Host, Card, Capability]:
    card = Card(SqliteStore(":memory:", durable=False), applets=[EchoApplet(), NotesApplet(), CounterApplet()])
    personalise(card, ca, pin="1234", now=NOW)
    host = Host([card], routes={REMOTE: "remote"}, max_queue=MAX_QUEUE, name="fuzz")
    return host, card, host.acquire()


# Garbage params: raw bytes, CBOR of arbitrary values (to get past the CBOR parser into the schema checks).
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=40) | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.integers() | st.text(max_size=40), inner, max_size=5)
    ),
    max_leaves=12,
)
params = st.binary(max_size=200) | cbor_values.map(cbor2.dumps)

UID_KINDS = ("card", "cap", "local_port", "host_port", "remote", "stranger")
codes = st.sampled_from([m.code for m in all_mtypes()]) | st.integers(0, 0xFFFF)
message_specs = st.tuples(
    st.sampled_from(UID_KINDS),  # src
    st.sampled_from(UID_KINDS),  # dst
    st.integers(0, 2**32 - 1),  # a port for the kinds that take one
    codes,
    params,
    st.sampled_from(["capability", "app", "remote"]),  # how it arrives
)


def uid_of(kind: str, port: int, card: Card, cap: Capability) -> Uid:
    return {
        "card": card.uid,
        "cap": cap.uid,
        "local_port": Uid(card.uid.domain, port),
        "host_port": Uid(card.uid.domain, HOST_PORT),
        "remote": Uid(REMOTE, port),
        "stranger": Uid(STRANGER, port),
    }[kind]


@FUZZ
@given(bursts=st.lists(st.lists(message_specs, min_size=1, max_size=12), min_size=1, max_size=4))
@example(bursts=[[("cap", "card", 0, REQUEST.code, cbor2.dumps({"é" * 300: 1}), "capability")]])  # once crashed pump
@example(bursts=[[("remote", "card", 1, cm.PIN_VERIFY.code, cbor2.dumps({0: "1234"}), "remote")] * 9])
@example(bursts=[[("cap", "host_port", 0, hm.ROUTE.code, cbor2.dumps({0: b"x"}), "capability")]])  # a bad domain
@example(bursts=[[("remote", "card", 0, hm.UNDELIVERABLE.code, cbor2.dumps({0: 1, 1: "?"}), "remote")]])
def test_arbitrary_messages_never_break_the_host(ca: pki.CertificateAuthority, bursts: list[list[Any]]) -> None:
    host, card, cap = new_host(ca)
    for burst in bursts:
        for src_kind, dst_kind, port, mtype, param, how in burst:
            msg = Message(uid_of(src_kind, port, card, cap), uid_of(dst_kind, port, card, cap), mtype, param)
            try:
                if how == "capability":
                    cap.send_message(msg)
                elif how == "app":
                    host.submit(msg, Origin("app", str(cap.uid)))  # what the socket server does after its src check
                else:
                    host.receive_remote(msg, "remote")
            except HostError as exc:
                assert exc.reason in {"busy", "forged_src"}, exc
                assert exc.reason != "forged_src" or (how == "capability" and msg.src != cap.uid)
        effects = host.pump(T)
        assert host.idle
        for eff in effects:
            assert eff.address == "remote" and eff.msg.dst.domain == REMOTE
            eff.sent()
        cap.receive_all()
    assert host.held == {}


# mtypes a card handles without privilege: it decodes their params
DECODED: list[MType] = [REQUEST, COUNT, NOTE, NOTE_ACK, cm.PIN_VERIFY, cm.PORT_REQUEST, cm.LOGOUT]


@FUZZ
@given(mtype=st.sampled_from(DECODED), param=params)
@example(mtype=REQUEST, param=cbor2.dumps({"é" * 300: 1}))  # a long non-ASCII key in the error text
@example(mtype=COUNT, param=cbor2.dumps({0: 1, "\u2603" * 200: b""}))
@example(mtype=cm.PIN_VERIFY, param=cbor2.dumps({0: "1234"}) + b"\x00")  # the right PIN and trailing bytes
def test_the_card_refuses_garbage_params_with_bad_param(
    ca: pki.CertificateAuthority, mtype: MType, param: bytes
) -> None:
    try:
        mtype.schema.decode(param)
    except DecodeError:
        pass
    else:
        assume(False)  # a valid param by chance: not garbage
    host, card, cap = new_host(ca)
    card.flush()  # the port grant's ack, so the state below is what a refusal must leave alone
    state = dict(card._mem)
    cap.send_message(Message(cap.uid, card.uid, mtype.code, param))
    host.pump(T)
    [answer] = cap.receive_all()
    assert answer.mtype == cm.REFUSED.code and answer.src == card.uid
    refusal = cm.REFUSED.parse(answer)
    assert (refusal["mtype"], refusal["reason"]) == (mtype.code, "bad_param")
    assert card._mem == state and card.outbox() == []  # a refusal changes nothing and is not stored
    assert cap.uid not in card._authenticated


@FUZZ
@given(param=params, domain=st.binary(min_size=12, max_size=12), where=st.sampled_from(["local", "route", "none"]),
       reason=st.none() | st.text(max_size=200), at=st.integers(0, 2**40),
       code=st.none() | st.text("abcdefghijklmnopqrstuvwxyz_", max_size=32), count=st.integers(1, 2**40))  # fmt: skip
def test_route_messages_decode_or_refuse(
    param: bytes, domain: bytes, where: str, reason: str | None, at: int, code: str | None, count: int
) -> None:
    """host.route, host.route_is and host.undeliverable: garbage raises DecodeError only; what the host sends
    decodes to itself (a notice's code, and the code and count of the last notice, too)."""
    for mtype in (hm.ROUTE, hm.ROUTE_IS, hm.UNDELIVERABLE):
        with contextlib.suppress(DecodeError):
            mtype.schema.decode(param)
    fields: dict[str, Any] = {"domain": domain, "where": where}
    if reason is not None:
        fields |= {"undeliverable": reason, "undeliverable_at": at, "undeliverable_count": count}
        if code is not None:
            fields["undeliverable_code"] = code
    assert hm.ROUTE_IS.schema.decode(hm.ROUTE_IS.schema.encode(fields)) == fields
    notice: dict[str, Any] = {"mtype": at & 0xFFFF, "dst": Uid(domain, 0), "reason": reason or ""}
    if code is not None:
        notice["code"] = code
    assert hm.UNDELIVERABLE.schema.decode(hm.UNDELIVERABLE.schema.encode(notice)) == notice
    assert hm.ROUTE.schema.decode(hm.ROUTE.schema.encode({"domain": domain})) == {"domain": domain}
