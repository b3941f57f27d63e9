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
) -> Verdict:
    """Whether ``claim`` extends ``chain`` of a token issued by ``issuer``."""
    if revoked:
        return Verdict(False, "revoked: this token was replaced by a reissue")
    for who in (claim.to, claim.frm):
        if who in blocked or who.card_uid() in blocked:
            return Verdict(False, f"blocked device {who}")
    if claim in chain:
        return Verdict(True, "already recorded")
    holder = chain[-1].to if chain else issuer
    if claim.frm == holder:
        return Verdict(True, "recorded", record=claim)
    why = "left its holder twice" if any(m.frm == claim.frm for m in chain) else "left a device that does not hold it"
    return Verdict(False, f"branch: the token {why} (sender {claim.frm} blocked)", block=(claim.frm,))


def last_holder(chain: list[Movement], issuer: Uid) -> Uid:
    return chain[-1].to if chain else issuer
