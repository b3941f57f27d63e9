"""The authority's trace registry (TRN 3.4 and 4.2, DESIGN.md section 6): pure decisions.

Theory of operation
-------------------
Each token's movements form a chain ``issuer -> d1 -> d2 -> ...``. A receiver
asks the authority (``seekfor``) before it may use a received token; the
authority records ``(oid, from, to, nonce)`` only if it extends the chain:
the first movement must leave the issuing agent, and every later one must
leave the last recorded holder. ``to`` is the session peer that asked (the
authority's own view); ``from`` rests on the **sender's own word**: the
sender's card signed the movement statement (:func:`statement_bytes
<cardnet.protocols.trn.transfer.statement_bytes>`) when it committed, and the
receiver forwards it with the sender's certificate. :func:`check_statement`
verifies it; without a valid statement the claim is refused and the
*claimant* (the receiver that asked) is suspected — recorded and reported,
never blocked, and nobody else is blamed. With one, anything that does not
extend the chain is a **branch** — the signer moved the token from a holding
it had already moved on (two statements by one signer moving one oid from one
holding to two devices: a cloned card), or moved a token it never held: the
signer is blocked and the claim refused, so the second recipient never gets
an enabled token. A repeated ``seekfor`` for a recorded movement is answered
again (idempotent). Revoked oids and blocked devices are refused. A decision reads
the chain through a few lookups (:class:`Chain`: the claim's position, the last
movement, and only for a branch the signer's earlier movements), so the
authority keeps each movement in a record of its own and a trace costs the same
however long the chain.

Reissue (TRN 4.2 "Recovery"): the issuing agent of a lost token asks the
authority, over its own session, to revoke the old oid and reissue the token
as a new oid. :func:`decide_reissue` grants it only to the recorded issuer,
only once per old oid (a resend naming the same new oid gets the same answer),
never for an oid already revoked, never onto an oid already in use, and never
to a blocked holder. The answer names the **last recorded holder** (the agent
itself if the chain is empty): the new token is destined for it, and the first
movement of the new oid must go there (``destined`` in :func:`decide`). Every
surviving copy of the old oid then fails its trace (revoked).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cardnet.crypto import pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.protocols.trn.transfer import statement_bytes
from cardnet.wire.ids import Uid


@dataclass(frozen=True)
class Movement:
    frm: Uid
    to: Uid
    nonce: bytes
    sig: bytes = field(default=b"", compare=False)  # the sender's statement (evidence kept with the chain)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    record: Movement | None = None  # append this to the chain
    block: tuple[Uid, ...] = ()  # block these devices (each signed the statement that convicts it)
    suspect: Uid | None = None  # the claimant of an unproven claim: recorded and reported, not blocked
    evidence: tuple[Movement, ...] = ()  # the signed movements behind ``block``


class Chain(Protocol):
    """A token's recorded movements as the decisions read them: a few lookups, never the whole chain.

    The authority's card answers each from its records (``applets/authority_chain.py``: a header, one record per
    movement, an index by transfer nonce); :class:`ListChain` answers from a list (tests, old records).
    """

    def __len__(self) -> int: ...

    def last(self) -> Movement | None:
        """The last recorded movement (None: the token never moved)."""

    def position(self, claim: Movement) -> int | None:
        """The index of the last recorded movement equal to ``claim`` (frm, to, nonce; not sig), None if none."""

    def sent_by(self, sender: Uid) -> tuple[Movement, ...]:
        """Every recorded movement from ``sender``, in chain order (asked only for a branch: its evidence)."""


@dataclass(frozen=True)
class ListChain:
    """A :class:`Chain` over a list of movements."""

    movements: Sequence[Movement]

    def __len__(self) -> int:
        return len(self.movements)

    def last(self) -> Movement | None:
        return self.movements[-1] if self.movements else None

    def position(self, claim: Movement) -> int | None:
        moves = self.movements
        return next((i for i in range(len(moves) - 1, -1, -1) if moves[i] == claim), None)

    def sent_by(self, sender: Uid) -> tuple[Movement, ...]:
        return tuple(m for m in self.movements if m.frm == sender)


def as_chain(chain: Chain | Sequence[Movement]) -> Chain:
    """``chain`` itself, or a list of movements as a :class:`Chain`."""
    return ListChain(chain) if isinstance(chain, Sequence) else chain


def _certified(cert_der: bytes, roots_der: Sequence[bytes], now: float) -> pki.VerifiedPeer:
    return pki.verified(cert_der, roots_der, now=now)


def certifies(cert_der: bytes, who: Uid, roots_der: Sequence[bytes], now: float) -> bool:
    """Whether ``cert_der`` is a valid certificate (any role) of the card ``who``."""
    try:
        return _certified(cert_der, roots_der, now).uid.card_uid() == who.card_uid()
    except PkiError:
        return False


def check_statement(oid: bytes, claim: Movement, cert_der: bytes | None) -> str | None:
    """None if ``claim.sig`` is the sender's signed statement of this movement, else what is wrong with it.

    ``cert_der`` is the sender's certificate as the authority knows it (None: it knows none): an agent's,
    verified at ``auth.add_agent``, or the one the sender presented in its own seekfor, verified then
    (:func:`certifies`); here only its key and Uid are read: one ECDSA verification.
    """
    if not claim.sig:
        return "no movement statement signed by the sender"
    if cert_der is None:
        return f"no certificate known for the claimed sender {claim.frm} (it never held a traced token)"
    try:
        cert = pki.cert_from_der(cert_der)
        signer = pki.uid_of(cert)
        key = cert.public_key()
    except PkiError as exc:
        return f"the sender's certificate is unreadable: {exc}"
    if signer.card_uid() != claim.frm.card_uid() or not isinstance(key, profile.PublicKey):
        return f"the known certificate is {signer}'s, not the claimed sender {claim.frm}'s"
    try:
        profile.verify(key, claim.sig, statement_bytes(oid, claim.frm, claim.to, claim.nonce))
    except CryptoError:
        return f"the statement is not {claim.frm}'s signature on this movement"
    return None


def decide(
    chain: Chain | Sequence[Movement],
    claim: Movement,
    issuer: Uid,
    *,
    revoked: bool,
    blocked: Container[Uid],
    destined: Uid | None = None,
    unproven: str | None = None,
) -> Verdict:
    """Whether ``claim`` extends ``chain`` of a token issued by ``issuer``.

    ``chain`` is read through a few lookups (:class:`Chain`): the claim's position, the last movement, and only
    for a branch the sender's earlier movements. ``blocked`` answers ``uid in blocked`` (a set, or a lookup).
    ``destined``: the oid is a reissue for that holder, so its first movement must go there.
    ``unproven``: why the claim's statement did not verify (:func:`check_statement`), None if it did.
    """
    if revoked:
        return Verdict(False, "revoked: this token was replaced by a reissue")
    for who in (claim.to, claim.frm):
        if who in blocked or who.card_uid() in blocked:
            return Verdict(False, f"blocked device {who}")
    if unproven is not None:
        return Verdict(False, f"claim refused: {unproven} (claimant {claim.to} suspected)", suspect=claim.to)
    chain = as_chain(chain)
    length = len(chain)
    at = chain.position(claim)
    if at is not None:
        if at == length - 1:
            return Verdict(True, "already recorded")
        # An old movement claimed again after the token moved on: its receiver holds it again only because the
        # sender re-sent a transfer that already happened (a cloned or rolled-back card). Not a new branch to
        # blame on anyone, but never a second enabled copy.
        return Verdict(False, "stale: this movement was recorded, and the token has moved on since")
    if not length and destined is not None and claim.to != destined:
        return Verdict(False, f"this token was reissued for {destined}: its first movement must go there")
    if claim.frm == last_holder(chain, issuer):
        return Verdict(True, "recorded", record=claim)
    earlier = chain.sent_by(claim.frm)
    why = "left its holder twice" if earlier else "left a device that does not hold it"
    return Verdict(
        False, f"branch: the token {why} (signer {claim.frm} blocked)", block=(claim.frm,), evidence=(*earlier, claim)
    )


def last_holder(chain: Chain | Sequence[Movement], issuer: Uid) -> Uid:
    last = as_chain(chain).last()
    return issuer if last is None else last.to


@dataclass(frozen=True)
class Reissue:
    """A granted reissue: ``old`` revoked, ``new`` destined for ``holder``, its body hashing to ``body_hash``."""

    old: bytes
    new: bytes
    holder: Uid
    body_hash: bytes


@dataclass(frozen=True)
class ReissueVerdict:
    ok: bool
    reason: str
    grant: Reissue | None = None  # the reissue to answer with (and to record, unless ``again``)
    again: bool = False  # a resend of a reissue already granted: nothing new to record


def decide_reissue(
    request: Reissue,
    requester: Uid,
    *,
    issuer: Uid | None,
    chain: Chain | Sequence[Movement],
    revoked: bool,
    previous: Reissue | None,
    new_in_use: bool,
    blocked: Container[Uid],
) -> ReissueVerdict:
    """Whether ``requester`` may revoke ``request.old`` and reissue it as ``request.new``.

    ``issuer`` is who issued the old oid as far as the authority knows (its chain, or the minted token the
    requester presented), None if it knows nothing of it; ``previous`` the reissue already granted for the
    old oid, if any; ``request.holder`` is ignored (the authority names the holder).
    """
    old, new = request.old.hex(), request.new.hex()
    if previous is not None:
        if previous.new == request.new and previous.body_hash == request.body_hash and requester == issuer:
            return ReissueVerdict(True, "already reissued", previous, again=True)
        return ReissueVerdict(False, f"already revoked: {old} was reissued as {previous.new.hex()}")
    if issuer is None:
        return ReissueVerdict(
            False, f"unknown oid {old}: the authority has no record of it and no minted token was presented"
        )
    if requester != issuer:
        return ReissueVerdict(False, f"not the issuer: only {issuer} may reissue {old}")
    if revoked:
        return ReissueVerdict(False, f"already revoked: {old} cannot be reissued")
    if request.new == request.old or new_in_use:
        return ReissueVerdict(False, f"new oid {new} is already in use: choose another")
    holder = last_holder(chain, issuer)
    if holder in blocked or holder.card_uid() in blocked:
        return ReissueVerdict(False, f"the last recorded holder {holder} is blocked")
    return ReissueVerdict(True, "reissued", Reissue(request.old, request.new, holder, request.body_hash))
