"""TRN authenticated session (TRN 3.2, with DESIGN.md section 6's changes).

Theory of operation
-------------------
Three messages, as in the paper, but with signed ephemeral ECDH (SIGMA-style)
instead of random numbers sealed to long-term keys:

1. ``A -> B  session.hello  {eph_A, cert_A, nonce_A, [blocklist]}``
2. ``B -> A  session.accept {eph_B, cert_B, nonce_B, sig_B, confirm_B, [blocklist]}``
3. ``A -> B  session.finish {sig_A, confirm_A}``

Both certificates are checked against the card's trusted roots at the host's
``now`` (role DEVICE, SERVICE or AGENT; the certificate must name the Uid the
message came from) and against the newest authority-signed blocklist either
side has seen. The transcript hash ``th`` covers both Uids, both nonces, both
ephemeral keys and both certificates; each side signs ``th`` with its role tag
(no unknown-key-share: the paper signed bare ciphertexts) and proves it holds
the session key with ``HMAC(k_confirm, tag || th)`` (key confirmation is
mandatory). Keys: ``HKDF-SHA256(ECDH(eph_A, eph_B), salt=nonce_A||nonce_B,
info=th)`` -> one AES-256-GCM key per direction and the confirmation key:
forward secrecy, which the paper's design lacks.

Records: ``session.record {ctr, ct}``, AES-256-GCM under the sender's
direction key with nonce ``prefix(4) || ctr(8)`` and the two Uids and the
counter as associated data. The receiver accepts only ``ctr`` greater than the
last it accepted: a replayed or reordered record is refused, and a reflected
one fails authentication (the reverse direction has another key). There is at
most one session per pair of cards; a new handshake replaces the old one, so a
crash of either side is recovered by opening a new session.

This module is sans-I/O: randomness comes in as bytes, time as ``now``, and
the long-term key is used only through the ``sign`` callback the card passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cardnet.crypto import pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import Bytes, DecodeError, Field, Schema, Text, UidType, UInt, register
from cardnet.wire.cbor import dumps
from cardnet.wire.ids import Uid
from cardnet.wire.memo import Memo

NONCE_BYTES = 16
CONFIRM_BYTES = 16  # HMAC-SHA256 truncated to 128 bits: a key-confirmation tag, not a long-lived MAC
MAX_CERT = pki.MAX_CERT_BYTES
MAX_BLOCKLIST = 1 << 20
MAX_RECORD = 1 << 20
PEER_ROLES = (pki.Role.DEVICE, pki.Role.SERVICE, pki.Role.AGENT)

HELLO = register(
    0x0201,
    "session.hello",
    "session",
    Schema(
        "session.hello",
        [
            Field(0, "eph", Bytes(65, 65)),
            Field(1, "cert", Bytes(MAX_CERT)),
            Field(2, "nonce", Bytes(NONCE_BYTES, NONCE_BYTES)),
            Field(3, "blocklist", Bytes(MAX_BLOCKLIST), optional=True),
        ],
    ),
)
ACCEPT = register(
    0x0202,
    "session.accept",
    "session",
    Schema(
        "session.accept",
        [
            Field(0, "eph", Bytes(65, 65)),
            Field(1, "cert", Bytes(MAX_CERT)),
            Field(2, "nonce", Bytes(NONCE_BYTES, NONCE_BYTES)),
            Field(3, "sig", Bytes(64, 64)),
            Field(4, "confirm", Bytes(CONFIRM_BYTES, CONFIRM_BYTES)),
            Field(5, "blocklist", Bytes(MAX_BLOCKLIST), optional=True),
        ],
    ),
)
FINISH = register(
    0x0203,
    "session.finish",
    "session",
    Schema(
        "session.finish", [Field(0, "sig", Bytes(64, 64)), Field(1, "confirm", Bytes(CONFIRM_BYTES, CONFIRM_BYTES))]
    ),
)
RECORD = register(
    0x0204,
    "session.record",
    "session",
    Schema("session.record", [Field(0, "ctr", UInt()), Field(1, "ct", Bytes(MAX_RECORD, profile.AEAD_TAG_BYTES))]),
)
FAILED = register(
    0x0205,
    "session.failed",
    "session",
    Schema("session.failed", [Field(0, "reason", Text(64)), Field(1, "detail", Text(300))]),
)
_STATE = Schema(
    "session.state",
    [
        Field(0, "peer", UidType()),
        Field(1, "initiator", UInt(1)),
        Field(2, "phase", UInt(2)),  # 0 wait accept (A), 1 wait finish (B), 2 open
        Field(3, "eph_secret", Bytes(48), optional=True),
        Field(4, "nonce_a", Bytes(NONCE_BYTES)),
        Field(5, "nonce_b", Bytes(NONCE_BYTES), optional=True),
        Field(6, "th", Bytes(32), optional=True),
        Field(7, "k_send", Bytes(32), optional=True),
        Field(8, "k_recv", Bytes(32), optional=True),
        Field(9, "k_confirm", Bytes(32), optional=True),
        Field(10, "send_ctr", UInt()),
        Field(11, "recv_ctr", UInt()),
        Field(12, "eph_a", Bytes(65)),
        Field(13, "cert_a", Bytes(MAX_CERT), optional=True),
        Field(14, "opened", UInt(), optional=True),  # host time (whole seconds) the session opened
        Field(15, "peer_until", UInt(), optional=True),  # the peer's certificate's notAfter (Unix seconds)
    ],
)
_POLICY_FIELDS = ("max_blocklist_age_s", "min_epoch", "lifetime_s", "max_records")
POLICY_SCHEMA = Schema("session.policy", [Field(i, n, UInt(), optional=True) for i, n in enumerate(_POLICY_FIELDS)])

WAIT_ACCEPT, WAIT_FINISH, OPEN = 0, 1, 2
_DIR_AB = b"A>B\x00"
_DIR_BA = b"B>A\x00"

Sign = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Session:
    """One side's view of a session with ``peer`` (kept in the card's state between steps)."""

    peer: Uid
    initiator: bool
    phase: int
    nonce_a: bytes
    eph_a: bytes
    send_ctr: int = 0
    recv_ctr: int = 0
    eph_secret: bytes | None = None
    nonce_b: bytes | None = None
    th: bytes | None = None
    k_send: bytes | None = None
    k_recv: bytes | None = None
    k_confirm: bytes | None = None
    cert_a: bytes | None = None
    opened: int | None = None
    peer_until: int | None = None  # the session ends when the peer's certificate does

    @property
    def open(self) -> bool:
        return self.phase == OPEN

    def encode(self) -> bytes:
        fast = self._encode_advanced()
        if fast is not None:
            return fast
        d: dict[str, Any] = {
            "peer": self.peer,
            "initiator": int(self.initiator),
            "phase": self.phase,
            "nonce_a": self.nonce_a,
            "eph_a": self.eph_a,
            "send_ctr": self.send_ctr,
            "recv_ctr": self.recv_ctr,
        }
        for name in ("eph_secret", "nonce_b", "th", "k_send", "k_recv", "k_confirm", "cert_a", "opened", "peer_until"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        raw = _STATE.encode(d)
        # Where the two counters sit in these bytes, for the states :func:`_advanced` derives from this one: only a
        # counter changes from record to record, and every other item keeps its encoding and its place.
        mid = _counters(self.send_ctr, self.recv_ctr)
        tail = b"".join(dumps(key) + dumps(d[name]) for key, name in _AFTER_COUNTERS if name in d)
        if mid is not None and raw.endswith(mid + tail):
            self.__dict__["_around_counters"] = (raw[: len(raw) - len(mid) - len(tail)], tail)
        return raw

    def _encode_advanced(self) -> bytes | None:
        """This state's encoding from the one it was advanced from (None: encode it in full)."""
        around = self.__dict__.get("_around_counters")
        mid = None if around is None else _counters(self.send_ctr, self.recv_ctr)
        return None if mid is None or around is None else around[0] + mid + around[1]

    @classmethod
    def decode(cls, raw: bytes) -> Session:
        d = _STATE.decode(raw)
        d["initiator"] = bool(d["initiator"])
        return cls(**d)


_COUNTER_MAX = 2**64 - 1  # _STATE's UInt()
_AFTER_COUNTERS = ((12, "eph_a"), (13, "cert_a"), (14, "opened"), (15, "peer_until"))
assert [(f.key, f.name) for f in _STATE.fields if f.key > 11] == list(_AFTER_COUNTERS)
assert [(f.key, f.name) for f in _STATE.fields if f.key in (10, 11)] == [(10, "send_ctr"), (11, "recv_ctr")]


def _counters(send_ctr: object, recv_ctr: object) -> bytes | None:
    """The encoding of keys 10 and 11 of a state (None if a counter is not one :data:`_STATE` takes)."""
    for ctr in (send_ctr, recv_ctr):
        if type(ctr) is not int or not 0 <= ctr <= _COUNTER_MAX:
            return None
    return b"\x0a" + dumps(send_ctr) + b"\x0b" + dumps(recv_ctr)


def _advanced(state: Session, *, send_ctr: int | None = None, recv_ctr: int | None = None) -> Session:
    """``state`` with a counter moved on (``dataclasses.replace``, keeping where the counters sit in its encoding)."""
    new = object.__new__(Session)
    new.__dict__.update(state.__dict__)
    if send_ctr is not None:
        new.__dict__["send_ctr"] = send_ctr
    if recv_ctr is not None:
        new.__dict__["recv_ctr"] = recv_ctr
    return new


@dataclass(frozen=True)
class Policy:
    """A card's freshness policy; 0 turns a bound off (docs/trn.md, "Freshness").

    ``max_blocklist_age_s``: the newest blocklist the card holds (after the
    handshake) must have been signed at most this long before the host's
    ``now``, or sessions with peers other than the authority are refused
    (``blocklist_stale``). ``min_epoch``: that blocklist must be at least this
    epoch (and a peer's own at least this epoch, ``stale_blocklist``).
    ``lifetime_s`` and ``max_records``: a session is re-keyed (a new handshake,
    so every check again) once it is this old or has sealed this many records.
    """

    max_blocklist_age_s: int = 0
    min_epoch: int = 0
    lifetime_s: int = 0
    max_records: int = 0

    def encode(self) -> bytes:
        return POLICY_SCHEMA.encode({n: v for n in _POLICY_FIELDS if (v := getattr(self, n))})

    @classmethod
    def decode(cls, raw: bytes | None) -> Policy:
        return cls() if not raw else cls(**POLICY_SCHEMA.decode(raw))

    @classmethod
    def of(cls, fields: dict[str, Any]) -> Policy:
        return cls(**{n: fields[n] for n in _POLICY_FIELDS if n in fields})

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in _POLICY_FIELDS}

    def tighter(self, other: Policy) -> Policy:
        """The policy that enforces both ``self`` and ``other``."""

        def low(a: int, b: int) -> int:
            return min(a, b) if a and b else a or b

        return Policy(
            low(self.max_blocklist_age_s, other.max_blocklist_age_s),
            max(self.min_epoch, other.min_epoch),
            low(self.lifetime_s, other.lifetime_s),
            low(self.max_records, other.max_records),
        )

    def loosened(self, wanted: Policy) -> list[str]:
        """The fields in which ``wanted`` is looser than ``self`` (empty if it only tightens)."""
        both = self.tighter(wanted)
        return [n for n in _POLICY_FIELDS if getattr(both, n) != getattr(wanted, n)]

    def blocklist_problem(self, bl: pki.Blocklist | None, now: float) -> str | None:
        """Why ``bl`` (the card's newest) is not fresh enough at host time ``now``, or None."""
        epoch = -1 if bl is None else bl.epoch
        if self.min_epoch and epoch < self.min_epoch:
            return f"this card's newest blocklist is epoch {epoch}, its policy needs at least {self.min_epoch}"
        if self.max_blocklist_age_s:
            if bl is None:
                return "this card holds no signed blocklist and its policy needs a fresh one"
            age = now - bl.issued_at
            if age > self.max_blocklist_age_s:
                return (
                    f"this card's newest blocklist (epoch {bl.epoch}) was signed {age:.0f} s ago, "
                    f"its policy accepts at most {self.max_blocklist_age_s} s"
                )
        return None

    def due(self, state: Session, now: float, slack: int = 1) -> str | None:
        """Why the open session ``state`` must be re-keyed, or None. ``slack`` widens the bounds (receivers: 2).

        Whatever the policy, a session ends when the peer's certificate expires (no slack: the new handshake
        then refuses the expired certificate).
        """
        if state.peer_until is not None and now > state.peer_until:
            return f"the peer's certificate expired {now - state.peer_until:.0f} s ago"
        if self.max_records and state.send_ctr >= self.max_records * slack:
            return f"the session sealed {state.send_ctr} records, the policy allows {self.max_records}"
        if self.max_records and state.recv_ctr >= self.max_records * slack:
            return f"the session opened {state.recv_ctr} records, the policy allows {self.max_records}"
        if self.lifetime_s and state.opened is not None and now - state.opened >= self.lifetime_s * slack:
            return f"the session is {now - state.opened:.0f} s old, the policy allows {self.lifetime_s} s"
        return None


def fresh_enough(policy: Policy, bl: pki.Blocklist | None, now: float) -> None:
    """Raise ``blocklist_stale`` if the card's newest blocklist ``bl`` does not meet ``policy`` at ``now``."""
    problem = policy.blocklist_problem(bl, now)
    if problem is not None:
        raise ProtocolError(
            "blocklist_stale", f"{problem}: the card must handshake with its authority (trn.recover) first"
        )


@dataclass(frozen=True)
class Verified:
    """What the handshake established about the peer."""

    peer: pki.VerifiedPeer
    blocklist: pki.Blocklist | None  # the newest blocklist either side presented


def _until(peer: pki.VerifiedPeer) -> int:
    return int(peer.certificate.not_valid_after_utc.timestamp())


def _now(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _eph(secret: bytes) -> tuple[profile.PrivateKey, bytes]:
    key = profile.generate_private_key(lambda n: secret[:n])
    return key, profile.public_bytes(key.public_key())


def _transcript(
    a: Uid, b: Uid, nonce_a: bytes, nonce_b: bytes, eph_a: bytes, eph_b: bytes, ca: bytes, cb: bytes
) -> bytes:
    return profile.sha256(
        dumps(
            [
                "cardnet/trn-session/v1",
                bytes(a),
                bytes(b),
                nonce_a,
                nonce_b,
                eph_a,
                eph_b,
                profile.sha256(ca),
                profile.sha256(cb),
            ]
        )
    )


def _keys(secret: bytes, nonce_a: bytes, nonce_b: bytes, th: bytes) -> tuple[bytes, bytes, bytes]:
    okm = profile.hkdf(secret, salt=nonce_a + nonce_b, info=b"cardnet/trn-session/keys" + th, length=96)
    return okm[:32], okm[32:64], okm[64:]


def _confirm(k_confirm: bytes, tag: bytes, th: bytes) -> bytes:
    return profile.hmac_sha256(k_confirm, tag + th, CONFIRM_BYTES)


def newest_blocklist(candidates: Sequence[bytes | None], ca_roots: Sequence[bytes]) -> pki.Blocklist | None:
    """The highest-epoch blocklist among ``candidates`` that a trusted root signed."""
    best: pki.Blocklist | None = None
    roots = [pki.cert_from_der(r) for r in ca_roots]
    for raw in candidates:
        if not raw:
            continue
        try:
            bl = pki.Blocklist.decode(raw)
        except (DecodeError, PkiError) as exc:
            raise ProtocolError("bad_blocklist", f"a blocklist in the handshake is malformed: {exc}") from None
        if not any(_signed_by(bl, r) for r in roots):
            raise ProtocolError("bad_blocklist", "a blocklist in the handshake is not signed by a trusted CA")
        if best is None or bl.epoch > best.epoch:
            best = bl
    return best


def _signed_by(bl: pki.Blocklist, root: Any) -> bool:
    try:
        bl.verify(root)
    except PkiError:
        return False
    return True


def check_peer(
    cert_der: bytes,
    claimed: Uid,
    roots_der: Sequence[bytes],
    now: float,
    blocklist: pki.Blocklist | None,
    peer_epoch: int,
    min_epoch: int,
) -> pki.VerifiedPeer:
    """The peer's certificate must chain to a root, name ``claimed``, and the peer must not be blocked."""
    try:
        peer = pki.verified(cert_der, roots_der, now=_now(now), uid=claimed)
    except PkiError as exc:
        raise ProtocolError(exc.reason, f"peer certificate refused: {exc}") from None
    if peer.role not in PEER_ROLES:
        raise ProtocolError("wrong_usage", f"a {peer.role.value} certificate cannot open a TRN session")
    if blocklist is not None and blocklist.is_blocked(claimed):
        raise ProtocolError("blocked", f"device {claimed} is on the authority's blocklist (epoch {blocklist.epoch})")
    if min_epoch > 0 and peer_epoch < min_epoch:
        raise ProtocolError(
            "stale_blocklist",
            f"the peer's newest blocklist is epoch {peer_epoch}, this card needs at least {min_epoch}: "
            "the peer must fetch a fresh blocklist from the authority",
        )
    return peer


# --- the three handshake steps ------------------------------------------------------------


def initiate(peer: Uid, random48: bytes, random16: bytes, my_cert: bytes) -> tuple[Session, dict[str, Any]]:
    """A starts: a fresh ephemeral key and nonce. Returns the state and the ``hello`` fields."""
    _, eph_pub = _eph(random48)
    state = Session(peer=peer, initiator=True, phase=WAIT_ACCEPT, nonce_a=random16, eph_a=eph_pub, eph_secret=random48)
    return state, {"eph": eph_pub, "cert": my_cert, "nonce": random16}


def respond(
    me: Uid,
    peer: Uid,
    hello: dict[str, Any],
    *,
    my_cert: bytes,
    roots: Sequence[bytes],
    now: float,
    random48: bytes,
    random16: bytes,
    sign: Sign,
    blocklist: pki.Blocklist | None,
    min_epoch: int = 0,
) -> tuple[Session, dict[str, Any], Verified]:
    """B answers a hello from ``peer``: checks A's certificate, derives keys, signs the transcript."""
    newest = _newer(blocklist, hello.get("blocklist"), roots)
    peer_epoch = _epoch(hello.get("blocklist"), roots)
    verified = check_peer(hello["cert"], peer, roots, now, newest, peer_epoch, min_epoch)
    eph_key, eph_b = _eph(random48)
    try:
        shared = profile.ecdh(eph_key, profile.load_public(hello["eph"]))
    except CryptoError as exc:
        raise ProtocolError("bad_key", f"the peer's ephemeral key is unusable: {exc}") from None
    th = _transcript(peer, me, hello["nonce"], random16, hello["eph"], eph_b, hello["cert"], my_cert)
    k_ab, k_ba, k_conf = _keys(shared, hello["nonce"], random16, th)
    state = Session(
        peer=peer,
        initiator=False,
        phase=WAIT_FINISH,
        nonce_a=hello["nonce"],
        eph_a=hello["eph"],
        nonce_b=random16,
        th=th,
        k_send=k_ba,
        k_recv=k_ab,
        k_confirm=k_conf,
        cert_a=hello["cert"],
        peer_until=_until(verified),
    )
    fields: dict[str, Any] = {
        "eph": eph_b,
        "cert": my_cert,
        "nonce": random16,
        "sig": sign(b"accept" + th),
        "confirm": _confirm(k_conf, b"B", th),
    }
    if newest is not None:
        fields["blocklist"] = newest.encode()
    return state, fields, Verified(verified, newest)


def finish(
    state: Session,
    me: Uid,
    accept: dict[str, Any],
    *,
    my_cert: bytes,
    roots: Sequence[bytes],
    now: float,
    sign: Sign,
    blocklist: pki.Blocklist | None,
    min_epoch: int = 0,
) -> tuple[Session, dict[str, Any], Verified]:
    """A checks B's certificate, signature and key confirmation, then signs and confirms itself."""
    if state.phase != WAIT_ACCEPT or not state.initiator or state.eph_secret is None:
        raise ProtocolError("no_session", f"no handshake with {state.peer} is waiting for an accept")
    newest = _newer(blocklist, accept.get("blocklist"), roots)
    peer_epoch = _epoch(accept.get("blocklist"), roots)
    verified = check_peer(accept["cert"], state.peer, roots, now, newest, peer_epoch, min_epoch)
    eph_key, _ = _eph(state.eph_secret)
    try:
        shared = profile.ecdh(eph_key, profile.load_public(accept["eph"]))
    except CryptoError as exc:
        raise ProtocolError("bad_key", f"the peer's ephemeral key is unusable: {exc}") from None
    th = _transcript(
        me, state.peer, state.nonce_a, accept["nonce"], state.eph_a, accept["eph"], my_cert, accept["cert"]
    )
    try:
        profile.verify(verified.public_key, accept["sig"], b"accept" + th)
    except CryptoError:
        raise ProtocolError("bad_signature", "the accept is not signed by the peer over this handshake") from None
    k_ab, k_ba, k_conf = _keys(shared, state.nonce_a, accept["nonce"], th)
    try:
        profile.hmac_verify(k_conf, b"B" + th, accept["confirm"])
    except CryptoError:
        raise ProtocolError("bad_confirm", "the peer did not prove it holds the session key") from None
    opened = replace(
        state, phase=OPEN, eph_secret=None, nonce_b=accept["nonce"], th=th, k_send=k_ab, k_recv=k_ba, k_confirm=k_conf,
        opened=int(now), peer_until=_until(verified),
    )  # fmt: skip
    fields = {"sig": sign(b"finish" + th), "confirm": _confirm(k_conf, b"A", th)}
    return opened, fields, Verified(verified, newest)


def complete(state: Session, fin: dict[str, Any], peer_key: profile.PublicKey, now: float = 0.0) -> Session:
    """B checks A's signature and key confirmation; the session is open."""
    if state.phase != WAIT_FINISH or state.th is None or state.k_confirm is None:
        raise ProtocolError("no_session", f"no handshake with {state.peer} is waiting for a finish")
    try:
        profile.verify(peer_key, fin["sig"], b"finish" + state.th)
    except CryptoError:
        raise ProtocolError("bad_signature", "the finish is not signed by the peer over this handshake") from None
    try:
        profile.hmac_verify(state.k_confirm, b"A" + state.th, fin["confirm"])
    except CryptoError:
        raise ProtocolError("bad_confirm", "the peer did not prove it holds the session key") from None
    return replace(state, phase=OPEN, cert_a=None, opened=int(now))


def peer_key_of(state: Session, roots: Sequence[bytes], now: float) -> profile.PublicKey:
    """B's copy of A's certified key (kept between accept and finish)."""
    if state.cert_a is None:
        raise ProtocolError("no_session", "no certificate kept for this handshake")
    try:
        return pki.verified(state.cert_a, roots, now=_now(now)).public_key
    except PkiError as exc:
        raise ProtocolError(exc.reason, f"peer certificate refused: {exc}") from None


# --- records ----------------------------------------------------------------------------------


def _aad(src: Uid, dst: Uid, ctr: int) -> bytes:
    return bytes(src) + bytes(dst) + ctr.to_bytes(8, "big")


# A session's record keys serve many records: their AES-GCM contexts are kept by (key, direction) while in use
# (bounded: the memo starts over when full). The nonces stay the callers' (prefix || counter), as before.
MAX_AEADS = 64
_AEADS: Memo[tuple[bytes, bytes], profile.CounterAead] = Memo(MAX_AEADS)


def _aead(key: bytes, prefix: bytes) -> profile.CounterAead:
    memo = type(key) is bytes
    aead = _AEADS.get((key, prefix)) if memo else None
    if aead is None:
        aead = profile.CounterAead(key, prefix)
        if memo:
            _AEADS.remember((key, prefix), aead)
    return aead


def seal(state: Session, me: Uid, inner: bytes) -> tuple[Session, dict[str, Any]]:
    """Encrypt ``inner`` for the peer; returns the advanced state and the record fields."""
    if not state.open or state.k_send is None:
        raise ProtocolError("no_session", f"no open session with {state.peer}")
    ctr = state.send_ctr + 1
    prefix = _DIR_AB if state.initiator else _DIR_BA
    ct = _aead(state.k_send, prefix).seal(ctr, inner, _aad(me, state.peer, ctr))
    return _advanced(state, send_ctr=ctr), {"ctr": ctr, "ct": ct}


def open_record(state: Session, me: Uid, record: dict[str, Any]) -> tuple[Session, bytes]:
    """Decrypt a record from the peer; refuses replays, reordering and reflections."""
    if not state.open or state.k_recv is None:
        raise ProtocolError("no_session", f"no open session with {state.peer}: open a new one")
    ctr = record["ctr"]
    if ctr <= state.recv_ctr:
        raise ProtocolError("replay", f"record {ctr} is not after record {state.recv_ctr}: replayed or reordered")
    prefix = _DIR_BA if state.initiator else _DIR_AB
    try:
        inner = _aead(state.k_recv, prefix).open(ctr, record["ct"], _aad(state.peer, me, ctr))
    except CryptoError:
        raise ProtocolError(
            "bad_record", "record failed authentication (forged, reflected or from another session)"
        ) from None
    return _advanced(state, recv_ctr=ctr), inner


# --- blocklist helpers ----------------------------------------------------------------------------


def _newer(mine: pki.Blocklist | None, theirs: bytes | None, roots: Sequence[bytes]) -> pki.Blocklist | None:
    candidates: list[bytes | None] = [mine.encode() if mine is not None else None, theirs]
    return newest_blocklist(candidates, roots)


def _epoch(raw: bytes | None, roots: Sequence[bytes]) -> int:
    bl = newest_blocklist([raw], roots)
    return -1 if bl is None else bl.epoch


def decode_state(raw: bytes | None) -> Session | None:
    return None if raw is None else Session.decode(raw)
