"""The gate applet: a TRN wallet that admits each ticket once and keeps it (consumed), on the gate's own card.

A gate card runs this applet instead of ``trn`` (``applets = ["gate"]``). Tickets arrive by the ordinary TRN
transfer; the gate judges each copy and each trace with :mod:`cardnet.protocols.gate` (the rules, and why) and
never lets a ticket leave: ``trn.send`` and exchanges are refused (``consumed``).

Operator orders (privileged: the gate service logs in with the PIN): ``gate.setup {issuers?, wait_ms?,
strict?}`` (the agents' certificates whose tickets this gate admits, checked against the card's CA, and how long
a person waits for the authority) -> ``gate.state``; ``gate.list {after?}`` -> ``gate.admissions`` (by oid, 256
at a time); ``trn.set_authority`` and ``trn.watch`` as on any TRN card. Host orders (not privileged, no fields):
``gate.tick`` decides the pending admissions whose wait is over (the host's time), and ``gate.refresh`` opens a
new session with the authority, whose handshake brings its newest signed blocklist (not while a handshake is
under way or an answer of the authority is awaited). Changes are pushed to the watching applications as
``gate.event``.

State (besides the TRN wallet's): ``adm:<oid>`` the admission record (:class:`~cardnet.protocols.gate.Admission`),
``ap:<oid>`` the pending ones, ``rw:<oid>`` those whose report waits, ``gi:<issuer uid>`` the issuers'
certificates, ``gs`` the settings, ``nref`` how many presentations were refused (8 bytes, big endian).
"""

from __future__ import annotations

from typing import Any

from cardnet.applets import fairx
from cardnet.applets.trn import RESULT, TrnApplet, holding_of
from cardnet.card import CardError, Refused, StepContext
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.protocols import gate
from cardnet.protocols import transfer as tr
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.token import MAX_BODY, OID_BYTES, Token
from cardnet.wire import Bool, Bytes, Field, ListOf, Message, Nested, Schema, Text, UidType, UInt, register
from cardnet.wire.ids import Uid

_OID = Bytes(OID_BYTES, OID_BYTES)
MAX_CERT = tr.MAX_CERT
LIST_PAGE = 256  # admissions per gate.admissions answer

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
        ],
    ),
)
TICK = register(0x0372, "gate.tick", "gate", Schema("gate.tick", []))
REFRESH = register(0x0373, "gate.refresh", "gate", Schema("gate.refresh", []))
LIST = register(
    0x0374, "gate.list", "gate", Schema("gate.list", [Field(0, "after", _OID, optional=True)]), privileged=True
)
ITEM = Schema(
    "gate.item",
    [
        Field(0, "oid", _OID, optional=True),  # (none: a refused handshake, before any ticket was shown)
        Field(1, "from", UidType()),
        Field(2, "at_ms", UInt()),
        Field(3, "verdict", Text(24)),
        Field(4, "reason", Text(200)),
        Field(5, "report", Text(16), optional=True),  # (none: refused before anything was taken)
        Field(6, "report_reason", Text(200), optional=True),
        Field(7, "body", Bytes(MAX_BODY), optional=True),
        Field(8, "kind", Text(16), optional=True),  # events: refused, verdict, report
    ],
)
ADMISSIONS = register(
    0x0375,
    "gate.admissions",
    "gate",
    Schema("gate.admissions", [Field(0, "items", ListOf(Nested(ITEM), LIST_PAGE)), Field(1, "more", Bool())]),
)
EVENT = register(0x0376, "gate.event", "gate", ITEM)
REFUSED_KIND, VERDICT_KIND, REPORT_KIND = "refused", "verdict", "report"
_NO_EXCHANGE = frozenset({fairx.START.code, fairx.ACCEPT.code})


class GateApplet(TrnApplet):
    name = "gate"
    handles = (*TrnApplet.handles, SETUP, TICK, REFRESH, LIST)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        if code == SETUP.code:
            self._setup(ctx, params)
        elif code == TICK.code:
            self._tick(ctx)
        elif code == REFRESH.code:
            self._refresh(ctx)
        elif code == LIST.code:
            self._list_admissions(ctx, params.get("after"))
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
        if "wait_ms" in params or "strict" in params:
            current = self.settings(ctx)
            try:
                wanted = gate.Settings(params.get("wait_ms", current.wait_ms), params.get("strict", current.strict))
            except ProtocolError as exc:
                raise Refused(exc.reason, str(exc)) from None
            if wanted != current:
                ctx.put(b"gs", wanted.encode())
        self._state(ctx)

    def _state(self, ctx: StepContext) -> None:
        settings = self.settings(ctx)
        counts = {"admitted": 0, "pending": 0, "reports_waiting": 0, "disowned": 0}
        for key, raw in ctx.scan(b"adm:"):
            adm = gate.Admission.decode(key[4:], raw)
            counts["admitted"] += adm.admitted
            counts["pending"] += adm.verdict == gate.PENDING
            counts["reports_waiting"] += adm.report == gate.WAITING
            counts["disowned"] += adm.report == gate.DISOWNED
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
        raw = ctx.get(b"adm:" + token.oid)
        admitted = None if raw is None else gate.Admission.decode(token.oid, raw)
        bl = self.blocklist(ctx)
        key = self._gate_issuer_key(ctx, token.issuer)
        blocked = bl is not None and bl.is_blocked(peer)
        traceable = bool(p["traceable"])
        return gate.copy_refusal(token, peer, traceable=traceable, issuer_key=key, admitted=admitted, blocked=blocked)

    @staticmethod
    def _gate_issuer_key(ctx: StepContext, issuer: Uid) -> profile.PublicKey | None:
        der = ctx.get(b"gi:" + bytes(issuer))
        if der is None:
            return None
        key = pki.cert_from_der(der).public_key()
        return key if isinstance(key, profile.PublicKey) else None

    def _refused(self, ctx: StepContext, peer: Uid, why: str, token: Token | None) -> None:
        ctx.put(b"nref", (_count(ctx.get(b"nref")) + 1).to_bytes(8, "big"))
        if self._watchers:
            item: dict[str, Any] = {
                "from": peer, "at_ms": _ms(ctx), "verdict": gate.REFUSED, "reason": why, "kind": REFUSED_KIND,
            }  # fmt: skip
            if token is not None:
                item |= {"oid": token.oid, "body": token.body}
            self.notify(ctx, EVENT, item)

    def on_refused(self, ctx: StepContext, peer: Uid, exc: ProtocolError) -> None:
        if exc.reason == "blocked":  # a blocked device's handshake: its ticket never left it
            self._refused(ctx, peer, f"{gate.BLOCKED_DEVICE}: {exc}", None)

    # -- the commit: taken, pending until the authority answers or the wait is over -----------------------
    def _committed(self, ctx: StepContext, peer: Uid, oid: bytes, nonce: bytes) -> None:
        h = holding_of(ctx, oid)
        if h is None or h.peer != peer or h.nonce != nonce or h.status is not tr.Status.TRUSTLESS:
            return  # not this transfer's first commit (a duplicate, or answered from memory)
        if ctx.get(b"adm:" + oid) is not None:
            return
        adm = gate.on_commit(oid, peer, nonce, _ms(ctx), self.settings(ctx), online=self.authority(ctx) is not None)
        self._save_admission(ctx, adm, VERDICT_KIND)

    def _save_admission(self, ctx: StepContext, adm: gate.Admission, kind: str) -> None:
        ctx.put(b"adm:" + adm.oid, adm.encode())
        for index, on in ((b"ap:", adm.verdict == gate.PENDING), (b"rw:", adm.report == gate.WAITING)):
            if on:
                ctx.put(index + adm.oid, b"")
            else:
                ctx.delete(index + adm.oid)
        if self._watchers:
            self.notify(ctx, EVENT, self._admission_item(ctx, adm) | {"kind": kind})

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
            adm = gate.Admission.decode(oid, raw)
            after = gate.on_tick(adm, now_ms, settings)
            if after != adm:
                self._save_admission(ctx, after, VERDICT_KIND)

    # -- the trace: the admission report ------------------------------------------------------------------
    def _trace(self, ctx: StepContext, oid: bytes, h: tr.Holding) -> None:
        raw = ctx.get(b"adm:" + oid)
        if raw is not None and gate.Admission.decode(oid, raw).report == gate.DISOWNED:
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
        adm = gate.Admission.decode(oid, raw)
        if adm.frm != p["from"] or adm.nonce != p["nonce"]:
            return
        after = holding_of(ctx, oid)
        ok = after is not None and after.status is tr.Status.ENABLED
        reason = "" if ok else (p["reason"] if not p["ok"] else "the authority named another issuer")
        kind = VERDICT_KIND if adm.verdict == gate.PENDING else REPORT_KIND
        new = gate.on_trace(adm, ok, reason)
        if new != adm:
            self._save_admission(ctx, new, kind)

    # -- listing ---------------------------------------------------------------------------------------------
    def _list_admissions(self, ctx: StepContext, after: bytes | None) -> None:
        rows = [(k[4:], v) for k, v in ctx.scan(b"adm:") if after is None or k[4:] > after]
        page = rows[:LIST_PAGE]
        items = [self._admission_item(ctx, gate.Admission.decode(oid, raw)) for oid, raw in page]
        ctx.reply(ADMISSIONS, items=items, more=len(rows) > LIST_PAGE)


def _ms(ctx: StepContext) -> int:
    return max(0, int(ctx.now * 1000))


def _count(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "big")


__all__ = ["ADMISSIONS", "EVENT", "LIST", "REFRESH", "RESULT", "SETUP", "STATE", "TICK", "GateApplet"]
