"""The gate applet: a TRN wallet that admits each ticket once and keeps it (consumed), on the gate's own card.

A gate card runs this applet instead of ``trn`` (``applets = ["gate"]``). Tickets arrive by the ordinary TRN
transfer; the gate judges each copy and each trace with :mod:`cardnet.protocols.gate` (the rules, and why) and
never lets a ticket leave: ``trn.send`` and exchanges are refused (``consumed``).

Operator orders (privileged: the gate service logs in with the PIN): ``gate.setup {issuers?, wait_ms?,
strict?, events?}`` (the agents' certificates whose tickets this gate admits, checked against the card's CA, how
long a person waits for the authority, and the events whose tickets it admits) -> ``gate.state`` (its counts kept
as they change: no admission is read);
``gate.list {after?, pruned?}`` -> ``gate.admissions`` (by oid, a page of 256 read alone; pruned admissions only
with ``pruned``); ``gate.prune {before_ms}`` -> ``gate.pruned`` (below);
``trn.set_authority`` and ``trn.watch`` as on any TRN card; ``gate.watch {on}`` (privileged) -> ``trn.result``: push
this application the gate's events alone (``gate.event``), not ``trn.changed`` for every ticket taken (what a
``trn.watch`` watcher gets besides the events: the gate service needs none of it). Host orders (not privileged, no
fields): ``gate.tick`` decides the pending admissions whose wait is over (the host's time), and ``gate.refresh`` opens a
new session with the authority, whose handshake brings its newest signed blocklist (not while a handshake is
under way or an answer of the authority is awaited). Changes are pushed to the watching applications as
``gate.event``, numbered (``seq``); the card keeps the last :data:`JOURNAL_SIZE` of them (``gj:<seq>``, without the
ticket's body), and ``gate.journal {after}`` (privileged) -> ``gate.journaled`` reads them again: a watcher the
host dropped messages for (``host.missed``) gets what it missed.

Pruning: ``gate.prune {before_ms}`` drops, for every *final* admission (:func:`~cardnet.protocols.gate.prunable`:
decided, its report answered by the authority) whose commit is older than ``before_ms`` (host time) and whose
ticket is settled on the card (traced, or disowned), the ticket's holding ``t:<oid>`` and replaces ``adm:<oid>`` by a
:class:`~cardnet.protocols.gate.Pruned` marker (``ax:<oid>``, 9 bytes): a second copy of the oid is still refused,
offline too.
The memory of the committed transfer (``d:<peer><nonce>``, the TRN wallet's) stays: a holder card that missed the
gate's ``committed`` resends its commit and must hear ``committed ok``. It also ends the open sessions with holders'
cards (not the authority's) opened before ``before_ms`` with nothing queued for them, as ``session.rekey`` would, and
tells each card (``session.failed session_ended``): its next presentation handshakes again at once, instead of going
in the ended session first. Then it forgets the refused transfers
(``n:<peer><nonce>``, the TRN wallet's memory that gives a resent copy the same answer) of every card it now holds no
session with: a copy of a transfer can only come inside a session, and one resent in a new session comes from a card
that never heard the refusal, whose transfer is still open (judged afresh, by the same rules). At most
:data:`PRUNE_BATCH` records an order (``more``: order again).

State (besides the TRN wallet's): ``adm:<oid>`` the admission record (:class:`~cardnet.protocols.gate.Admission`;
a card pruned before ``ax:`` existed may still hold markers here, moved by its next prune), ``ax:<oid>`` the
:class:`~cardnet.protocols.gate.Pruned` marker, ``gc`` the counts (:class:`_Tally`),
``ap:<oid>`` the pending ones, ``rw:<oid>`` those whose report waits, ``gi:<issuer uid>`` the issuers'
certificates, ``gs`` the settings, ``nref`` how many presentations were refused (8 bytes, big endian), ``gjn`` the
number of the last event and ``gj:<seq>`` the journal (both written only while an application watches).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cardnet.applets import fairx
from cardnet.applets.trn import RESULT, TrnApplet, holding_of
from cardnet.card import CardError, Refused, StepContext
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.protocols import gate
from cardnet.protocols import session as sess
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import MAX_BODY, OID_BYTES, Token
from cardnet.wire import Bool, Bytes, Field, ListOf, Message, Nested, Schema, Text, UidType, UInt, register
from cardnet.wire.ids import Uid

_OID = Bytes(OID_BYTES, OID_BYTES)
MAX_CERT = tr.MAX_CERT
LIST_PAGE = 256  # admissions per gate.admissions answer
JOURNAL_SIZE = 1024  # the last gate.events the card keeps for a watcher that missed some (gate.journal)
JOURNAL_PAGE = 256  # events per gate.journaled answer
PRUNE_BATCH = 4096  # records pruned (admissions, refusals) by one gate.prune order (one card step)
MARKER = b"ax:"  # the key prefix of a pruned admission's marker

SETUP = register(
    0x0370,
    "gate.setup",
    "gate",
    Schema(
        "gate.setup",
        [
            Field(0, "issuers", ListOf(Bytes(MAX_CERT), gate.MAX_ISSUERS), optional=True),  # replaces the list
            Field(1, "wait_ms", UInt(), optional=True),
            Field(2, "strict", Bool(), optional=True),
            Field(3, "events", gate.EVENT_IDS, optional=True),  # replaces the list (empty: every event)
        ],
    ),
    privileged=True,
)
STATE = register(
    0x0371,
    "gate.state",
    "gate",
    Schema(
        "gate.state",
        [
            Field(0, "issuers", ListOf(UidType(), gate.MAX_ISSUERS)),
            Field(1, "wait_ms", UInt()),
            Field(2, "strict", Bool()),
            Field(3, "authority", UidType(), optional=True),
            Field(4, "epoch", UInt()),  # of the newest blocklist the card holds (0: none)
            Field(5, "blocklist_at", UInt(), optional=True),  # its issued_at (Unix seconds)
            Field(6, "admitted", UInt()),
            Field(7, "pending", UInt()),  # waiting for the authority's answer (a person at the gate)
            Field(8, "reports_waiting", UInt()),  # admission reports the authority has not answered yet
            Field(9, "disowned", UInt()),  # admissions the authority refused afterwards
            Field(10, "refused", UInt()),  # presentations refused (the ticket stayed with its holder)
            Field(11, "pruned", UInt(), optional=True),  # admissions pruned (counted above too; none: 0)
            Field(12, "admissions", UInt(), optional=True),  # admission records held, pruned ones too
            Field(13, "events", gate.EVENT_IDS, optional=True),  # the events it admits (none: every one)
        ],
    ),
)
TICK = register(0x0372, "gate.tick", "gate", Schema("gate.tick", []))
REFRESH = register(0x0373, "gate.refresh", "gate", Schema("gate.refresh", []))
LIST = register(
    0x0374,
    "gate.list",
    "gate",
    Schema("gate.list", [Field(0, "after", _OID, optional=True), Field(1, "pruned", Bool(), optional=True)]),
    privileged=True,
)
ITEM = Schema(
    "gate.item",
    [
        Field(0, "oid", _OID, optional=True),  # (none: a refused handshake, before any ticket was shown)
        Field(1, "from", UidType(), optional=True),  # (none: a pruned admission)
        Field(2, "at_ms", UInt()),
        Field(3, "verdict", Text(24)),
        Field(4, "reason", Text(200)),
        Field(5, "report", Text(16), optional=True),  # (none: refused before anything was taken)
        Field(6, "report_reason", Text(200), optional=True),
        Field(7, "body", Bytes(MAX_BODY), optional=True),
        Field(8, "kind", Text(16), optional=True),  # events: refused, verdict, report
        Field(9, "pruned", Bool(), optional=True),  # a pruned admission: oid, at_ms, verdict and report are left
        Field(10, "seq", UInt(), optional=True),  # events: the event's number on this card (1, 2, ...; see journal)
    ],
)
ADMISSIONS = register(
    0x0375,
    "gate.admissions",
    "gate",
    Schema(
        "gate.admissions",
        [
            Field(0, "items", ListOf(Nested(ITEM), LIST_PAGE)),
            Field(1, "more", Bool()),
            Field(2, "next", _OID, optional=True),  # with more: the oid to ask after (the items may end before it)
        ],
    ),
)
EVENT = register(0x0376, "gate.event", "gate", ITEM)
PRUNE = register(0x0377, "gate.prune", "gate", Schema("gate.prune", [Field(0, "before_ms", UInt())]), privileged=True)
PRUNED = register(
    0x0378,
    "gate.pruned",
    "gate",
    Schema(
        "gate.pruned",
        [
            Field(0, "pruned", UInt()),  # admissions pruned by this order
            Field(1, "freed_bytes", UInt()),  # of the card's memory (keys and values, as its capacity counts them)
            Field(2, "sessions", UInt()),  # idle sessions with holders' cards ended
            Field(3, "kept", UInt()),  # admissions older than before_ms that are not final yet (kept)
            Field(4, "more", Bool()),  # more to prune: order again
            Field(5, "refusals", UInt(), optional=True),  # refused transfers forgotten (n:; none: 0)
        ],
    ),
)
WATCH_EVENTS = register(
    0x037B, "gate.watch", "gate", Schema("gate.watch", [Field(0, "on", Bool())]), privileged=True
)  # (a watcher of the gate's events alone: the gate service)
JOURNAL = register(0x0379, "gate.journal", "gate", Schema("gate.journal", [Field(0, "after", UInt())]), privileged=True)
JOURNALED = register(
    0x037A,
    "gate.journaled",
    "gate",
    Schema(
        "gate.journaled",
        [
            Field(0, "items", ListOf(Nested(ITEM), JOURNAL_PAGE)),  # the events numbered above ``after``, in order
            Field(1, "first", UInt()),  # the oldest event the card still keeps (last + 1: none)
            Field(2, "last", UInt()),  # the newest event's number (0: none yet)
            Field(3, "more", Bool()),  # more after these: order again after the last item
        ],
    ),
)
SESSION_ENDED = "session_ended"  # session.failed to a holder's card whose idle session a prune ended
PRUNED_REASON = "pruned"  # the reason a pruned admission is listed with (its own is gone)
REFUSED_KIND, VERDICT_KIND, REPORT_KIND = "refused", "verdict", "report"
_NO_EXCHANGE = frozenset({fairx.START.code, fairx.ACCEPT.code})


class GateApplet(TrnApplet):
    name = "gate"
    handles = (*TrnApplet.handles, SETUP, TICK, REFRESH, LIST, PRUNE, JOURNAL, WATCH_EVENTS)
    # Applications that asked (``gate.watch``) for the gate's events alone; volatile, as ``trn.watch``'s watchers.
    _event_watchers: list[Uid] | None = None

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        if code == SETUP.code:
            self._setup(ctx, params)
        elif code == TICK.code:
            self._tick(ctx)
        elif code == REFRESH.code:
            self._refresh(ctx)
        elif code == LIST.code:
            self._list_admissions(ctx, params.get("after"), params.get("pruned", False))
        elif code == PRUNE.code:
            self._prune(ctx, params["before_ms"])
        elif code == JOURNAL.code:
            self._journal(ctx, params["after"])
        elif code == WATCH_EVENTS.code:
            on = params["on"]
            watchers = fairx.rewatched(self._event_watchers, ctx.src, on)

            def adopt() -> None:
                self._event_watchers = watchers

            ctx.after_commit(adopt)
            ctx.reply(RESULT, ok=True, reason="watching the gate's events" if on else "not watching")
        else:
            super().handle(ctx, msg, params)

    def _refresh(self, ctx: StepContext) -> None:
        """A new session with the authority (its handshake brings the newest blocklist), unless a handshake is under
        way or an answer of the authority is awaited (a person waiting, or a report): a new session would drop the
        answer in flight. (While reports wait the authority is unreachable or about to answer: no newer blocklist.)"""
        authority = self.authority(ctx)
        if authority is None or ctx.scan(b"ap:") or ctx.scan(b"rw:"):
            return
        state = self.session(ctx, authority)
        if state is None or state.open:
            self.start_session(ctx, authority)

    # -- consumed: nothing leaves a gate -----------------------------------------------------------
    def _command(self, ctx: StepContext, oid: bytes, kind: str, peer: Uid, traceable: bool) -> None:
        if kind == "start":
            raise Refused(gate.CONSUMED, "a gate's tickets are consumed: they never leave the gate's card")
        super()._command(ctx, oid, kind, peer, traceable)

    def fairx_order(self, ctx: StepContext, code: int, params: dict[str, Any]) -> None:
        if code in _NO_EXCHANGE:
            raise Refused(gate.CONSUMED, "a gate takes part in no exchange: its tickets never leave it")
        super().fairx_order(ctx, code, params)

    # -- settings -------------------------------------------------------------------------------------
    @staticmethod
    def settings(ctx: StepContext) -> gate.Settings:
        try:
            return gate.Settings.decode(ctx.get(b"gs"))
        except ProtocolError as exc:
            raise CardError("bad_state", f"the stored gate settings are damaged: {exc}") from None

    def _setup(self, ctx: StepContext, params: dict[str, Any]) -> None:
        if "issuers" in params:
            certs: dict[Uid, bytes] = {}
            for der in params["issuers"]:
                try:
                    agent = pki.verified(der, ctx.roots_der, now=ctx.now, role=pki.Role.AGENT)
                except PkiError as exc:
                    raise Refused(
                        "bad_issuer", f"not a ticketing agent's certificate of this card's CA: {exc}"
                    ) from None
                certs[agent.uid] = der
            for key, _ in ctx.scan(b"gi:"):
                if Uid.from_bytes(key[3:]) not in certs:
                    ctx.delete(key)
            for uid, der in certs.items():
                if ctx.get(b"gi:" + bytes(uid)) != der:
                    ctx.put(b"gi:" + bytes(uid), der)
        if "wait_ms" in params or "strict" in params or "events" in params:
            current = self.settings(ctx)
            events = tuple(params["events"]) if "events" in params else current.events
            try:
                wanted = gate.Settings(params.get("wait_ms", current.wait_ms), params.get("strict", current.strict),
                                       events)  # fmt: skip
            except ProtocolError as exc:
                raise Refused(exc.reason, str(exc)) from None
            if wanted != current:
                ctx.put(b"gs", wanted.encode())
        self._state(ctx)

    @staticmethod
    def _tally(ctx: StepContext) -> _Tally:
        """The admission counts (``gc``); a card from before they were kept counts its records once."""
        raw = ctx.get(b"gc")
        if raw is not None:
            return _Tally.decode(raw)
        tally = _Tally()
        for prefix in (b"adm:", MARKER):
            for key, value in ctx.scan(prefix):
                tally = tally.plus(gate.decode_record(key[len(prefix) :], value), count=True)
        return tally

    @staticmethod
    def _admission_record(ctx: StepContext, oid: bytes) -> gate.Admission | gate.Pruned | None:
        """The gate's record of ``oid``: the admission, or what pruning left of it (the marker), or None."""
        raw = ctx.get(b"adm:" + oid)
        if raw is not None:
            return gate.decode_record(oid, raw)
        raw = ctx.get(MARKER + oid)
        return None if raw is None else gate.decode_record(oid, raw)

    def _state(self, ctx: StepContext) -> None:
        """``gate.state``: the counts come from ``gc`` and the small pending and waiting indexes (no admission is
        read)."""
        settings = self.settings(ctx)
        tally = self._tally(ctx)
        counts = {
            "admitted": tally.admitted, "disowned": tally.disowned, "admissions": tally.records,
            "pending": len(ctx.scan(b"ap:")), "reports_waiting": len(ctx.scan(b"rw:")),
        }  # fmt: skip
        pruned = tally.pruned
        if ctx.get(b"gc") is None:  # (counted once on a card from before the counts were kept)
            ctx.put(b"gc", tally.encode())
        bl = self.blocklist(ctx)
        fields: dict[str, Any] = {
            "issuers": [Uid.from_bytes(k[3:]) for k, _ in ctx.scan(b"gi:")], "wait_ms": settings.wait_ms,
            "strict": settings.strict, "epoch": bl.epoch if bl else 0, "refused": _count(ctx.get(b"nref")), **counts,
        }  # fmt: skip
        authority = self.authority(ctx)
        if authority is not None:
            fields["authority"] = authority
        if bl is not None:
            fields["blocklist_at"] = bl.issued_at
        if pruned:
            fields["pruned"] = pruned
        if settings.events:
            fields["events"] = list(settings.events)
        ctx.reply(STATE, **fields)

    # -- the copy: judged on the gate's own knowledge ----------------------------------------------------
    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        code = raw[0] if raw else -1
        if code == tr.COPY:
            _, p = tr.decode_inner(raw)
            token = Token.decode(p["token"])  # a bad token: ProtocolError, the session answers failed
            why = self._judge_copy(ctx, peer, token, p)
            if why:
                self.send_inner(
                    ctx, peer, tr.encode_inner(tr.COPIED, {"nonce": p["nonce"], "ok": False, "reason": why})
                )
                ctx.put(b"n:" + bytes(peer) + p["nonce"], why.encode())  # a resent copy gets the same answer
                self._refused(ctx, peer, why, token)
                return
        super().on_inner(ctx, peer, raw)
        if code == tr.COMMIT:
            _, p = tr.decode_inner(raw)
            self._committed(ctx, peer, p["oid"], p["nonce"])

    def _judge_copy(self, ctx: StepContext, peer: Uid, token: Token, p: dict[str, Any]) -> str:
        nonce = p["nonce"]
        h = holding_of(ctx, token.oid)
        if self._committed_before(ctx, peer, nonce) or (h is not None and h.peer == peer and h.nonce == nonce):
            return ""  # a resent copy of a transfer this gate knows: answered as the TRN wallet answers it
        if ctx.get(b"n:" + bytes(peer) + nonce) is not None:
            return ""  # a resent copy of a transfer refused before: the same answer again (the TRN wallet's memory)
        admitted = self._admission_record(ctx, token.oid)
        bl = self.blocklist(ctx)
        key = self._gate_issuer_key(ctx, token.issuer)
        blocked = bl is not None and bl.is_blocked(peer)
        traceable = bool(p["traceable"])
        return gate.copy_refusal(token, peer, traceable=traceable, issuer_key=key, admitted=admitted, blocked=blocked,
                                 events=self.settings(ctx).events)  # fmt: skip

    @staticmethod
    def _gate_issuer_key(ctx: StepContext, issuer: Uid) -> profile.PublicKey | None:
        der = ctx.get(b"gi:" + bytes(issuer))
        if der is None:
            return None
        key = pki.cert_from_der(der).public_key()
        return key if isinstance(key, profile.PublicKey) else None

    def _refused(self, ctx: StepContext, peer: Uid, why: str, token: Token | None) -> None:
        ctx.put(b"nref", (_count(ctx.get(b"nref")) + 1).to_bytes(8, "big"))
        if self._watched:
            item: dict[str, Any] = {
                "from": peer, "at_ms": _ms(ctx), "verdict": gate.REFUSED, "reason": why, "kind": REFUSED_KIND,
            }  # fmt: skip
            if token is not None:
                item |= {"oid": token.oid, "body": token.body}
            self._event(ctx, item)

    def on_refused(self, ctx: StepContext, peer: Uid, exc: ProtocolError) -> None:
        if exc.reason == "blocked":  # a blocked device's handshake: its ticket never left it
            self._refused(ctx, peer, f"{gate.BLOCKED_DEVICE}: {exc}", None)

    # -- the commit: taken, pending until the authority answers or the wait is over -----------------------
    def _committed(self, ctx: StepContext, peer: Uid, oid: bytes, nonce: bytes) -> None:
        h = holding_of(ctx, oid)
        if h is None or h.peer != peer or h.nonce != nonce or h.status is not tr.Status.TRUSTLESS:
            return  # not this transfer's first commit (a duplicate, or answered from memory)
        if self._admission_record(ctx, oid) is not None:
            return
        adm = gate.on_commit(oid, peer, nonce, _ms(ctx), self.settings(ctx), online=self.authority(ctx) is not None)
        self._save_admission(ctx, adm, VERDICT_KIND, None)

    def _save_admission(self, ctx: StepContext, adm: gate.Admission, kind: str, before: gate.Admission | None) -> None:
        tally = self._tally(ctx)
        ctx.put(b"gc", tally.plus(adm, count=before is None).minus(before).encode())
        ctx.put(b"adm:" + adm.oid, adm.encode())
        for index, on in ((b"ap:", adm.verdict == gate.PENDING), (b"rw:", adm.report == gate.WAITING)):
            if on:
                ctx.put(index + adm.oid, b"")
            else:
                ctx.delete(index + adm.oid)
        if self._watched:
            self._event(ctx, self._admission_item(ctx, adm) | {"kind": kind})

    # -- events: pushed to the watchers, the last JOURNAL_SIZE kept for one that missed some ------------------------
    @property
    def _watched(self) -> bool:
        """Whether an application watches the gate's events (``trn.watch`` or ``gate.watch``)."""
        return bool(self._watchers or self._event_watchers)

    def _event(self, ctx: StepContext, item: dict[str, Any]) -> None:
        """Number the event, keep it in the journal (``gj:<seq>``, without the ticket's body; the oldest goes) and
        push it. A card too full to keep it pushes it all the same: a watcher that misses it learns it is lost."""
        seq = _count(ctx.get(b"gjn")) + 1
        item = item | {"seq": seq}
        try:
            if seq > JOURNAL_SIZE:
                ctx.delete(_journal_key(seq - JOURNAL_SIZE))
            ctx.put(b"gjn", seq.to_bytes(8, "big"))
            ctx.put(_journal_key(seq), ITEM.encode({k: v for k, v in item.items() if k != "body"}))
        except CardError as exc:
            if exc.reason != "out_of_memory":
                raise
        for app in dict.fromkeys([*(self._watchers or ()), *(self._event_watchers or ())]):
            if ctx.is_authenticated(app):
                ctx.emit(EVENT, app, **item)

    def _journal(self, ctx: StepContext, after: int) -> None:
        """``gate.journal {after}``: the kept events numbered above ``after`` (a page), with the body of the ticket an
        admission's event is about while the card holds it."""
        last = _count(ctx.get(b"gjn"))
        rows = ctx.scan(b"gj:")
        first = int.from_bytes(rows[0][0][3:], "big") if rows else last + 1
        items: list[dict[str, Any]] = []
        for key, raw in rows:
            if int.from_bytes(key[3:], "big") <= after:
                continue
            if len(items) == JOURNAL_PAGE:
                break
            item = ITEM.decode(raw)
            if item.get("kind") != REFUSED_KIND and "oid" in item:
                h = holding_of(ctx, item["oid"])
                if h is not None and h.token is not None:
                    item["body"] = Token.decode(h.token).body
            items.append(item)
        more = bool(items) and items[-1]["seq"] < last
        ctx.reply(JOURNALED, items=items, first=first, last=last, more=more)

    @staticmethod
    def _admission_item(ctx: StepContext, adm: gate.Admission) -> dict[str, Any]:
        item = {"oid": adm.oid, **adm.fields()}
        del item["nonce"]
        h = holding_of(ctx, adm.oid)
        if h is not None and h.token is not None:
            item["body"] = Token.decode(h.token).body
        return item

    def _tick(self, ctx: StepContext) -> None:
        settings, now_ms = self.settings(ctx), _ms(ctx)
        for key, _ in ctx.scan(b"ap:"):
            oid = key[3:]
            raw = ctx.get(b"adm:" + oid)
            if raw is None:
                ctx.delete(key)
                continue
            adm = gate.decode_record(oid, raw)
            if isinstance(adm, gate.Pruned):  # (never: a pending admission is not pruned)
                ctx.delete(key)
                continue
            after = gate.on_tick(adm, now_ms, settings)
            if after != adm:
                self._save_admission(ctx, after, VERDICT_KIND, adm)

    # -- the trace: the admission report ------------------------------------------------------------------
    def _trace(self, ctx: StepContext, oid: bytes, h: tr.Holding) -> None:
        raw = ctx.get(b"adm:" + oid)
        if raw is not None and gate.decode_record(oid, raw).report == gate.DISOWNED:
            return  # the authority answered for good: nothing more to report
        super()._trace(ctx, oid, h)

    def _seeked(self, ctx: StepContext, peer: Uid, p: dict[str, Any]) -> None:
        oid = p["oid"]
        before = holding_of(ctx, oid)
        super()._seeked(ctx, peer, p)
        if before is None or before.status is not tr.Status.TRUSTLESS:
            return
        if before.peer != p["from"] or before.nonce != p["nonce"]:
            return
        raw = ctx.get(b"adm:" + oid)
        if raw is None:
            return
        adm = gate.decode_record(oid, raw)
        if isinstance(adm, gate.Pruned) or adm.frm != p["from"] or adm.nonce != p["nonce"]:
            return
        after = holding_of(ctx, oid)
        ok = after is not None and after.status is tr.Status.ENABLED
        reason = "" if ok else (p["reason"] if not p["ok"] else "the authority named another issuer")
        kind = VERDICT_KIND if adm.verdict == gate.PENDING else REPORT_KIND
        new = gate.on_trace(adm, ok, reason)
        if new != adm:
            self._save_admission(ctx, new, kind, adm)

    # -- listing ---------------------------------------------------------------------------------------------
    def _list_admissions(self, ctx: StepContext, after: bytes | None, pruned: bool) -> None:
        """A page of admissions by oid after ``after``, with the pruned ones (``ax:``) if asked: it reads the page
        alone (at most LIST_PAGE + 1 records of each prefix), however many the card holds."""
        rows: list[tuple[bytes, bytes]] = []
        for prefix in (b"adm:", MARKER) if pruned else (b"adm:",):
            start = None if after is None else prefix + after
            rows += [(k[len(prefix) :], v) for k, v in ctx.scan_page(prefix, after=start, limit=LIST_PAGE + 1)]
        rows.sort()
        more = len(rows) > LIST_PAGE
        items: list[dict[str, Any]] = []
        for oid, raw in rows[:LIST_PAGE]:
            rec = gate.decode_record(oid, raw)
            if isinstance(rec, gate.Admission):
                items.append(self._admission_item(ctx, rec))
            elif pruned:  # (a marker left under adm: by a card pruned before ax: existed: moved by its next prune)
                items.append(_pruned_item(rec))
        fields: dict[str, Any] = {"items": items, "more": more}
        if more:
            fields["next"] = rows[LIST_PAGE - 1][0]
        ctx.reply(ADMISSIONS, **fields)

    # -- pruning ---------------------------------------------------------------------------------------------
    def _prune(self, ctx: StepContext, before_ms: int) -> None:
        """Prune the final admissions older than ``before_ms`` and end the idle sessions opened before it, then drop
        the refusals remembered for the holders' cards it holds no session with (see the module); answers
        ``gate.pruned``."""
        tally = self._tally(ctx)
        pruned = freed = kept = steps = 0
        more = False
        for key, raw in ctx.scan(b"adm:"):
            oid = key[4:]
            rec = gate.decode_record(oid, raw)
            if isinstance(rec, gate.Pruned):  # a marker from before ax: existed: moved there
                if steps == PRUNE_BATCH:
                    more = True
                    continue
                ctx.delete(key)
                ctx.put(MARKER + oid, raw)
                freed += len(key) - len(MARKER + oid)
                steps += 1
                continue
            if rec.at_ms >= before_ms:
                continue
            held_key = b"t:" + oid
            held = ctx.get(held_key)
            waiting = ctx.get(b"ap:" + oid) is not None or ctx.get(b"rw:" + oid) is not None
            if waiting or not gate.prunable(rec, before_ms) or (held is not None and not _settled(oid, held, rec)):
                kept += 1
                continue
            if steps == PRUNE_BATCH:
                more = True
                continue  # (counted on: kept stays exact)
            marker = gate.prune(rec).encode()
            ctx.delete(key)
            ctx.put(MARKER + oid, marker)
            freed += len(key) + len(raw) - len(MARKER + oid) - len(marker)
            if held is not None:
                ctx.delete(held_key)
                freed += len(held_key) + len(held)
            pruned += 1
            steps += 1
        if pruned:
            ctx.put(b"gc", replace(tally, pruned=tally.pruned + pruned).encode())
        sessions = 0
        authority = self.authority(ctx)
        for key, raw in ctx.scan(b"s:"):
            peer = Uid.from_bytes(key[2:])
            if peer == authority or ctx.get(b"q:" + key[2:]) is not None:
                continue
            state = self.session(ctx, peer)
            if state is not None and state.open and state.opened is not None and state.opened * 1000 < before_ms:
                ctx.delete(key)
                freed += len(key) + len(raw)
                sessions += 1
                # tell the holder's card: its next presentation opens a new session (untold, it goes in the ended one,
                # is refused no_session, and is sent again in a new session: a round trip later)
                ctx.emit(
                    sess.FAILED, peer, reason=SESSION_ENDED, detail="the gate pruned this idle session: open a new one"
                )
        refusals = 0
        for key, raw in ctx.scan(b"n:"):  # a resent copy of a refused transfer can only come in a session held now
            if ctx.get(b"s:" + key[2:18]) is not None:
                continue
            if steps == PRUNE_BATCH:
                more = True
                break
            ctx.delete(key)
            freed += len(key) + len(raw)
            refusals += 1
            steps += 1
        fields: dict[str, Any] = {"pruned": pruned, "freed_bytes": freed, "sessions": sessions, "kept": kept}
        if refusals:
            fields["refusals"] = refusals
        ctx.reply(PRUNED, **fields, more=more)


@dataclass(frozen=True)
class _Tally:
    """``gc``: how many admission records the card holds (pruned ones too), how many of them admitted a person,
    were disowned by the authority, were pruned (4 x 8 bytes, big endian: updated in place, its size never
    changes)."""

    records: int = 0
    admitted: int = 0
    disowned: int = 0
    pruned: int = 0

    def plus(self, rec: gate.Admission | gate.Pruned, *, count: bool) -> _Tally:
        """With ``rec`` counted (``count``: a new record, not a changed one)."""
        return _Tally(
            self.records + count, self.admitted + rec.admitted, self.disowned + (rec.report == gate.DISOWNED),
            self.pruned + (count and isinstance(rec, gate.Pruned)),
        )  # fmt: skip

    def minus(self, rec: gate.Admission | None) -> _Tally:
        """Without what the old version ``rec`` of a changed record counted."""
        if rec is None:
            return self
        return replace(
            self, admitted=self.admitted - rec.admitted, disowned=self.disowned - (rec.report == gate.DISOWNED)
        )

    def encode(self) -> bytes:
        return b"".join(max(0, n).to_bytes(8, "big") for n in (self.records, self.admitted, self.disowned, self.pruned))

    @classmethod
    def decode(cls, raw: bytes) -> _Tally:
        if len(raw) != 32:
            raise CardError("bad_state", f"the stored gate counts are damaged ({len(raw)} bytes, not 32)")
        return cls(*(int.from_bytes(raw[i : i + 8], "big") for i in range(0, 32, 8)))


def _settled(oid: bytes, held: bytes, rec: gate.Admission) -> bool:
    """The ticket's holding is at rest: enabled after the trace, or trustless with its report disowned (dead)."""
    h = tr.Holding.decode(oid, held)
    if h.status is tr.Status.ENABLED:
        return h.peer is None
    return h.status is tr.Status.TRUSTLESS and rec.report == gate.DISOWNED


def _journal_key(seq: int) -> bytes:
    return b"gj:" + seq.to_bytes(8, "big")


def _pruned_item(rec: gate.Pruned) -> dict[str, Any]:
    return {
        "oid": rec.oid, "at_ms": rec.at_ms, "verdict": rec.verdict, "reason": PRUNED_REASON, "report": rec.report,
        "pruned": True,
    }  # fmt: skip


def _ms(ctx: StepContext) -> int:
    return max(0, int(ctx.now * 1000))


def _count(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "big")


__all__ = [
    "ADMISSIONS", "EVENT", "JOURNAL", "JOURNALED", "LIST", "PRUNE", "PRUNED", "REFRESH", "RESULT", "SETUP", "STATE",
    "TICK", "GateApplet",
]  # fmt: skip
