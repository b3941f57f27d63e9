"""TENeT optimistic fair exchange of two vouchers (TENeT 5.1 and appendix, DESIGN.md section 6), sans-I/O.

Theory of operation
-------------------
Card ``a`` (the initiator, the paper's S_A) holds voucher v1 and wants v2, held
by card ``b`` (S_B). The vouchers are TRN token objects (``protocols/trn/token.py``);
the messages travel as inner messages of the TRN session between the two cards
(and between each card and the TTP's card), so they are already authenticated
and confidential on the wire. They are *also* signed and self-contained, because
they are the evidence a card shows the TTP:

* ``offer`` m1 (a -> b, after the owner's privileged ``start``): ``n1``, the
  voucher given (``give``) and the one wanted (``want``), v1 sealed (HPKE) to
  b's card key, both card Uids, signed by a. a locks v1 (a pending exchange
  cannot be sent).
* b holds the offer for its owner (approach 2b: the owner's privileged
  ``accept`` or ``reject``). On accept b checks it holds ``want`` usable, draws
  ``n2`` and names the exchange ``xid = h(n2)``; it locks v2 (the paper's
  "deletes v2": kept only to give back on an abort) and sends ``agree`` m2:
  ``xid``, ``h(m1)``, v2 sealed to a, b's signed movement statement for v2
  (b -> a), signed by b.
* a checks m2 (b's signature, ``h(m1)``, v2 opens to the voucher it wanted),
  gives v1 up for good (it may now only come back by the TTP's abort) and sends
  ``confirm`` m3: ``xid`` and a's movement statement for v1 (a -> b), signed by a.
* b checks m3, stores v1 (``trustless``, traced with the authority as a TRN
  receiver does: the statement is what the authority records), drops v2, and
  sends ``commitment`` m4: ``n2``.
* a checks ``h(n2) == xid``, stores v2 (``trustless``, traced) and drops v1.

Both movements use the TRN transfer nonce ``xid[:4]`` (the transfer id is
``(from, to, nonce)``), so the authority records and blames an exchange's
movements exactly as a transfer's: a cloned card that gives one voucher in two
exchanges signs two statements moving one oid from one holding to two devices.

Recovery with the TTP (the appendix; requests name the exchange by ``h(n2)``,
not ``n1``, so a replayed m1 and an abort cannot undo a finished exchange):

* a, after m3 without m4 (``confirmed``), asks ``resolve``: m1, m2, b's
  certificate, a's statement for v1, signed by a. b, after m2 without m3
  (``agreed``), asks ``abort``: m1, m2, a's certificate, signed by b; from then
  on it ignores m3. a, having *given up* before m3, refuses a late m2 and asks
  ``abort`` too.
* The TTP checks the evidence (m1 signed by a naming b, m2 signed by b over
  ``h(m1)`` and ``xid``, the request signed by a party of that exchange; a
  resolve only from a, with a's statement) and decides **first-wins** per
  ``xid``: the first request decides, every later one gets the same admission.
  An admission is signed by the TTP; ``resolved`` carries a's statement for v1.
* A card acts on an admission once, in the states that wait for one: a
  ``resolved`` gives a v2 and b v1; an ``aborted`` gives each its own voucher
  back.

Fairness: b stores v1 only on m3 or a ``resolved``; a stores v2 only on m4 or a
``resolved``; a gets v1 back only by giving up before m3 or by an ``aborted``;
b gets v2 back only by a ``rejected`` offer (nothing locked) or an ``aborted``.
a sends m3 only while not given up, and asks ``resolve`` only after m3; b asks
``abort`` only before storing v1 and ignores m3 after asking; m4 exists only
after b stored v1. With the TTP's one decision per ``xid``, the two vouchers
end swapped or both back home.

Sans-I/O: every function takes the exchange record, the message and what it
needs (keys, signer, opener, randomness) and returns the new record, what to
send and what to do to the card's holdings, as values (:class:`Outcome`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn.token import OID_BYTES, Token
from cardnet.protocols.trn.transfer import MAX_CERT, MAX_TOKEN, TRANSFER_NONCE_BYTES, statement_bytes
from cardnet.wire import Bytes, DecodeError, Field, Schema, Text, UidType
from cardnet.wire.cbor import dumps
from cardnet.wire.ids import Uid
from cardnet.wire.memo import Memo

NONCE_BYTES = 16  # n1, n2
XID_BYTES = 32  # h(n2)
SIG_BYTES = profile.SIGNATURE_BYTES
MAX_BOX = MAX_TOKEN + profile.HPKE_OVERHEAD
MAX_EVIDENCE = MAX_BOX + 2 * MAX_CERT + 1024  # an encoded m1 (box, a's and v1's issuer's certificates) or m2

_OID = Bytes(OID_BYTES, OID_BYTES)
_NONCE = Bytes(NONCE_BYTES, NONCE_BYTES)
_XID = Bytes(XID_BYTES, XID_BYTES)
_SIG = Bytes(SIG_BYTES, SIG_BYTES)
_HASH = Bytes(32, 32)
_BOX = Bytes(MAX_BOX)

RESOLVED, ABORTED = "resolved", "aborted"  # the TTP's two decisions

# -- messages (inner messages of the TRN session: one code byte + a CBOR map) ------------------------

OFFER_SCHEMA = Schema(
    "fairx.offer",
    [
        Field(0, "a", UidType()),
        Field(1, "b", UidType()),
        Field(2, "n1", _NONCE),
        Field(3, "give", _OID),
        Field(4, "want", _OID),
        Field(5, "box", _BOX),  # v1 sealed to b's card key
        Field(6, "sig", _SIG),  # a's, over offer_bytes
        Field(7, "cert", Bytes(MAX_CERT)),  # a's certificate (b checks it against its CA and a's Uid)
        Field(8, "issuer_cert", Bytes(MAX_CERT)),  # the certificate of v1's issuer (an agent card): b checks v1
        # the TTP a follows, signed: b takes part only if it follows the same one (see same_ttp), and that TTP
        # decides only exchanges that name it. (Optional to decode for offers stored before it existed.)
        Field(9, "ttp", UidType(), optional=True),
    ],
)
TTP_MISMATCH = "ttp_mismatch"  # b's refusal of an offer naming another TTP than b's (or none)
WITHDRAWN = "withdrawn"  # a's refusal of its own offer: its owner gave it up
AGREE_SCHEMA = Schema(
    "fairx.agree",
    [
        Field(0, "xid", _XID),
        Field(1, "m1h", _HASH),
        Field(2, "box", _BOX),  # v2 sealed to a's card key
        Field(3, "st", _SIG),  # b's movement statement: want leaves b for a (nonce xid[:4])
        Field(4, "sig", _SIG),  # b's, over agree_bytes
        Field(5, "issuer_cert", Bytes(MAX_CERT)),  # the certificate of v2's issuer: a checks v2 before m3
    ],
)
CONFIRM_SCHEMA = Schema(
    "fairx.confirm",
    [
        Field(0, "xid", _XID),
        Field(1, "st", _SIG),  # a's movement statement: give leaves a for b
        Field(2, "sig", _SIG),  # a's, over confirm_bytes
    ],
)
COMMITMENT_SCHEMA = Schema("fairx.commitment", [Field(0, "xid", _XID), Field(1, "n2", _NONCE)])
REQUEST_SCHEMA = Schema(
    "fairx.request",
    [
        Field(0, "kind", Text(8)),  # resolve | abort
        Field(1, "m1", Bytes(MAX_EVIDENCE)),
        Field(2, "m2", Bytes(MAX_EVIDENCE)),
        Field(3, "peer_cert", Bytes(MAX_CERT)),  # the other party's certificate
        Field(4, "st", _SIG, optional=True),  # resolve: a's statement for v1, handed to b in the admission
        Field(5, "sig", _SIG),  # the requester's, over request_bytes
        Field(6, "cert", Bytes(MAX_CERT)),  # the requester's certificate
    ],
)
ADMISSION_SCHEMA = Schema(
    "fairx.admission",
    [
        Field(0, "xid", _XID),
        Field(1, "decision", Text(8)),  # resolved | aborted
        Field(2, "st", _SIG, optional=True),  # resolved: a's statement for v1
        Field(3, "sig", _SIG),  # the TTP's, over admission_bytes
        Field(4, "cert", Bytes(MAX_CERT)),  # the TTP's certificate (the card checks it is its TTP's)
    ],
)
REFUSAL_SCHEMA = Schema("fairx.refusal", [Field(0, "n1", _NONCE), Field(1, "reason", Text(64))])

OFFER, AGREE, CONFIRM, COMMITMENT, REQUEST, ADMISSION, REFUSAL = range(16, 23)
INNER: dict[int, Schema] = {
    OFFER: OFFER_SCHEMA,
    AGREE: AGREE_SCHEMA,
    CONFIRM: CONFIRM_SCHEMA,
    COMMITMENT: COMMITMENT_SCHEMA,
    REQUEST: REQUEST_SCHEMA,
    ADMISSION: ADMISSION_SCHEMA,
    # b's owner rejected the offer (or b cannot take part): a unlocks v1; or a's owner gave it up (WITHDRAWN): b's
    # offer ends if b's owner has not answered it yet
    REFUSAL: REFUSAL_SCHEMA,
}
NAMES = {code: schema.name for code, schema in INNER.items()}


def encode_inner(code: int, fields: dict[str, Any]) -> bytes:
    return bytes([code]) + INNER[code].encode(fields)


def decode_inner(raw: bytes) -> tuple[int, dict[str, Any]]:
    if not raw or raw[0] not in INNER:
        raise ProtocolError("bad_record", f"unknown inner fairx message {raw[:1].hex() or 'empty'}")
    try:
        return raw[0], INNER[raw[0]].decode(raw[1:])
    except DecodeError as exc:
        raise ProtocolError("bad_record", f"{NAMES[raw[0]]}: {exc}") from None


# -- what is signed ------------------------------------------------------------------------------


def offer_bytes(f: dict[str, Any]) -> bytes:
    signed = ["cardnet/fairx-offer/v1", bytes(f["a"]), bytes(f["b"]), f["n1"], f["give"], f["want"]]
    signed.append(profile.sha256(f["box"]))
    if f.get("ttp") is not None:
        signed.append(bytes(f["ttp"]))
    return dumps(signed)


def same_ttp(m1: dict[str, Any], my_ttp: Uid | None) -> bool:
    """Whether offer ``m1`` names the TTP this card follows. Each card acts only on its own TTP's admissions, so
    two cards that followed different TTPs could have one exchange resolved by one and aborted by the other (a
    voucher on both cards): b takes part only in an exchange whose offer names its own TTP."""
    return my_ttp is not None and m1.get("ttp") == my_ttp


def agree_bytes(xid: bytes, m1h: bytes, box: bytes) -> bytes:
    return dumps(["cardnet/fairx-agree/v1", xid, m1h, profile.sha256(box)])


def confirm_bytes(xid: bytes, m1h: bytes) -> bytes:
    return dumps(["cardnet/fairx-confirm/v1", xid, m1h])


def request_bytes(kind: str, xid: bytes, st: bytes | None) -> bytes:
    return dumps(["cardnet/fairx-request/v1", kind, xid, st or b""])


def admission_bytes(decision: str, xid: bytes, st: bytes | None) -> bytes:
    return dumps(["cardnet/fairx-admission/v1", decision, xid, st or b""])


def xid_of(n2: bytes) -> bytes:
    """The exchange's name: ``h(n2)`` (the appendix's correction of ``n1``)."""
    return profile.sha256(b"cardnet/fairx-xid/v1" + n2)


def move_nonce(xid: bytes) -> bytes:
    """The TRN transfer nonce of both movements of exchange ``xid`` (transfer id = (from, to, nonce))."""
    return xid[:TRANSFER_NONCE_BYTES]


def box_info(kind: bytes, name: bytes) -> bytes:
    return b"cardnet/fairx-voucher/v1/" + kind + b"/" + name


def _verify(key: profile.PublicKey, sig: bytes, data: bytes, what: str) -> None:
    try:
        profile.verify(key, sig, data)
    except CryptoError:
        raise ProtocolError("bad_signature", f"{what} is not signed by its sender") from None


# -- the exchange record ---------------------------------------------------------------------------


class Phase(enum.Enum):
    # initiator (a)
    OFFERED = "offered"  # m1 sent, v1 locked: waiting for m2
    GAVE_UP = "gave_up"  # the owner gave up before m3: v1 back; a late m2 is refused (abort asked)
    CONFIRMED = "confirmed"  # m3 sent, v1 given: waiting for m4 (or resolve)
    RESOLVING = "resolving"  # resolve asked: waiting for the admission (m4 also ends it)
    # responder (b)
    PROPOSED = "proposed"  # m1 held for the owner's accept/reject: nothing locked
    AGREED = "agreed"  # m2 sent, v2 locked: waiting for m3 (or abort)
    ABORTING = "aborting"  # abort asked: m3 is ignored; waiting for the admission
    # both
    DONE = "done"  # swapped
    ABORTED = "aborted"  # both vouchers back home (or never moved)


INITIATOR, RESPONDER = "initiator", "responder"
WAITING_FOR_TTP = frozenset({Phase.RESOLVING, Phase.ABORTING})
FINISHED = frozenset({Phase.DONE, Phase.ABORTED})

_RECORD = Schema(
    "fairx.record",
    [
        Field(0, "role", Text(10)),
        Field(1, "phase", Text(10)),
        Field(2, "m1", Bytes(MAX_EVIDENCE)),
        Field(3, "m2", Bytes(MAX_EVIDENCE), optional=True),
        Field(4, "n2", _NONCE, optional=True),  # responder
        Field(5, "token_in", Bytes(MAX_TOKEN), optional=True),  # the voucher this card gets, once opened
        Field(6, "st_in", _SIG, optional=True),  # the peer's statement for token_in
        Field(7, "st_out", _SIG, optional=True),  # this card's statement for the voucher it gives
        Field(8, "peer_cert", Bytes(MAX_CERT)),  # the other card's certificate (evidence for the TTP)
        Field(9, "why", Text(64), optional=True),  # aborted: why (rejected, gave up, the TTP, ...)
    ],
)


@dataclass(frozen=True)
class Exchange:
    """One card's record of one exchange (``x:<n1>`` in the wallet applet's state)."""

    role: str
    phase: Phase
    m1: bytes  # the encoded offer, as signed by a
    peer_cert: bytes
    m2: bytes | None = None
    n2: bytes | None = None
    token_in: bytes | None = None
    st_in: bytes | None = None
    st_out: bytes | None = None
    why: str | None = None
    offer: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offer", _offer_of(self.m1))

    @property
    def n1(self) -> bytes:
        return bytes(self.offer["n1"])

    @property
    def a(self) -> Uid:
        a: Uid = self.offer["a"]
        return a

    @property
    def b(self) -> Uid:
        b: Uid = self.offer["b"]
        return b

    @property
    def gives(self) -> bytes:
        """The voucher this card gives."""
        return bytes(self.offer["give"] if self.role == INITIATOR else self.offer["want"])

    @property
    def gets(self) -> bytes:
        """The voucher this card gets."""
        return bytes(self.offer["want"] if self.role == INITIATOR else self.offer["give"])

    @property
    def peer(self) -> Uid:
        return self.b if self.role == INITIATOR else self.a

    def evolve(self, **changes: Any) -> Exchange:
        """This record with ``changes`` (``dataclasses.replace`` without its walk over every field and without
        deriving the offer again: m1 never changes)."""
        if not changes.keys() <= _CHANGEABLE:
            raise TypeError(f"an exchange record has no changeable field {sorted(changes.keys() - _CHANGEABLE)}")
        y = object.__new__(Exchange)
        d = y.__dict__
        mine = self.__dict__
        for name in _FIELDS:
            d[name] = changes[name] if name in changes else mine[name]
        return y

    @cached_property  # (m2 is decoded once a record, not at every look: an initiator never has n2)
    def xid(self) -> bytes | None:
        if self.n2 is not None:
            return xid_of(self.n2)
        if self.m2 is not None:
            return bytes(AGREE_SCHEMA.decode(self.m2)["xid"])
        return None

    def encode(self) -> bytes:
        d: dict[str, Any] = {"role": self.role, "phase": self.phase.value, "m1": self.m1, "peer_cert": self.peer_cert}
        for name in ("m2", "n2", "token_in", "st_in", "st_out", "why"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        raw = _RECORD.encode(d)
        if type(self) is Exchange:
            _RECORDS.remember(raw, self)  # the next step decodes what this one stored
        return raw

    @classmethod
    def decode(cls, raw: bytes) -> Exchange:
        if cls is Exchange and type(raw) is bytes:
            x = _RECORDS.get(raw)
            if x is not None:
                return x
        d = _RECORD.decode(raw)
        x = cls(role=d.pop("role"), phase=Phase(d.pop("phase")), **d)
        if cls is Exchange and type(raw) is bytes:
            _RECORDS.remember(raw, x)
        return x


# An exchange's record is rebuilt at every step (decoded from the card's state, then advanced), and every rebuild
# decodes the same offer m1. Decoding is a function of the bytes, so decoded offers are kept here by their exact
# bytes (bounded: the memo starts over when full) and shared: nothing changes an offer's fields once decoded.
# Records themselves are frozen values, kept the same way by the bytes they were decoded from or encoded to (each
# step decodes what the last one stored): what a lookup returns is what decoding those bytes returns.
_OFFERS: Memo[bytes, dict[str, Any]] = Memo()
_RECORDS: Memo[bytes, Exchange] = Memo()
_OFFER_HASHES: Memo[bytes, bytes] = Memo()


def offer_hash(m1: bytes) -> bytes:
    """``h(m1)``: how m2 names the offer it answers (and a card indexes an offer until m2)."""
    return _OFFER_HASHES.worked(m1, profile.sha256) if type(m1) is bytes else profile.sha256(m1)


def _offer_of(m1: bytes) -> dict[str, Any]:
    return _OFFERS.worked(m1, OFFER_SCHEMA.decode) if type(m1) is bytes else OFFER_SCHEMA.decode(m1)


_FIELDS = ("role", "phase", "m1", "peer_cert", "m2", "n2", "token_in", "st_in", "st_out", "why", "offer")
_CHANGEABLE = frozenset(_FIELDS) - {"m1", "offer"}
assert tuple(f.name for f in fields(Exchange)) == _FIELDS, "Exchange.evolve copies every field"


# -- effects ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receive:
    """Store the voucher got: ``trustless`` from ``frm`` (TRN transfer ``(frm, me, nonce)``), then trace it."""

    oid: bytes
    token: bytes
    frm: Uid
    nonce: bytes
    st: bytes


@dataclass(frozen=True)
class Outcome:
    """What a step of the exchange decided: the new record and the effects, for the applet to carry out.

    ``send``: ``(to, code, fields)`` with ``to`` "peer" (the other card) or "ttp"; ``lock``/``unlock``: an oid
    whose holding becomes ``exchanging`` / ``enabled`` again; ``drop``: an oid given away for good;
    ``receive``: the voucher got.
    """

    exchange: Exchange | None
    send: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    lock: bytes | None = None
    unlock: bytes | None = None
    drop: bytes | None = None
    receive: Receive | None = None
    note: str = ""


Signer = Callable[[bytes], bytes]  # this card's signature
Opener = Callable[[bytes, bytes], bytes]  # (sealed, info) -> plaintext, with this card's key (HPKE)
Sealer = Callable[[bytes, bytes], bytes]  # (plaintext, info) -> sealed to the peer card's key
# (issuer certificate DER, the Uid it must name) -> the issuer's key, checked as an agent's under the card's CA;
# raises ProtocolError
IssuerKey = Callable[[bytes, Uid], profile.PublicKey]


def checked_voucher(token: bytes, issuer_cert: bytes, issuer_key: IssuerKey, reason: str, what: str) -> Token:
    """The voucher ``token`` once its issuer's signature is checked: a card gives its own voucher only for one
    its issuer signed as it is (a card whose code was changed could otherwise seal an altered copy of its own
    voucher under its own, genuine signature on the message)."""
    got = Token.decode(token)
    try:
        got.verify(issuer_key(issuer_cert, got.issuer))
    except ProtocolError as exc:
        raise ProtocolError(reason, f"{what} is refused: {exc}") from None
    return got


# -- the initiator (a) -----------------------------------------------------------------------------


def start(
    *,
    a: Uid,
    b: Uid,
    give_token: bytes,
    want: bytes,
    n1: bytes,
    my_cert: bytes,
    peer_cert: bytes,
    seal: Sealer,
    sign: Signer,
    issuer_cert: bytes,
    ttp: Uid,
) -> Outcome:
    """The owner's ``start``: offer ``give_token`` (held enabled: the applet checked) for ``want`` held by ``b``;
    ``issuer_cert`` is the certificate of its issuer, for ``b`` to check it; ``ttp`` the TTP ``a`` follows."""
    give = Token.decode(give_token).oid
    if give == want:
        raise ProtocolError("refused", "an exchange swaps two different vouchers")
    if not b.is_card or b == a:
        raise ProtocolError("refused", "exchange with another card (a Uid with port 0)")
    f: dict[str, Any] = {"a": a, "b": b, "n1": n1, "give": give, "want": want, "ttp": ttp}
    f["box"] = seal(give_token, box_info(b"v1", n1))
    f["sig"] = sign(offer_bytes(f))
    f["cert"] = my_cert
    f["issuer_cert"] = issuer_cert
    m1 = OFFER_SCHEMA.encode(f)
    x = Exchange(INITIATOR, Phase.OFFERED, m1, peer_cert)
    return Outcome(x, [("peer", OFFER, f)], lock=give, note="offered")


def on_agree(
    x: Exchange,
    m2: dict[str, Any],
    *,
    b_key: profile.PublicKey,
    open_: Opener,
    sign: Signer,
    my_cert: bytes,
    issuer_key: IssuerKey,
) -> Outcome:
    """m2 reached a. Offered: check it, give v1 up, confirm (m3). Gave up: refuse it and ask the TTP to abort."""
    if x.role != INITIATOR:
        raise ProtocolError("wrong_peer", "an agreement reached the responder of this exchange")
    m1h = offer_hash(x.m1)
    if m2["m1h"] != m1h:
        raise ProtocolError("bad_agree", "the agreement answers another offer")
    _verify(b_key, m2["sig"], agree_bytes(m2["xid"], m1h, m2["box"]), "the agreement")
    xid = bytes(m2["xid"])
    if x.phase is Phase.OFFERED:
        try:
            token_in = open_(m2["box"], box_info(b"v2", xid))
        except CryptoError:
            raise ProtocolError("bad_agree", "the voucher in the agreement is not sealed to this card") from None
        got = checked_voucher(token_in, m2["issuer_cert"], issuer_key, "bad_agree", "the voucher in the agreement")
        if got.oid != x.gets:
            raise ProtocolError("bad_agree", "the agreement carries another voucher than the one wanted")
        _verify(b_key, m2["st"], statement_bytes(x.gets, x.b, x.a, move_nonce(xid)), "b's movement statement")
        st_out = sign(statement_bytes(x.gives, x.a, x.b, move_nonce(xid)))
        m2_raw = AGREE_SCHEMA.encode(m2)
        y = x.evolve(phase=Phase.CONFIRMED, m2=m2_raw, token_in=token_in, st_in=bytes(m2["st"]), st_out=st_out)
        return Outcome(y, [("peer", CONFIRM, _confirm(y, sign))], note="confirmed")
    if x.phase is Phase.CONFIRMED and x.xid == xid:
        return Outcome(x, [("peer", CONFIRM, _confirm(x, sign))])  # m2 resent: m3 lost
    if x.phase is Phase.GAVE_UP and x.m2 is None:
        # a gave up before m3: it refuses the late m2 and asks the TTP to abort (b then gets v2 back sooner)
        y = x.evolve(m2=AGREE_SCHEMA.encode(m2))
        return Outcome(y, [("ttp", REQUEST, request(y, ABORTED, sign, my_cert))], note="abort asked")
    if x.phase is Phase.GAVE_UP and x.xid == xid:
        return Outcome(x, [("ttp", REQUEST, request(x, ABORTED, sign, my_cert))])
    return Outcome(x)  # a duplicate or a stale m2: nothing to do


def _confirm(x: Exchange, sign: Signer) -> dict[str, Any]:
    xid = x.xid
    assert xid is not None and x.st_out is not None
    return {"xid": xid, "st": x.st_out, "sig": sign(confirm_bytes(xid, offer_hash(x.m1)))}


def on_commitment(x: Exchange, m4: dict[str, Any]) -> Outcome:
    """m4 reached a: ``h(n2) == xid`` proves b stored v1. a stores v2 and drops v1."""
    if x.role != INITIATOR or x.phase not in (Phase.CONFIRMED, Phase.RESOLVING):
        return Outcome(x)  # a duplicate, or not for a confirmed exchange (b never sends m4 before m3)
    if xid_of(m4["n2"]) != x.xid:
        raise ProtocolError("bad_commitment", "the commitment does not open this exchange's name")
    return _swapped(x, "done")


def give_up(x: Exchange) -> Outcome:
    """a's owner gives up before m3 (timeout or a change of mind): v1 back; a late m2 is refused. b is told
    (``WITHDRAWN``), so that an offer its owner has not answered yet ends there too instead of waiting to be
    accepted in vain (an accept would lock v2 until the TTP aborts)."""
    if x.role != INITIATOR or x.phase is not Phase.OFFERED:
        raise ProtocolError(
            "refused", f"only an offer not yet confirmed can be given up (this exchange is {x.phase.value})"
        )
    told = [("peer", REFUSAL, {"n1": x.n1, "reason": WITHDRAWN})]
    return Outcome(x.evolve(phase=Phase.GAVE_UP, why="gave up"), told, unlock=x.gives, note="gave up")


def resolve(x: Exchange, sign: Signer, my_cert: bytes) -> Outcome:
    """a's recovery after m3 without m4: ask the TTP to resolve (repeatable)."""
    if x.role != INITIATOR or x.phase not in (Phase.CONFIRMED, Phase.RESOLVING):
        raise ProtocolError(
            "refused", f"resolve is for a confirmed exchange waiting for b (this one is {x.phase.value})"
        )
    y = x.evolve(phase=Phase.RESOLVING)
    return Outcome(y, [("ttp", REQUEST, request(y, RESOLVED, sign, my_cert))], note="resolve asked")


# -- the responder (b) -----------------------------------------------------------------------------


def on_offer(
    m1: dict[str, Any], *, me: Uid, peer: Uid, a_key: profile.PublicKey, open_: Opener, issuer_key: IssuerKey
) -> Outcome:
    """m1 reached b from the session peer ``peer``: checked (signature, the voucher opens to what it names and
    its issuer signed it as it is) and held for the owner, who sees the voucher offered. Nothing is locked yet."""
    if m1["b"] != me or m1["a"] != peer:
        raise ProtocolError("wrong_peer", "the offer names other cards than this session's")
    _verify(a_key, m1["sig"], offer_bytes(m1), "the offer")
    try:
        token_in = open_(m1["box"], box_info(b"v1", m1["n1"]))
    except CryptoError:
        raise ProtocolError("bad_offer", "the offered voucher is not sealed to this card") from None
    if checked_voucher(token_in, m1["issuer_cert"], issuer_key, "bad_offer", "the offered voucher").oid != m1["give"]:
        raise ProtocolError("bad_offer", "the offered voucher is not the one the offer names")
    x = Exchange(RESPONDER, Phase.PROPOSED, OFFER_SCHEMA.encode(m1), bytes(m1["cert"]), token_in=token_in)
    return Outcome(x, note="proposed")


def accept(x: Exchange, *, n2: bytes, seal: Sealer, sign: Signer, want_token: bytes, issuer_cert: bytes) -> Outcome:
    """b's owner accepts the offer; b holds ``want`` usable (``want_token``: the applet checked; ``issuer_cert``
    its issuer's certificate, for a to check it). Sends m2."""
    if x.role != RESPONDER or x.phase is not Phase.PROPOSED:
        raise ProtocolError("refused", f"this offer was already answered ({x.phase.value})")
    if Token.decode(want_token).oid != x.gives:
        raise ProtocolError("bad_offer", "the voucher given is not the one the offer wants")
    xid = xid_of(n2)
    box = seal(want_token, box_info(b"v2", xid))
    m1h = offer_hash(x.m1)
    st_out = sign(statement_bytes(x.gives, x.b, x.a, move_nonce(xid)))
    f = {"xid": xid, "m1h": m1h, "box": box, "st": st_out, "sig": sign(agree_bytes(xid, m1h, box))}
    f["issuer_cert"] = issuer_cert
    y = x.evolve(phase=Phase.AGREED, m2=AGREE_SCHEMA.encode(f), n2=n2, st_out=st_out)
    return Outcome(y, [("peer", AGREE, f)], lock=x.gives, note="agreed")


def reject(x: Exchange, reason: str = "rejected") -> Outcome:
    """b's owner rejects the offer (or b cannot take part): a is told and unlocks v1; nothing was locked here."""
    if x.role != RESPONDER or x.phase is not Phase.PROPOSED:
        raise ProtocolError("refused", f"this offer was already answered ({x.phase.value})")
    y = x.evolve(phase=Phase.ABORTED, why=reason[:64])
    return Outcome(y, [("peer", REFUSAL, {"n1": x.n1, "reason": reason[:64]})], note=reason)


def on_refusal(x: Exchange, reason: str) -> Outcome:
    """b refused the offer before agreeing: a unlocks v1 (only while nothing was confirmed). Or a withdrew its
    offer: b's offer ends if its owner has not answered it (nothing is locked on b before an accept; once b
    agreed, b's voucher comes back through the TTP's abort, which a asks for when the m2 reaches it)."""
    if x.role == RESPONDER:
        if x.phase is not Phase.PROPOSED:
            return Outcome(x)
        return Outcome(x.evolve(phase=Phase.ABORTED, why=reason[:64]), note=reason)
    if x.phase is not Phase.OFFERED:
        return Outcome(x)
    return Outcome(x.evolve(phase=Phase.ABORTED, why=reason[:64]), unlock=x.gives, note=reason)


def on_confirm(x: Exchange, m3: dict[str, Any], *, a_key: profile.PublicKey) -> Outcome:
    """m3 reached b. Agreed: store v1, drop v2, send m4. Aborting: ignored. Done: m4 again (it was lost)."""
    if x.role != RESPONDER or m3["xid"] != x.xid:
        raise ProtocolError("bad_confirm", "a confirmation of another exchange")
    if x.phase is Phase.DONE:
        return Outcome(x, [("peer", COMMITMENT, _commitment(x))])
    if x.phase is not Phase.AGREED:
        return Outcome(x)  # aborting or aborted: after asking the TTP to abort, b ignores m3
    xid = bytes(m3["xid"])
    _verify(a_key, m3["sig"], confirm_bytes(xid, offer_hash(x.m1)), "the confirmation")
    _verify(a_key, m3["st"], statement_bytes(x.gets, x.a, x.b, move_nonce(xid)), "a's movement statement")
    y = x.evolve(st_in=bytes(m3["st"]))
    out = _swapped(y, "done")
    return replace(out, send=[("peer", COMMITMENT, _commitment(y))])


def _commitment(x: Exchange) -> dict[str, Any]:
    assert x.n2 is not None
    return {"xid": xid_of(x.n2), "n2": x.n2}


def abort(x: Exchange, sign: Signer, my_cert: bytes) -> Outcome:
    """b's recovery after m2 without m3: ask the TTP to abort (repeatable); from now on m3 is ignored."""
    if x.role != RESPONDER or x.phase not in (Phase.AGREED, Phase.ABORTING):
        raise ProtocolError("refused", f"abort is for an agreed exchange waiting for a (this one is {x.phase.value})")
    y = x.evolve(phase=Phase.ABORTING)
    return Outcome(y, [("ttp", REQUEST, request(y, ABORTED, sign, my_cert))], note="abort asked")


# -- requests, admissions ------------------------------------------------------------------------------


def request(x: Exchange, kind: str, sign: Signer, my_cert: bytes) -> dict[str, Any]:
    """The evidence and the signed request: ``resolve`` (a, with its statement) or ``abort``."""
    xid = x.xid
    assert xid is not None and x.m2 is not None
    st = x.st_out if kind == RESOLVED else None
    f: dict[str, Any] = {"kind": "resolve" if kind == RESOLVED else "abort", "m1": x.m1, "m2": x.m2}
    f["peer_cert"] = x.peer_cert
    if st is not None:
        f["st"] = st
    f["sig"] = sign(request_bytes(f["kind"], xid, st))
    f["cert"] = my_cert
    return f


def on_admission(x: Exchange, adm: dict[str, Any], *, ttp_key: profile.PublicKey) -> Outcome:
    """The TTP's signed decision, acted on once, in a state that waits for one (else a duplicate: nothing)."""
    xid = x.xid
    if xid is None or adm["xid"] != xid:
        raise ProtocolError("bad_admission", "an admission for another exchange")
    decision = adm["decision"]
    if decision not in (RESOLVED, ABORTED):
        raise ProtocolError("bad_admission", f"unknown decision {decision!r}")
    _verify(ttp_key, adm["sig"], admission_bytes(decision, xid, adm.get("st")), "the admission")
    if x.phase in FINISHED:
        return Outcome(x)
    if x.role == INITIATOR and x.phase in (Phase.CONFIRMED, Phase.RESOLVING):
        if decision == RESOLVED:
            return _swapped(x, "resolved by the TTP")
        return Outcome(x.evolve(phase=Phase.ABORTED, why="aborted by the TTP"), unlock=x.gives, note="aborted")
    if x.role == INITIATOR and x.phase is Phase.GAVE_UP:
        # v1 came back when a gave up; an abort just closes the record. (A resolve cannot be: a never asked one
        # without m3, and b asks only abort; a TTP that says so anyway is not followed: v1 stays here.)
        return Outcome(x.evolve(phase=Phase.ABORTED), note="aborted")
    if x.role == RESPONDER and x.phase in (Phase.AGREED, Phase.ABORTING):
        if decision == RESOLVED:
            st = adm.get("st")
            if st is None:
                raise ProtocolError("bad_admission", "a resolve admission without a's movement statement")
            out = _swapped(x.evolve(st_in=bytes(st)), "resolved by the TTP")
            return out
        return Outcome(x.evolve(phase=Phase.ABORTED, why="aborted by the TTP"), unlock=x.gives, note="aborted")
    return Outcome(x)


def _swapped(x: Exchange, note: str) -> Outcome:
    """Store the voucher got (trustless, to trace), drop the one given."""
    xid = x.xid
    assert xid is not None and x.token_in is not None and x.st_in is not None
    got = Receive(x.gets, x.token_in, x.peer, move_nonce(xid), x.st_in)
    return Outcome(x.evolve(phase=Phase.DONE, why=None), drop=x.gives, receive=got, note=note)


# -- the TTP ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A checked-for-shape request to the TTP: who the parties are, and the exchange's name."""

    kind: str  # resolve | abort
    xid: bytes
    a: Uid
    b: Uid
    m1: dict[str, Any]
    m2: dict[str, Any]
    fields: dict[str, Any]


def parse_request(f: dict[str, Any]) -> Request:
    if f["kind"] not in ("resolve", "abort"):
        raise ProtocolError("bad_request", f"unknown request kind {f['kind']!r}")
    try:
        m1 = OFFER_SCHEMA.decode(f["m1"])
        m2 = AGREE_SCHEMA.decode(f["m2"])
    except DecodeError as exc:
        raise ProtocolError("bad_request", f"the evidence is malformed: {exc}") from None
    return Request(f["kind"], bytes(m2["xid"]), m1["a"], m1["b"], m1, m2, f)


def ttp_decide(
    req: Request,
    *,
    requester: Uid,
    a_key: profile.PublicKey,
    b_key: profile.PublicKey,
    prior: tuple[str, bytes | None] | None,
    sign: Signer,
    my_cert: bytes,
    me: Uid,
) -> tuple[tuple[str, bytes | None], dict[str, Any]]:
    """The TTP ``me``'s answer to ``req`` from ``requester``: ``((decision, a's statement), admission fields)``;
    an exchange whose offer names another TTP is not its to decide (``not_my_exchange``).

    ``prior`` is the decision recorded for ``req.xid`` (first-wins: the caller stores a new one durably before
    answering, and never overwrites). Refuses (ProtocolError) a request it cannot attribute to a party of the
    exchange: the evidence must check (m1 signed by a, naming a and b; m2 signed by b over h(m1) and xid), the
    requester must be a (resolve, abort after giving up) or b (abort), and the request signed by it.
    """
    _verify(a_key, req.m1["sig"], offer_bytes(req.m1), "the offer (m1)")
    if req.m1.get("ttp", me) != me:  # (an offer of before the field: no TTP named, as then)
        raise ProtocolError("not_my_exchange", f"exchange {req.xid.hex()} names another TTP ({req.m1['ttp']})")
    m1h = profile.sha256(OFFER_SCHEMA.encode(req.m1))
    if req.m2["m1h"] != m1h:
        raise ProtocolError("bad_request", "the agreement (m2) answers another offer")
    _verify(b_key, req.m2["sig"], agree_bytes(req.xid, m1h, req.m2["box"]), "the agreement (m2)")
    st = req.fields.get("st")
    if req.kind == "resolve":
        if requester != req.a:
            raise ProtocolError("not_a_party", "only the initiator of an exchange asks to resolve it")
        if st is None:
            raise ProtocolError("bad_request", "a resolve carries the initiator's movement statement")
        give = bytes(req.m1["give"])
        _verify(a_key, st, statement_bytes(give, req.a, req.b, move_nonce(req.xid)), "the movement statement")
        key = a_key
    else:
        if requester not in (req.a, req.b):
            raise ProtocolError("not_a_party", "an abort comes from a party of the exchange")
        st = None
        key = a_key if requester == req.a else b_key
    _verify(key, req.fields["sig"], request_bytes(req.kind, req.xid, st), "the request")
    decision = prior if prior is not None else ((RESOLVED, bytes(st)) if st is not None else (ABORTED, None))
    verdict, kept = decision
    adm: dict[str, Any] = {"xid": req.xid, "decision": verdict}
    if verdict == RESOLVED and kept is not None:
        adm["st"] = kept
    adm["sig"] = sign(admission_bytes(verdict, req.xid, adm.get("st")))
    adm["cert"] = my_cert
    return decision, adm
