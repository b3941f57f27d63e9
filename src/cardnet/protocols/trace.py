"""The authority's trace registry (TRN 3.4 and 4.2, DESIGN.md section 6): pure decisions.

Theory of operation
-------------------
Each token's movements form a chain ``issuer -> d1 -> d2 -> ...``. A receiver
asks the authority (``seekfor``) before it may use a received token; the
authority records ``(oid, from, to, nonce)`` only if it extends the chain:
the first movement must leave the issuing agent, and every later one must
leave the last recorded holder. ``to`` is the session peer that asked (the
authority's own view), ``from`` the receiver's claim, checked against the
chain. Anything else is a **branch** — the token left one holder twice, or
left a device that does not hold it (a cloned card spending twice): the
sender is blocked and the claim refused, so the second recipient never gets
an enabled token. A repeated ``seekfor`` for a recorded movement is answered
again (idempotent). Revoked oids and blocked devices are refused.

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

from dataclasses import dataclass

from cardnet.wire.ids import Uid


@dataclass(frozen=True)
class Movement:
    frm: Uid
    to: Uid
    nonce: bytes


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    record: Movement | None = None  # append this to the chain
    block: tuple[Uid, ...] = ()  # block these devices


def decide(
    chain: list[Movement],
    claim: Movement,
    issuer: Uid,
    *,
    revoked: bool,
    blocked: set[Uid],
    destined: Uid | None = None,
) -> Verdict:
    """Whether ``claim`` extends ``chain`` of a token issued by ``issuer``.

    ``destined``: the oid is a reissue for that holder, so its first movement must go there.
    """
    if revoked:
        return Verdict(False, "revoked: this token was replaced by a reissue")
    for who in (claim.to, claim.frm):
        if who in blocked or who.card_uid() in blocked:
            return Verdict(False, f"blocked device {who}")
    if claim in chain:
        if claim == chain[-1]:
            return Verdict(True, "already recorded")
        # An old movement claimed again after the token moved on: its receiver holds it again only because the
        # sender re-sent a transfer that already happened (a cloned or rolled-back card). Not a new branch to
        # blame on anyone, but never a second enabled copy.
        return Verdict(False, "stale: this movement was recorded, and the token has moved on since")
    if not chain and destined is not None and claim.to != destined:
        return Verdict(False, f"this token was reissued for {destined}: its first movement must go there")
    holder = chain[-1].to if chain else issuer
    if claim.frm == holder:
        return Verdict(True, "recorded", record=claim)
    why = "left its holder twice" if any(m.frm == claim.frm for m in chain) else "left a device that does not hold it"
    return Verdict(False, f"branch: the token {why} (sender {claim.frm} blocked)", block=(claim.frm,))


def last_holder(chain: list[Movement], issuer: Uid) -> Uid:
    return chain[-1].to if chain else issuer


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
    chain: list[Movement],
    revoked: bool,
    previous: Reissue | None,
    new_in_use: bool,
    blocked: set[Uid],
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
