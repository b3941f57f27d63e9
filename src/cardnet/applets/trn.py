"""The TRN wallet applet: holds tokens and moves them with the 2PC transfer and the trace.

Owner commands (privileged: from an application that verified the PIN):
``trn.mint`` (agent cards only), ``trn.send``, ``trn.cancel``, ``trn.list``,
``trn.set_authority``. ``trn.recover`` is not privileged: resending is
harmless (every TRN message is idempotent), so the host can drive recovery
on its own timer. ``trn.blocklist`` delivers an authority-signed blocklist.

State: ``t:<oid>`` the holding (:class:`~cardnet.protocols.transfer.Holding`),
``d:<peer><nonce>`` transfers this card committed as receiver, ``a`` the
authority's Uid, plus the session state of :class:`SessionApplet`.
"""

from __future__ import annotations

from typing import Any

from cardnet.applets.sessions import SessionApplet
from cardnet.card import CardError, Refused, StepContext
from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.protocols import transfer as tr
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.token import MAX_BODY, OID_BYTES, Token, mint
from cardnet.wire import Bool, Bytes, Field, ListOf, Message, Nested, Schema, Text, UidType, register
from cardnet.wire.ids import Uid

_OID = Bytes(OID_BYTES, OID_BYTES)
MINT = register(
    0x0310,
    "trn.mint",
    "transfer",
    Schema("trn.mint", [Field(0, "oid", _OID), Field(1, "body", Bytes(MAX_BODY))]),
    privileged=True,
)
SEND = register(
    0x0311,
    "trn.send",
    "transfer",
    Schema(
        "trn.send", [Field(0, "oid", _OID), Field(1, "to", UidType()), Field(2, "traceable", Bool(), optional=True)]
    ),
    privileged=True,
)
CANCEL = register(0x0312, "trn.cancel", "transfer", Schema("trn.cancel", [Field(0, "oid", _OID)]), privileged=True)
RECOVER = register(0x0313, "trn.recover", "transfer", Schema("trn.recover", []))
LIST = register(0x0314, "trn.list", "transfer", Schema("trn.list", []), privileged=True)
SET_AUTHORITY = register(
    0x0315,
    "trn.set_authority",
    "transfer",
    Schema("trn.set_authority", [Field(0, "authority", UidType())]),
    privileged=True,
)
BLOCKLIST = register(
    0x0316, "trn.blocklist", "transfer", Schema("trn.blocklist", [Field(0, "blocklist", Bytes(1 << 20))])
)
RESULT = register(
    0x0317,
    "trn.result",
    "transfer",
    Schema("trn.result", [Field(0, "ok", Bool()), Field(1, "reason", Text(200)), Field(2, "oid", _OID, optional=True)]),
)
_ITEM = Schema(
    "trn.token_item",
    [
        Field(0, "oid", _OID),
        Field(1, "status", Text(24)),
        Field(2, "peer", UidType(), optional=True),
        Field(3, "body", Bytes(MAX_BODY), optional=True),
    ],
)
TOKENS = register(
    0x0318, "trn.tokens", "transfer", Schema("trn.tokens", [Field(0, "tokens", ListOf(Nested(_ITEM), 4096))])
)


def holding_of(ctx: StepContext, oid: bytes) -> tr.Holding | None:
    raw = ctx.get(b"t:" + oid)
    return None if raw is None else tr.Holding.decode(oid, raw)


class TrnApplet(SessionApplet):
    name = "trn"
    handles = (*SessionApplet.handles, MINT, SEND, CANCEL, RECOVER, LIST, SET_AUTHORITY, BLOCKLIST)

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
            self._recover(ctx)
        elif code == LIST.code:
            self._list(ctx)
        elif code == MINT.code:
            self._mint(ctx, params["oid"], params["body"])
        elif code == SET_AUTHORITY.code:
            ctx.put(b"a", bytes(params["authority"]))
            ctx.reply(RESULT, ok=True, reason="authority set")
        else:
            self.accept_blocklist(ctx, params["blocklist"])

    def _command(self, ctx: StepContext, oid: bytes, kind: str, peer: Uid, traceable: bool) -> None:
        if kind == "start" and (not peer.is_card or peer == ctx.card_uid):
            raise Refused("refused", "send a token to another card (a Uid with port 0)")
        h = holding_of(ctx, oid)
        nonce = ctx.random(tr.TRANSFER_NONCE_BYTES) if kind == "start" else b""
        try:
            out = tr.apply(h, tr.Event(kind, peer, nonce, traceable=traceable), oid)
        except ProtocolError as exc:
            raise Refused(exc.reason, str(exc)) from None
        self._store(ctx, oid, out.holding)
        for code, fields in out.send:
            self.send_inner(ctx, peer, tr.encode_inner(code, fields))
        ctx.reply(RESULT, ok=True, reason=out.note or kind, oid=oid)

    def _mint(self, ctx: StepContext, oid: bytes, body: bytes) -> None:
        role = pki.role_of(pki.cert_from_der(ctx.certificate_der))
        if role is not pki.Role.AGENT:
            raise Refused("wrong_usage", "only a ticketing agent's card mints tokens")
        if holding_of(ctx, oid) is not None:
            raise Refused("refused", f"oid {oid.hex()} already exists on this card")
        token = mint(oid, ctx.card_uid, body, ctx.sign)
        self._store(ctx, oid, tr.Holding(oid, tr.Status.ENABLED, token=token.encode()))
        ctx.reply(RESULT, ok=True, reason="minted", oid=oid)

    def _recover(self, ctx: StepContext) -> None:
        for key, raw in ctx.scan(b"t:"):
            oid = key[2:]
            h = tr.Holding.decode(oid, raw)
            if h.status is tr.Status.DISABLED and h.peer is not None:
                out = tr.apply(h, tr.Event("recover", h.peer), oid)
                for code, fields in out.send:
                    self.send_inner(ctx, h.peer, tr.encode_inner(code, fields))
            elif h.status is tr.Status.TRUSTLESS:
                self._trace(ctx, oid, h)
        self.restart_sessions(ctx)

    def _list(self, ctx: StepContext) -> None:
        items = []
        for key, raw in ctx.scan(b"t:"):
            h = tr.Holding.decode(key[2:], raw)
            item: dict[str, Any] = {"oid": h.oid, "status": h.state}
            if h.peer is not None:
                item["peer"] = h.peer
            if h.token is not None:
                item["body"] = Token.decode(h.token).body
            items.append(item)
        ctx.reply(TOKENS, tokens=items)

    # -- the transfer and trace protocol ----------------------------------------------------------
    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        code, p = tr.decode_inner(raw)
        if code == tr.SEEKED:
            self._seeked(ctx, peer, p)
            return
        if code == tr.SEEKFOR:
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
            traceable=p.get("traceable", True), reason=p.get("reason", ""),
        )  # fmt: skip
        if kind == "commit" and (h is None or h.state != "trustless_disabled" or not tr._same(h, event)):
            event = tr.Event("commit", peer, p["nonce"], ok=self._committed_before(ctx, peer, p["nonce"]))
        if kind == "copy":
            event = self._check_copy(ctx, oid, event)
        out = tr.apply(h, event, oid)
        if out.committed_transfer:
            ctx.put(b"d:" + bytes(peer) + p["nonce"], oid)
        try:
            self._store(ctx, oid, out.holding)
        except CardError as exc:  # out of memory while storing a copy: the clean refusal of TRN 3.3.2
            if exc.reason != "out_of_memory" or kind != "copy":
                raise
            out = tr.Outcome(h, [(tr.COPIED, {"nonce": p["nonce"], "ok": False, "reason": "out of memory"})])
        for c, fields in out.send:
            self.send_inner(ctx, peer, tr.encode_inner(c, fields))
        if out.holding is not None and out.holding.status is tr.Status.TRUSTLESS and kind == "commit":
            self._trace(ctx, oid, out.holding)

    def _check_copy(self, ctx: StepContext, oid: bytes, event: tr.Event) -> tr.Event:
        """A copy must carry a well-formed token for the oid it names."""
        assert event.token is not None
        token = Token.decode(event.token)  # ProtocolError bad_token -> session.failed
        if token.oid != oid:
            raise ProtocolError("bad_token", "the token's oid does not match the transfer")
        return event

    def _oid_of(self, ctx: StepContext, peer: Uid, code: int, p: dict[str, Any]) -> bytes | None:
        if code == tr.COPY:
            return Token.decode(p["token"]).oid
        for key, raw in ctx.scan(b"t:"):
            h = tr.Holding.decode(key[2:], raw)
            if h.peer == peer and h.nonce == p["nonce"]:
                return key[2:]
        return None

    def _committed_before(self, ctx: StepContext, peer: Uid, nonce: bytes) -> bool:
        return ctx.get(b"d:" + bytes(peer) + nonce) is not None

    def _store(self, ctx: StepContext, oid: bytes, h: tr.Holding | None) -> None:
        if h is None:
            ctx.delete(b"t:" + oid)
        else:
            ctx.put(b"t:" + oid, h.encode())

    # -- trace ------------------------------------------------------------------------------------
    def _trace(self, ctx: StepContext, oid: bytes, h: tr.Holding) -> None:
        authority = ctx.get(b"a")
        if authority is None or h.peer is None or h.nonce is None or h.token is None:
            return  # no authority configured yet: the token stays trustless
        seek = {"oid": oid, "from": h.peer, "nonce": h.nonce, "token": h.token}
        self.send_inner(ctx, Uid.from_bytes(authority), tr.encode_inner(tr.SEEKFOR, seek))

    def _seeked(self, ctx: StepContext, peer: Uid, p: dict[str, Any]) -> None:
        authority = ctx.get(b"a")
        if authority is None or Uid.from_bytes(authority) != peer:
            raise ProtocolError("wrong_peer", "a trace answer from a device that is not this card's authority")
        oid = p["oid"]
        h = holding_of(ctx, oid)
        if h is None or h.status is not tr.Status.TRUSTLESS or h.token is None:
            return
        ok = p["ok"]
        reason = p["reason"]
        if ok:
            try:
                cert = pki.cert_from_der(p["issuer_cert"])
                issuer = pki.verify_chain(
                    [cert], [pki.cert_from_der(r) for r in ctx.roots_der], now=ctx.now, role=pki.Role.AGENT
                )
                token = Token.decode(h.token)
                if issuer.uid != token.issuer:
                    raise ProtocolError("bad_token", "the authority named another issuer")
                token.verify(issuer.public_key)
            except (PkiError, ProtocolError, KeyError) as exc:
                ok, reason = False, f"issuer check failed: {exc}"
        out = tr.apply(h, tr.Event("traced", peer, ok=ok, reason=reason), oid)
        self._store(ctx, oid, out.holding)


class SenderKeepsTokenApplet(TrnApplet):
    """Broken on purpose (simulator self-test): the sender forgets to disable the token it sends."""

    def _store(self, ctx: StepContext, oid: bytes, h: tr.Holding | None) -> None:
        if h is not None and h.status is tr.Status.DISABLED and h.token is not None:
            h = tr.Holding(oid, tr.Status.ENABLED, h.traceable, h.peer, h.nonce, h.token)
        super()._store(ctx, oid, h)
