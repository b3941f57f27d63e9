"""The gate's admission rule (TRN 5, the JIPDEC gate): pure decisions on one ticket at a time.

Theory of operation
-------------------
A gate is a card that takes tickets by the ordinary TRN transfer and never
gives them back: a ticket moved to the gate is **consumed**. The gate judges
a ticket twice:

* **at the copy** (before anything is committed), on what the gate card knows
  by itself, so it works offline: the ticket is traceable, its issuer is one
  of the gate's issuers and signed it (the gate holds their certificates), it
  is a ticket of one of the gate's events when the gate names events (the
  ``event`` of the ticket's body, signed by its issuer: one issuer sells many
  events, and a ticket of another one must not open this gate), the
  sender is not on the gate's last signed blocklist (the handshake already
  refused a blocked peer), and the oid was never admitted here. A refused
  copy is answered ``copied false <reason>``: the holder keeps the ticket;
* **at the trace**: a committed ticket is *pending*; the gate card's trace of
  the movement (``seekfor``: the holder's signed statement, as for any
  receiver) is its **admission report**. If the authority answers within the
  gate's ``wait_ms`` (host time), its verdict decides (``admitted``, or
  ``refused`` for a revoked oid, a blocked device or a branch: the ticket
  stays on the gate, dead); otherwise the gate admits on its own checks
  (``admitted_offline``) and the report goes on being resent until the
  authority answers; its answer is then recorded as the report's outcome
  (``traced``, or ``refused`` with the authority's reason: an admission the
  authority disowned, e.g. the second of two clones admitted at two gates).

:func:`copy_refusal`, :func:`on_commit`, :func:`on_trace` and :func:`on_tick`
are the rules; :class:`Admission` is the durable record the gate card keeps
per admitted oid. Time is the host's (milliseconds), given as an argument.

**Pruning** (``gate.prune``): an admission is *final* once it is decided and
the authority answered its report (:func:`prunable`); nothing of the protocol
waits on it any more. The gate may then drop the ticket and keep only a
:class:`Pruned` marker (the outcome and the time, 9 bytes): enough to go on
refusing a second copy of the oid offline (``already_admitted``, or
``refused_before``) and to count it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from cardnet.crypto import profile
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn.token import OID_BYTES, Token
from cardnet.protocols.trn.transfer import ISSUER_NOT_ACCEPTED, TRANSFER_NONCE_BYTES
from cardnet.wire import Bool, Bytes, DecodeError, Field, ListOf, Schema, Text, UidType, UInt
from cardnet.wire.ids import Uid

# verdicts: what the gate decided about the person at the gate
PENDING = "pending"  # taken, waiting (at most wait_ms) for the authority's answer
ADMITTED = "admitted"  # the authority recorded the movement in time
ADMITTED_OFFLINE = "admitted_offline"  # the authority did not answer in time: admitted on the gate's own checks
REFUSED = "refused"  # refused: at the copy (the ticket went back) or by the authority in time (kept, dead)
VERDICTS = (PENDING, ADMITTED, ADMITTED_OFFLINE, REFUSED)
# reports: how the admission report (the gate's trace) stands
WAITING = "waiting"  # sent (or queued while the authority is unreachable), resent by recovery
TRACED = "traced"  # the authority recorded the movement to the gate
DISOWNED = "disowned"  # the authority refused it (revoked, blocked, branch): nothing more to send
REPORTS = (WAITING, TRACED, DISOWNED)

# copy refusals (the reason in copied false: the holder's card shows it; at most 64 characters)
ALREADY_ADMITTED = "already_admitted"
REFUSED_BEFORE = "refused_before"  # the gate took this oid before and the authority disowned it
FORGED = "forged"
WRONG_EVENT = "wrong_event"  # the gate names its events, and the ticket's body names another one (or none)
UNTRACEABLE = "untraceable"
BLOCKED_DEVICE = "blocked_device"
CONSUMED = "consumed"  # a gate's tickets never leave it (a send or an exchange from the gate card is refused)

DEFAULT_WAIT_MS = 1500
MAX_WAIT_MS = 60_000
MAX_ISSUERS = 64
MAX_EVENTS = 64  # events one gate admits
MAX_EVENT_ID = 32  # characters of an event's id
EVENT_IDS = ListOf(Text(MAX_EVENT_ID), MAX_EVENTS)

ADMISSION = Schema(
    "gate.admission",
    [
        Field(0, "from", UidType()),  # the holder's card
        Field(1, "nonce", Bytes(TRANSFER_NONCE_BYTES, TRANSFER_NONCE_BYTES)),
        Field(2, "at_ms", UInt()),  # host time of the commit
        Field(3, "verdict", Text(24)),
        Field(4, "reason", Text(200)),
        Field(5, "report", Text(16)),
        Field(6, "report_reason", Text(200), optional=True),
    ],
)
SETTINGS = Schema(
    "gate.settings",
    [Field(0, "wait_ms", UInt()), Field(1, "strict", Bool()), Field(2, "events", EVENT_IDS, optional=True)],
)


@dataclass(frozen=True)
class Admission:
    """What the gate card keeps for one oid it took (``adm:<oid>``)."""

    oid: bytes
    frm: Uid
    nonce: bytes
    at_ms: int
    verdict: str = PENDING
    reason: str = "waiting for the authority"
    report: str = WAITING
    report_reason: str | None = None

    def __post_init__(self) -> None:
        if len(self.oid) != OID_BYTES:
            raise ProtocolError("bad_admission", f"an oid is {OID_BYTES} bytes")
        if self.verdict not in VERDICTS or self.report not in REPORTS:
            raise ProtocolError("bad_admission", f"unknown verdict or report {self.verdict!r}/{self.report!r}")

    @property
    def admitted(self) -> bool:
        return self.verdict in (ADMITTED, ADMITTED_OFFLINE)

    def fields(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "from": self.frm, "nonce": self.nonce, "at_ms": self.at_ms, "verdict": self.verdict,
            "reason": self.reason[:200], "report": self.report,
        }  # fmt: skip
        if self.report_reason is not None:
            d["report_reason"] = self.report_reason[:200]
        return d

    def encode(self) -> bytes:
        return ADMISSION.encode(self.fields())

    @classmethod
    def decode(cls, oid: bytes, raw: bytes) -> Admission:
        """The stored record; bad bytes raise ``ProtocolError bad_admission``."""
        try:
            d = ADMISSION.decode(raw)
        except DecodeError as exc:
            raise ProtocolError("bad_admission", f"not an admission record: {exc}") from None
        return cls(oid, d["from"], d["nonce"], d["at_ms"], d["verdict"], d["reason"], d["report"],
                   d.get("report_reason"))  # fmt: skip


# A pruned admission's outcome, one byte (1..6): (verdict, report) -> code. (A full record is a CBOR map, whose
# first byte is 0xa0..0xbf: the two never look alike.)
_OUTCOMES = [(v, r) for v in (ADMITTED, ADMITTED_OFFLINE, REFUSED) for r in (TRACED, DISOWNED)]
_OUTCOME_CODE = {outcome: code for code, outcome in enumerate(_OUTCOMES, 1)}
PRUNED_BYTES = 9


@dataclass(frozen=True)
class Pruned:
    """What the gate card keeps of an admission it pruned (``adm:<oid>``, :data:`PRUNED_BYTES` bytes): the outcome
    (verdict and report, one byte) and the host time of the commit in ms (8 bytes, big endian). The ticket, the
    holder, the transfer nonce and the reasons are gone."""

    oid: bytes
    at_ms: int
    verdict: str
    report: str

    def __post_init__(self) -> None:
        if len(self.oid) != OID_BYTES:
            raise ProtocolError("bad_admission", f"an oid is {OID_BYTES} bytes")
        if (self.verdict, self.report) not in _OUTCOME_CODE:
            raise ProtocolError("bad_admission", f"not a final outcome {self.verdict!r}/{self.report!r}")
        if not 0 <= self.at_ms < 1 << 64:
            raise ProtocolError("bad_admission", "at_ms is 0..2**64-1")

    @property
    def admitted(self) -> bool:
        return self.verdict in (ADMITTED, ADMITTED_OFFLINE)

    def encode(self) -> bytes:
        return bytes([_OUTCOME_CODE[self.verdict, self.report]]) + self.at_ms.to_bytes(8, "big")

    @classmethod
    def decode(cls, oid: bytes, raw: bytes) -> Pruned:
        if len(raw) != PRUNED_BYTES or not 1 <= raw[0] <= len(_OUTCOMES):
            raise ProtocolError("bad_admission", f"a pruned admission is {PRUNED_BYTES} bytes, outcome 1..6")
        verdict, report = _OUTCOMES[raw[0] - 1]
        return cls(oid, int.from_bytes(raw[1:], "big"), verdict, report)


def decode_record(oid: bytes, raw: bytes) -> Admission | Pruned:
    """What ``adm:<oid>`` holds: the full record, or the marker of a pruned one; bad bytes raise ``bad_admission``."""
    if raw[:1] and raw[0] <= len(_OUTCOMES):
        return Pruned.decode(oid, raw)
    return Admission.decode(oid, raw)


def prunable(adm: Admission, before_ms: int) -> bool:
    """Whether the gate may prune ``adm`` (``gate.prune {before_ms}``): it is final — decided (not pending) and its
    report answered by the authority (traced or disowned: nothing is resent for it) — and older than ``before_ms``.
    (The applet checks the ticket's holding too: settled, nothing of a transfer under way.)"""
    return adm.verdict != PENDING and adm.report != WAITING and adm.at_ms < before_ms


def prune(adm: Admission) -> Pruned:
    """The marker that replaces a :func:`prunable` admission."""
    if adm.verdict == PENDING or adm.report == WAITING:
        raise ProtocolError("not_final", f"admission {adm.oid.hex()} is not final: it cannot be pruned")
    return Pruned(adm.oid, adm.at_ms, adm.verdict, adm.report)


@dataclass(frozen=True)
class Settings:
    """The gate operator's settings: how long a person waits for the authority before the gate admits on its own
    checks (``wait_ms``; 0: never wait), ``strict``: never admit offline (refuse instead), and ``events``: the
    events whose tickets the gate admits (their ids, as a ticket's body names them; none: every ticket of its
    issuers)."""

    wait_ms: int = DEFAULT_WAIT_MS
    strict: bool = False
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.wait_ms <= MAX_WAIT_MS:
            raise ProtocolError("bad_settings", f"wait_ms is 0..{MAX_WAIT_MS}")
        if len(self.events) > MAX_EVENTS or len(set(self.events)) != len(self.events):
            raise ProtocolError("bad_settings", f"a gate admits at most {MAX_EVENTS} events, each named once")
        for e in self.events:
            if not 1 <= len(e) <= MAX_EVENT_ID or not e.isprintable() or e != e.strip():
                raise ProtocolError("bad_settings", f"an event id is 1..{MAX_EVENT_ID} characters, got {e!r}")

    def encode(self) -> bytes:
        fields: dict[str, Any] = {"wait_ms": self.wait_ms, "strict": self.strict}
        if self.events:
            fields["events"] = list(self.events)
        return SETTINGS.encode(fields)

    @classmethod
    def decode(cls, raw: bytes | None) -> Settings:
        if not raw:
            return cls()
        try:
            d = SETTINGS.decode(raw)
        except DecodeError as exc:
            raise ProtocolError("bad_settings", f"not gate settings: {exc}") from None
        return cls(d["wait_ms"], d["strict"], tuple(d.get("events", ())))


def ticket_event(body: bytes) -> str | None:
    """The event a ticket's body names: the ``event`` string of a JSON object (a ticketing server's ticket is
    ``{"event", "seat"}``); None when the body is not such an object."""
    try:
        got = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    event = got.get("event") if isinstance(got, dict) else None
    return event if isinstance(event, str) else None


def copy_refusal(
    token: Token,
    sender: Uid,
    *,
    traceable: bool,
    issuer_key: profile.PublicKey | None,
    admitted: Admission | Pruned | None,
    blocked: bool,
    events: tuple[str, ...] = (),
) -> str:
    """Why the gate refuses a copy of ``token`` from ``sender`` ("" to take it).

    ``issuer_key``: the key of the token's issuer if it is one of the gate's issuers (None: it is not);
    ``admitted``: the gate's record of this oid (or what pruning left of it), if it took it before; ``blocked``:
    the sender is on the gate's newest blocklist; ``events``: the events the gate admits (none: any). A ticket of
    another event is refused ``wrong_event: <its event>`` (checked once the issuer's signature over the body is).
    """
    if blocked:
        return BLOCKED_DEVICE
    if admitted is not None:
        return REFUSED_BEFORE if admitted.verdict == REFUSED else ALREADY_ADMITTED
    if issuer_key is None:
        return ISSUER_NOT_ACCEPTED
    try:
        token.verify(issuer_key)
    except ProtocolError:
        return FORGED
    if events:
        event = ticket_event(token.body)
        if event not in events:
            named = "".join(c if c.isprintable() else "?" for c in (event or "")[:MAX_EVENT_ID])
            return f"{WRONG_EVENT}: " + (named or "the ticket names no event")
    if not traceable:
        return UNTRACEABLE  # the gate reports every admission: an untraced ticket cannot be reported
    return ""


def on_commit(oid: bytes, sender: Uid, nonce: bytes, now_ms: int, settings: Settings, *, online: bool) -> Admission:
    """The record of a ticket just committed to the gate: pending while an authority may answer in time."""
    adm = Admission(oid, sender, nonce, now_ms)
    if not online or settings.wait_ms == 0:
        return _offline(adm, settings)
    return adm


def _offline(adm: Admission, settings: Settings) -> Admission:
    if settings.strict:
        return replace(adm, verdict=REFUSED, reason="the authority did not answer in time (strict gate)")
    return replace(adm, verdict=ADMITTED_OFFLINE, reason="admitted on the gate's own checks; report pending")


def on_tick(adm: Admission, now_ms: int, settings: Settings) -> Admission:
    """A pending admission whose wait is over is decided on the gate's own checks."""
    if adm.verdict == PENDING and now_ms >= adm.at_ms + settings.wait_ms:
        return _offline(adm, settings)
    return adm


def on_trace(adm: Admission, ok: bool, reason: str) -> Admission:
    """The authority's answer to the admission report (``seeked`` for this movement)."""
    if adm.report != WAITING:
        return adm  # answered before (a duplicate)
    report = replace(adm, report=TRACED if ok else DISOWNED, report_reason=None if ok else reason[:200])
    if adm.verdict == PENDING:
        return replace(report, verdict=ADMITTED if ok else REFUSED, reason="traced by the authority" if ok else reason)
    return report
