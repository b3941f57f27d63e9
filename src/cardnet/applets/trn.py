"""The TRN wallet applet: holds tokens and moves them with the 2PC transfer and the trace.

Owner commands (privileged: from an application that verified the PIN):
``trn.mint`` and ``trn.reissue`` (agent cards only), ``trn.send``,
``trn.cancel``, ``trn.list``, ``trn.set_authority``, ``trn.accept_policy`` and
``trn.answer`` (below). ``trn.recover`` is not
privileged: resending is harmless (every TRN message is idempotent), so the
host drives recovery on its own timer. ``trn.blocklist`` delivers an
authority-signed blocklist.

Reissue (agent cards): ``trn.reissue {oid, new_oid?, body?}`` asks the
authority, over the card's session with it, to revoke ``oid`` and reissue it
as ``new_oid`` (drawn by the card if not given) with ``body`` (default: the
body of the token as this card minted it). When the authority grants it, the
card mints the new token and starts a normal traced transfer to the holder the
authority named (or keeps it, if that is this card). The command is idempotent
and reports the state (``trn.reissue_state``); recovery resends a pending
request.

Refusing tokens (TRN 3.3.2, "owner's rejection"): ``trn.accept_policy
{issuers?, ask?}`` sets the card's :class:`~cardnet.protocols.trn.transfer.AcceptPolicy`
(omitted fields are kept; no field: just report it). A copy of a token from an
issuer not listed is answered ``copied false "issuer_not_accepted"``; with
``ask`` a copy is held as ``offered`` (listed by ``trn.list``) until the owner's
``trn.answer {oid, accept}``: accept answers ``copied ok`` and the transfer goes
on, reject answers ``copied false "refused_by_owner"`` and keeps nothing. The
sender then re-enables its token and ``trn.list`` shows why (``refused``). Both
are privileged: a host can neither loosen nor tighten what its owner takes, nor
accept in the owner's place.

State: ``t:<oid>`` the holding (:class:`~cardnet.protocols.trn.transfer.Holding`),
``d:<peer><nonce>`` transfers this card committed as receiver, ``a`` the
authority's Uid, ``acc`` the acceptance policy, ``n:<peer><nonce>`` transfers
the owner rejected (a resent copy gets the same answer), ``m:<oid>`` every token this card minted (as minted; empty
while reserved for a pending reissue), ``r:<old oid>`` reissues this card asked
for, plus the session state of :class:`SessionApplet`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cardnet.applets import fairx
from cardnet.applets.sessions import SessionApplet
from cardnet.card import CardError, Refused, StepContext
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import MAX_BODY, OID_BYTES, Token, mint
from cardnet.wire import Bool, Bytes, Field, ListOf, Message, Nested, Schema, Text, UidType, register
from cardnet.wire.ids import Uid

_OID = Bytes(OID_BYTES, OID_BYTES)
MINT = register(
    0x0310,
    "trn.mint",
    "trn",
    Schema("trn.mint", [Field(0, "oid", _OID), Field(1, "body", Bytes(MAX_BODY))]),
    privileged=True,
)
SEND = register(
    0x0311,
    "trn.send",
    "trn",
    Schema(
        "trn.send", [Field(0, "oid", _OID), Field(1, "to", UidType()), Field(2, "traceable", Bool(), optional=True)]
    ),
    privileged=True,
)
CANCEL = register(0x0312, "trn.cancel", "trn", Schema("trn.cancel", [Field(0, "oid", _OID)]), privileged=True)
# ``oid``: that token's transfer alone (its resend, its trace, its peer's session nudged); none: everything under way
RECOVER = register(0x0313, "trn.recover", "trn", Schema("trn.recover", [Field(0, "oid", _OID, optional=True)]))
# ``oid``: that token alone (none if this card holds none), a read that costs the same however many the card holds
LIST = register(0x0314, "trn.list", "trn", Schema("trn.list", [Field(0, "oid", _OID, optional=True)]), privileged=True)
SET_AUTHORITY = register(
    0x0315,
    "trn.set_authority",
    "trn",
    Schema("trn.set_authority", [Field(0, "authority", UidType())]),
    privileged=True,
)
BLOCKLIST = register(0x0316, "trn.blocklist", "trn", Schema("trn.blocklist", [Field(0, "blocklist", Bytes(1 << 20))]))
RESULT = register(
    0x0317,
    "trn.result",
    "trn",
    Schema("trn.result", [Field(0, "ok", Bool()), Field(1, "reason", Text(200)), Field(2, "oid", _OID, optional=True)]),
)
_ITEM = Schema(
    "trn.token_item",
    [
        Field(0, "oid", _OID),
        Field(1, "status", Text(24)),
        Field(2, "peer", UidType(), optional=True),
        Field(3, "body", Bytes(MAX_BODY), optional=True),
        Field(4, "issuer", UidType(), optional=True),  # offered: who minted it (the owner decides on it)
        Field(5, "refused", Text(64), optional=True),  # enabled after a refused transfer: the receiver's reason
    ],
)
TOKENS = register(0x0318, "trn.tokens", "trn", Schema("trn.tokens", [Field(0, "tokens", ListOf(Nested(_ITEM), 4096))]))
REISSUE = register(
    0x0319,
    "trn.reissue",
    "trn",
    Schema(
        "trn.reissue",
        [
            Field(0, "oid", _OID),
            Field(1, "new_oid", _OID, optional=True),
            Field(2, "body", Bytes(MAX_BODY), optional=True),
        ],
    ),
    privileged=True,
)
REISSUE_STATE = register(
    0x031A,
    "trn.reissue_state",
    "trn",
    Schema(
        "trn.reissue_state",
        [
            Field(0, "oid", _OID),
            Field(1, "new_oid", _OID),
            Field(2, "state", Text(16)),  # pending, done, refused
            Field(3, "reason", Text(200)),
            Field(4, "holder", UidType(), optional=True),
        ],
    ),
)
_ISSUERS = ListOf(UidType(), tr.MAX_ISSUERS)
ACCEPT_POLICY = register(
    0x031B,
    "trn.accept_policy",
    "trn",
    Schema("trn.accept_policy", [Field(0, "issuers", _ISSUERS, optional=True), Field(1, "ask", Bool(), optional=True)]),
    privileged=True,
)
ACCEPT_POLICY_IS = register(
    0x031C,
    "trn.accept_policy_is",
    "trn",
    Schema("trn.accept_policy_is", [Field(0, "issuers", _ISSUERS), Field(1, "ask", Bool())]),
)
ANSWER = register(
    0x031D,
    "trn.answer",
    "trn",
    Schema("trn.answer", [Field(0, "oid", _OID), Field(1, "accept", Bool())]),
    privileged=True,
)
_PENDING, _DONE, _REFUSED = "pending", "done", "refused"
_REISSUE_REC = Schema(
    "trn.reissue_record",
    [
        Field(0, "new_oid", _OID),
        Field(1, "state", Text(16)),
        Field(2, "reason", Text(200)),
        Field(3, "holder", UidType(), optional=True),
        Field(4, "body", Bytes(MAX_BODY), optional=True),  # kept until the new token is minted
    ],
)


WATCH = register(
    0x031E,
    "trn.watch",
    "trn",
    Schema("trn.watch", [Field(0, "on", Bool())]),
    privileged=True,
)
CHANGED = register(0x031F, "trn.changed", "trn", _ITEM)  # pushed to the watching applications
GONE = "gone"  # the status trn.changed gives a token that left the card

MAX_HINTS = 4096  # transfer -> oid hints a trn applet keeps in volatile memory


def holding_of(ctx: StepContext, oid: bytes) -> tr.Holding | None:
    raw = ctx.get(b"t:" + oid)
    return None if raw is None else tr.Holding.decode(oid, raw)


class TrnApplet(fairx.ExchangeWallet):
    name = "trn"
    handles = (
        *SessionApplet.handles, MINT, SEND, CANCEL, RECOVER, LIST, SET_AUTHORITY, BLOCKLIST, REISSUE,
        ACCEPT_POLICY, ANSWER, WATCH, *fairx.ORDERS,
    )  # fmt: skip
    _FAIRX_ORDERS = frozenset(m.code for m in fairx.ORDERS)
    # (peer, nonce) -> oid of transfers this card stored, so that copied/committed/aborted (which name the
    # transfer, not the oid) need not scan every holding. Volatile and only a hint: checked against the
    # holding in the card's state before use (a refused step may have left a wrong one), rebuilt by scanning.
    _hints: dict[tuple[bytes, bytes], bytes] | None = None

    # -- owner commands ----------------------------------------------------------------------
    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        if code in (c.code for c in SessionApplet.handles):
            super().handle(ctx, msg, params)
        elif code == SEND.code:
            self._command(ctx, params["oid"], "start", params["to"], params.get("traceable", True))
        elif code == CANCEL.code:
            h = holding_of(ctx, params["oid"])
            peer = h.peer if h is not None and h.peer is not None else ctx.card_uid
            self._command(ctx, params["oid"], "cancel", peer, True)
        elif code == RECOVER.code:
            if params.get("oid") is None:
                self._recover(ctx)
            else:
                self._recover_one(ctx, params["oid"])
        elif code == LIST.code:
            self._list(ctx, params.get("oid"))
        elif code == MINT.code:
            self._mint(ctx, params["oid"], params["body"])
        elif code == REISSUE.code:
            self._reissue(ctx, params["oid"], params.get("new_oid"), params.get("body"))
        elif code == ACCEPT_POLICY.code:
            self._set_accept_policy(ctx, params)
        elif code == ANSWER.code:
            self._answer(ctx, params["oid"], params["accept"])
        elif code in self._FAIRX_ORDERS:
            self.fairx_order(ctx, code, params)
        elif code == WATCH.code:
            self.watch(ctx, params["on"])
            ctx.reply(RESULT, ok=True, reason="watching" if params["on"] else "not watching")
        elif code == SET_AUTHORITY.code:
            ctx.put(b"a", bytes(params["authority"]))
            ctx.reply(RESULT, ok=True, reason="authority set")
        else:
            self.accept_blocklist(ctx, params["blocklist"])

    def _command(self, ctx: StepContext, oid: bytes, kind: str, peer: Uid, traceable: bool) -> None:
        if kind == "start" and peer == ctx.card_uid:
            raise Refused("refused", f"{peer} is this card itself: send a token to another card")
        if kind == "start" and not peer.is_card:
            raise Refused("refused", f"{peer} is not a card (a card's Uid ends in :00000000): send a token to a card")
        h = holding_of(ctx, oid)
        nonce = ctx.random(tr.TRANSFER_NONCE_BYTES) if kind == "start" else b""
        try:
            out = tr.apply(h, tr.Event(kind, peer, nonce, traceable=traceable, sign=self._signer(ctx)), oid)
        except ProtocolError as exc:
            raise Refused(exc.reason, str(exc)) from None
        self._store(ctx, oid, out.holding)
        self._send_all(ctx, peer, oid, out.send)
        ctx.reply(RESULT, ok=True, reason=out.note or kind, oid=oid)

    # -- the owner's acceptance policy (TRN 3.3.2) ------------------------------------------------
    @staticmethod
    def accept_policy(ctx: StepContext) -> tr.AcceptPolicy:
        try:
            return tr.AcceptPolicy.decode(ctx.get(b"acc"))
        except ProtocolError as exc:  # written only by _set_accept_policy: damage the store's integrity tag missed
            raise CardError("bad_state", f"the stored acceptance policy is damaged: {exc}") from None

    def _set_accept_policy(self, ctx: StepContext, params: dict[str, Any]) -> None:
        current = self.accept_policy(ctx)
        issuers = tuple(params.get("issuers", current.issuers))
        try:
            wanted = tr.AcceptPolicy(issuers, params.get("ask", current.ask))
        except ProtocolError as exc:
            raise Refused(exc.reason, str(exc)) from None
        if wanted != current:
            ctx.put(b"acc", wanted.encode())
        ctx.reply(ACCEPT_POLICY_IS, issuers=list(wanted.issuers), ask=wanted.ask)

    def _answer(self, ctx: StepContext, oid: bytes, accept: bool) -> None:
        h = holding_of(ctx, oid)
        if h is None or h.status is not tr.Status.OFFERED or h.peer is None:
            raise Refused("no_offer", f"this card holds no offer of token {oid.hex()} (see the offered tokens)")
        peer = h.peer
        out = tr.apply(h, tr.Event("accept" if accept else "reject", peer, h.nonce or b""), oid)
        self._store(ctx, oid, out.holding)
        self._send_all(ctx, peer, oid, out.send)
        if not accept:  # a resent copy of this transfer (the answer lost) gets the same answer, not a new offer
            ctx.put(b"n:" + bytes(peer) + (h.nonce or b""), tr.REFUSED_BY_OWNER.encode())
        ctx.reply(RESULT, ok=True, reason="accepted" if accept else tr.REFUSED_BY_OWNER, oid=oid)

    def _mint(self, ctx: StepContext, oid: bytes, body: bytes) -> None:
        role = pki.role_of(pki.cert_from_der(ctx.certificate_der))
        if role is not pki.Role.AGENT:
            raise Refused("wrong_usage", "only a ticketing agent's card mints tokens")
        if holding_of(ctx, oid) is not None:
            raise Refused("refused", f"oid {oid.hex()} already exists on this card")
        minted = ctx.get(b"m:" + oid)
        if minted == b"":
            raise Refused("refused", f"oid {oid.hex()} is reserved for a pending reissue: pick another")
        if minted is not None or ctx.get(b"r:" + oid) is not None:  # (r: it was reissued, so revoked)
            # it left this card: minting it again (e.g. a replayed order) would double it
            raise Refused("refused", f"oid {oid.hex()} was already minted by this card: pick another oid")
        self._mint_token(ctx, oid, body)
        ctx.reply(RESULT, ok=True, reason="minted", oid=oid)

    def _mint_token(self, ctx: StepContext, oid: bytes, body: bytes) -> None:
        """Mint and hold a token; remember it as minted (the default body and the proof of issue of a reissue)."""
        token = mint(oid, ctx.card_uid, body, ctx.sign).encode()
        ctx.put(b"m:" + oid, token)
        self._store(ctx, oid, tr.Holding(oid, tr.Status.ENABLED, token=token))

    def _recover(self, ctx: StepContext) -> None:
        for key, raw in ctx.scan(b"t:"):
            oid = key[2:]
            h = tr.Holding.decode(oid, raw)
            if h.status is tr.Status.DISABLED and h.peer is not None:
                out = tr.apply(h, tr.Event("recover", h.peer, sign=self._signer(ctx)), oid)
                self._send_all(ctx, h.peer, oid, out.send)
            elif h.status is tr.Status.TRUSTLESS:
                self._trace(ctx, oid, h)
        for key, raw in ctx.scan(b"r:"):
            rec = _REISSUE_REC.decode(raw)
            if rec["state"] == _PENDING:
                self._ask_reissue(ctx, key[2:], rec)
        self.fairx_recover(ctx)
        self.restart_sessions(ctx)

    def _recover_one(self, ctx: StepContext, oid: bytes) -> None:
        """Recovery of one token's transfer: what :meth:`_recover` does for it alone (a retried delivery needs its
        own transfer resent, not every other one under way re-signed and resent), and its peer's session nudged."""
        h = holding_of(ctx, oid)
        if h is None:
            return
        if h.status is tr.Status.DISABLED and h.peer is not None:
            out = tr.apply(h, tr.Event("recover", h.peer, sign=self._signer(ctx)), oid)
            self._send_all(ctx, h.peer, oid, out.send)
            if ctx.get(b"q:" + bytes(h.peer)) is not None:
                self.nudge_session(ctx, h.peer)
        elif h.status is tr.Status.TRUSTLESS:
            self._trace(ctx, oid, h)

    def on_session_open(self, ctx: StepContext, peer: Uid) -> None:
        self.fairx_on_session_open(ctx, peer)

    def on_session_lost(self, ctx: StepContext, peer: Uid) -> None:
        """The transfers under way with ``peer`` resent (and, if it is the authority, the traces awaited), as recovery
        would resend them: a gate that pruned the session, say, decides the copy now, not at the next recovery."""
        authority = self.authority(ctx)
        for key, raw in ctx.scan(b"t:"):
            oid = key[2:]
            h = tr.Holding.decode(oid, raw)
            if h.status is tr.Status.DISABLED and h.peer == peer:
                out = tr.apply(h, tr.Event("recover", h.peer, sign=self._signer(ctx)), oid)
                self._send_all(ctx, peer, oid, out.send)
            elif h.status is tr.Status.TRUSTLESS and peer == authority:
                self._trace(ctx, oid, h)

    def _list(self, ctx: StepContext, oid: bytes | None) -> None:
        if oid is not None:
            h = holding_of(ctx, oid)
            ctx.reply(TOKENS, tokens=[] if h is None else [self._token_item(h)])
            return
        ctx.reply(TOKENS, tokens=[self._token_item(tr.Holding.decode(key[2:], raw)) for key, raw in ctx.scan(b"t:")])

    @staticmethod
    def _token_item(h: tr.Holding) -> dict[str, Any]:
        item: dict[str, Any] = {"oid": h.oid, "status": h.state}
        if h.peer is not None:
            item["peer"] = h.peer
        if h.token is not None:
            token = Token.decode(h.token)
            item["body"] = token.body
            if h.status is tr.Status.OFFERED:
                item["issuer"] = token.issuer
        if h.refused is not None:
            item["refused"] = h.refused
        return item

    # -- the transfer and trace protocol ----------------------------------------------------------
    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        if raw and raw[0] in fairx.INNER_CODES:
            self.fairx_inner(ctx, peer, raw)
            return
        code, p = tr.decode_inner(raw)
        if code == tr.SEEKED:
            self._seeked(ctx, peer, p)
            return
        if code == tr.REISSUED:
            self._reissued(ctx, peer, p)
            return
        if code in (tr.SEEKFOR, tr.REISSUE):
            raise ProtocolError("wrong_peer", "this card is not an authority")
        oid = p.get("oid")
        if oid is None:  # copy, copied, committed, aborted: find the oid by the transfer
            oid = self._oid_of(ctx, peer, code, p)
            if oid is None:
                return  # an answer about a transfer this card no longer tracks: nothing to do
        h = holding_of(ctx, oid)
        kind = {tr.COPY: "copy", tr.COPIED: "copied", tr.COMMIT: "commit", tr.COMMITTED: "committed",
                tr.ABORT: "abort", tr.ABORTED: "aborted"}[code]  # fmt: skip
        event = tr.Event(
            kind, peer, p["nonce"], token=p.get("token"), ok=p.get("ok", True),
            traceable=p.get("traceable", True), reason=p.get("reason", ""), sig=p.get("sig"),
            sign=self._signer(ctx),
        )  # fmt: skip
        if kind == "commit" and not tr.pending(h, peer, p["nonce"]):
            event = tr.Event("commit", peer, p["nonce"], ok=self._committed_before(ctx, peer, p["nonce"]))
        if kind == "copy":
            event = self._check_copy(ctx, oid, event)
            if (h is None or not tr._same(h, event)) and self._committed_before(ctx, peer, p["nonce"]):
                # A transfer this card committed before, sent again by a cloned or rolled-back sender: it happened
                # once. Taking the copy again would make a second copy of a token that has moved on since.
                self.send_inner(ctx, peer, tr.encode_inner(tr.COPIED, {"nonce": p["nonce"], "ok": True}))
                return
        out = tr.apply(h, event, oid)
        if out.committed_transfer:
            ctx.put(b"d:" + bytes(peer) + p["nonce"], oid)
        try:
            self._store(ctx, oid, out.holding)
        except CardError as exc:  # out of memory while storing a copy: the clean refusal of TRN 3.3.2
            if exc.reason != "out_of_memory" or kind != "copy":
                raise
            out = tr.Outcome(h, [(tr.COPIED, {"nonce": p["nonce"], "ok": False, "reason": "out of memory"})])
        self._send_all(ctx, peer, oid, out.send)
        if kind == "copy":
            for code, fields in out.send:  # a refused transfer is dead (its sender rolls back): a resent copy of
                # it, overtaken by the refusal, gets the same answer instead of leaving a copy nothing will commit
                if code == tr.COPIED and not fields["ok"] and ctx.get(b"n:" + bytes(peer) + p["nonce"]) is None:
                    ctx.put(b"n:" + bytes(peer) + p["nonce"], str(fields.get("reason", "refused")).encode())
        if out.holding is not None and out.holding.status is tr.Status.TRUSTLESS and kind == "commit":
            self._trace(ctx, oid, out.holding)

    def _send_all(self, ctx: StepContext, peer: Uid, oid: bytes, sends: list[tuple[int, dict[str, Any]]]) -> None:
        for code, fields in sends:
            self.send_inner(ctx, peer, tr.encode_inner(code, fields))

    @staticmethod
    def _signer(ctx: StepContext) -> tr.Signer:
        """This card's signature on a movement it commits (the statement the authority records and blames on)."""
        return lambda oid, to, nonce: ctx.sign(tr.statement_bytes(oid, ctx.card_uid, to, nonce))

    def _check_copy(self, ctx: StepContext, oid: bytes, event: tr.Event) -> tr.Event:
        """A copy must carry a well-formed token for the oid it names."""
        assert event.token is not None
        token = Token.decode(event.token)  # ProtocolError bad_token -> session.failed
        if token.oid != oid:
            raise ProtocolError("bad_token", "the token's oid does not match the transfer")
        rejected = ctx.get(b"n:" + bytes(event.peer) + event.nonce)
        if rejected is not None:  # the owner rejected this very transfer: same answer
            return replace(event, admit=rejected.decode("utf-8", "replace") or tr.REFUSED_BY_OWNER)
        # the owner's policy names issuers: checked against the token's claim now, its signature at the trace
        return replace(event, admit=self.accept_policy(ctx).verdict(token.issuer))

    def _oid_of(self, ctx: StepContext, peer: Uid, code: int, p: dict[str, Any]) -> bytes | None:
        if code == tr.COPY:
            return Token.decode(p["token"]).oid
        nonce = p["nonce"]
        hint = self._hints.get((bytes(peer), nonce)) if self._hints is not None else None
        if hint is not None:  # a volatile hint, trusted only if the card's state confirms it
            h = holding_of(ctx, hint)
            if h is not None and h.peer == peer and h.nonce == nonce:
                return hint
        for key, raw in ctx.scan(b"t:"):
            if nonce not in raw:  # cheap filter: that transfer's holding stores its nonce verbatim
                continue
            h = tr.Holding.decode(key[2:], raw)
            if h.peer == peer and h.nonce == nonce:
                return key[2:]
        return None

    def _committed_before(self, ctx: StepContext, peer: Uid, nonce: bytes) -> bool:
        return ctx.get(b"d:" + bytes(peer) + nonce) is not None

    def _store(self, ctx: StepContext, oid: bytes, h: tr.Holding | None) -> None:
        if self._watchers:
            self.notify(ctx, CHANGED, {"oid": oid, "status": GONE} if h is None else self._token_item(h))
        if h is None:
            ctx.delete(b"t:" + oid)
        else:
            ctx.put(b"t:" + oid, h.encode())
            if h.peer is not None and h.nonce is not None:  # answers name the transfer, not the oid: remember it
                if self._hints is None or len(self._hints) >= MAX_HINTS:
                    self._hints = {}
                self._hints[(bytes(h.peer), h.nonce)] = oid

    # -- trace ------------------------------------------------------------------------------------
    def _trace(self, ctx: StepContext, oid: bytes, h: tr.Holding) -> None:
        authority = ctx.get(b"a")
        if authority is None or h.peer is None or h.nonce is None or h.token is None:
            return  # no authority configured yet: the token stays trustless
        seek = {"oid": oid, "from": h.peer, "nonce": h.nonce, "token": h.token, "cert": ctx.certificate_der}
        if h.sig is not None:
            seek |= {"sig": h.sig}
        self.send_inner(ctx, Uid.from_bytes(authority), tr.encode_inner(tr.SEEKFOR, seek))

    def _seeked(self, ctx: StepContext, peer: Uid, p: dict[str, Any]) -> None:
        authority = ctx.get(b"a")
        if authority is None or Uid.from_bytes(authority) != peer:
            raise ProtocolError("wrong_peer", "a trace answer from a device that is not this card's authority")
        oid = p["oid"]
        h = holding_of(ctx, oid)
        if h is None or h.status is not tr.Status.TRUSTLESS or h.token is None:
            return
        if h.peer != p["from"] or h.nonce != p["nonce"]:
            return  # an answer about an earlier movement of this oid (duplicated or delayed): not this copy's
        ok = p["ok"]
        reason = p["reason"]
        if ok:
            try:
                issuer = pki.verified(p["issuer_cert"], ctx.roots_der, now=ctx.now, role=pki.Role.AGENT)
                token = Token.decode(h.token)
                if issuer.uid != token.issuer:
                    raise ProtocolError("bad_token", "the authority named another issuer")
                token.verify(issuer.public_key)
                key = b"ic:" + bytes(issuer.uid)  # kept: an exchange of this voucher shows its issuer's certificate
                if ctx.get(key) != p["issuer_cert"]:
                    ctx.put(key, bytes(p["issuer_cert"]))
            except (PkiError, ProtocolError, KeyError) as exc:
                ok, reason = False, f"issuer check failed: {exc}"
        out = tr.apply(h, tr.Event("traced", peer, ok=ok, reason=reason), oid)
        self._store(ctx, oid, out.holding)

    # -- reissue (agent cards) ------------------------------------------------------------------------
    def _reissue(self, ctx: StepContext, old: bytes, new: bytes | None, body: bytes | None) -> None:
        if pki.role_of(pki.cert_from_der(ctx.certificate_der)) is not pki.Role.AGENT:
            raise Refused("wrong_usage", "only a ticketing agent's card reissues tokens")
        raw = ctx.get(b"r:" + old)
        if raw is not None:
            rec = _REISSUE_REC.decode(raw)
            if new is None or new == rec["new_oid"]:
                self._reply_state(ctx, old, rec)  # a repeated command reports; recovery resends a pending request
                return
            if rec["state"] != _REFUSED:
                raise Refused(
                    "refused",
                    f"{old.hex()} is already {'being ' if rec['state'] == _PENDING else ''}reissued as "
                    f"{rec['new_oid'].hex()}: repeat the command without another new oid to see how it went",
                )
            # refused before: another new oid starts over (e.g. once the operator registered this agent)
        authority = ctx.get(b"a")
        if authority is None:
            raise Refused("no_authority", "this card has no authority yet: set it first (trn.set_authority)")
        new = new if new is not None else ctx.random(OID_BYTES)
        if new == old or holding_of(ctx, new) is not None or ctx.get(b"m:" + new) is not None:
            raise Refused("refused", f"new oid {new.hex()} already exists on this card: pick another")
        minted = ctx.get(b"m:" + old) or None
        if body is None:
            if minted is None:
                raise Refused(
                    "need_body",
                    f"this card does not remember the body of {old.hex()}: give the new token's body",
                )
            body = Token.decode(minted).body
        rec = {"new_oid": new, "state": _PENDING, "reason": "waiting for the authority", "body": body}
        ctx.put(b"r:" + old, _REISSUE_REC.encode(rec))
        ctx.put(b"m:" + new, b"")  # reserved: no mint may take the new oid meanwhile
        self._ask_reissue(ctx, old, rec)
        self._reply_state(ctx, old, rec)

    def _ask_reissue(self, ctx: StepContext, old: bytes, rec: dict[str, Any]) -> None:
        authority = ctx.get(b"a")
        if authority is None:
            return
        ask: dict[str, Any] = {"oid": old, "new_oid": rec["new_oid"], "body_hash": profile.sha256(rec["body"])}
        minted = ctx.get(b"m:" + old)
        if minted:
            ask["token"] = minted  # lets the authority check who issued an oid it never traced
        self.send_inner(ctx, Uid.from_bytes(authority), tr.encode_inner(tr.REISSUE, ask))

    def _reply_state(self, ctx: StepContext, old: bytes, rec: dict[str, Any]) -> None:
        fields = {"oid": old, "new_oid": rec["new_oid"], "state": rec["state"], "reason": rec["reason"]}
        if "holder" in rec:
            fields["holder"] = rec["holder"]
        ctx.reply(REISSUE_STATE, **fields)

    def _reissued(self, ctx: StepContext, peer: Uid, p: dict[str, Any]) -> None:
        authority = ctx.get(b"a")
        if authority is None or Uid.from_bytes(authority) != peer:
            raise ProtocolError("wrong_peer", "a reissue answer from a device that is not this card's authority")
        old, new = p["oid"], p["new_oid"]
        raw = ctx.get(b"r:" + old)
        rec = None if raw is None else _REISSUE_REC.decode(raw)
        if rec is None or rec["state"] != _PENDING or rec["new_oid"] != new:
            return  # a duplicate or late answer: already handled
        body = rec.pop("body")
        if not p["ok"] or "holder" not in p:
            ctx.delete(b"m:" + new)  # the reservation
            ctx.put(b"r:" + old, _REISSUE_REC.encode(rec | {"state": _REFUSED, "reason": p["reason"]}))
            return
        holder: Uid = p["holder"]
        self._drop_old(ctx, old)
        self._mint_token(ctx, new, body)
        note = "kept: this card is the last recorded holder"
        if holder != ctx.card_uid:
            start = tr.Event("start", holder, ctx.random(tr.TRANSFER_NONCE_BYTES), sign=self._signer(ctx))
            out = tr.apply(holding_of(ctx, new), start, new)
            self._store(ctx, new, out.holding)
            self._send_all(ctx, holder, new, out.send)
            note = "sent to the last recorded holder"
        ctx.put(b"r:" + old, _REISSUE_REC.encode(rec | {"state": _DONE, "reason": note, "holder": holder}))

    def _drop_old(self, ctx: StepContext, old: bytes) -> None:
        """The old oid is revoked: forget it as minted, and drop this card's own copy if it is still movable."""
        ctx.delete(b"m:" + old)
        h = holding_of(ctx, old)
        if h is None:
            return
        if h.status is tr.Status.ENABLED or h.state == "disabled+O":
            # (a transfer before its commit is aborted: its receiver discards the copy)
            if h.peer is not None and h.nonce is not None:
                self.send_inner(ctx, h.peer, tr.encode_inner(tr.ABORT, {"nonce": h.nonce, "oid": old}))
            self._store(ctx, old, None)


class SenderKeepsTokenApplet(TrnApplet):
    """Broken on purpose (simulator self-test): the sender forgets to disable the token it sends."""

    def _store(self, ctx: StepContext, oid: bytes, h: tr.Holding | None) -> None:
        if h is not None and h.status is tr.Status.DISABLED and h.token is not None:
            h = tr.Holding(oid, tr.Status.ENABLED, h.traceable, h.peer, h.nonce, h.token)
        super()._store(ctx, oid, h)
