"""fairx on cards: the wallet's side of the fair exchange (a mixin of the TRN wallet applet) and the TTP applet.

The wallet (:class:`ExchangeWallet`, mixed into :class:`~cardnet.applets.trn.TrnApplet`: one wallet, one set
of tokens) carries out what :mod:`cardnet.protocols.fairx` decides: it keeps each exchange's record
(``x:<n1>``), locks and unlocks the TRN holdings involved (status ``exchanging``: a token in a pending exchange
cannot be sent, and a token in a pending transfer cannot be offered), stores the voucher it gets as a TRN
receiver would (``trustless``, then traced with the authority on the giver's movement statement) and sends the
messages over its sessions. The vouchers travel sealed to the other card's key: an exchange started waits as
``xs:<n1>`` until a handshake with the other card shows its certificate (kept as ``c:<peer>`` until the offer
is made); each message to the other card or the TTP carries its sender's certificate, as in the paper.

Owner orders (privileged: from an application that verified the PIN): ``fairx.start``, ``fairx.accept``,
``fairx.reject``, ``fairx.give_up``, ``fairx.resolve``, ``fairx.abort`` (the recovery-start orders: the
application's timeouts decide when), ``fairx.list`` and ``fairx.set_ttp``. Resending what a lost message
needs is part of ``trn.recover`` (not privileged: every fairx message is idempotent).

The TTP (:class:`TtpApplet`) is an applet on a card of its own (role ``service``): it answers ``resolve`` and
``abort`` requests over its sessions, checks that the requester is a party to that exchange, decides
first-wins per exchange (``d:<xid>``, durable before the admission leaves) and signs its admissions.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cardnet.applets.sessions import SessionApplet
from cardnet.card import Card, CardError, Refused, StepContext
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.protocols import fairx as fx
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import OID_BYTES, Token
from cardnet.wire import Bytes, Field, ListOf, MType, Nested, Schema, Text, UidType, register
from cardnet.wire.cbor import dumps, loads_one
from cardnet.wire.ids import Uid

MAX_PROPOSED = 32  # offers held for the owner at once; more are refused ("busy")
KEEP_FINISHED = 16  # finished exchanges a card keeps (to answer late resends and show the owner); older go
_OID = Bytes(OID_BYTES, OID_BYTES)
_N1 = Bytes(fx.NONCE_BYTES, fx.NONCE_BYTES)
_BY_N1 = Schema("fairx.by_n1", [Field(0, "n1", _N1)])

START = register(
    0x0500,
    "fairx.start",
    "fairx",
    Schema("fairx.start", [Field(0, "give", _OID), Field(1, "want", _OID), Field(2, "to", UidType())]),
    privileged=True,
)
LIST = register(0x0501, "fairx.list", "fairx", Schema("fairx.list", []), privileged=True)
_ITEM = Schema(
    "fairx.item",
    [
        Field(0, "n1", _N1),
        Field(1, "role", Text(10)),
        Field(2, "phase", Text(10)),
        Field(3, "peer", UidType()),
        Field(4, "give", _OID),  # the voucher this card gives
        Field(5, "want", _OID),  # the voucher it gets
        Field(6, "body", Bytes(tr.MAX_TOKEN), optional=True),  # the voucher offered (responder, proposed)
        Field(7, "issuer", UidType(), optional=True),
        Field(8, "why", Text(64), optional=True),
        Field(9, "note", Text(64), optional=True),
    ],
)
STATE = register(0x0502, "fairx.state", "fairx", _ITEM)
EXCHANGES = register(
    0x0503, "fairx.exchanges", "fairx", Schema("fairx.exchanges", [Field(0, "exchanges", ListOf(Nested(_ITEM), 4096))])
)
ACCEPT = register(0x0504, "fairx.accept", "fairx", _BY_N1, privileged=True)
REJECT = register(0x0505, "fairx.reject", "fairx", _BY_N1, privileged=True)
GIVE_UP = register(0x0506, "fairx.give_up", "fairx", _BY_N1, privileged=True)
RESOLVE = register(0x0507, "fairx.resolve", "fairx", _BY_N1, privileged=True)
ABORT = register(0x0508, "fairx.abort", "fairx", _BY_N1, privileged=True)
# ``fairx.set_ttp {ttp}`` sets the TTP this card follows; without ``ttp`` it only reads it (``fairx.ttp_is``
# without ``ttp``: none set yet).
SET_TTP = register(
    0x0509,
    "fairx.set_ttp",
    "fairx",
    Schema("fairx.set_ttp", [Field(0, "ttp", UidType(), optional=True)]),
    privileged=True,
)
TTP_IS = register(0x050A, "fairx.ttp_is", "fairx", Schema("fairx.ttp_is", [Field(0, "ttp", UidType(), optional=True)]))
CHANGED = register(0x050B, "fairx.changed", "fairx", _ITEM)  # pushed to the watching applications (trn.watch)
ORDERS = (START, LIST, ACCEPT, REJECT, GIVE_UP, RESOLVE, ABORT, SET_TTP)
MAX_WATCHERS = 8  # applications a wallet pushes its changes to (volatile; the oldest goes first)
INNER_CODES = frozenset(fx.INNER)  # the fairx inner messages a wallet's sessions carry
_PENDING_START = Schema(
    "fairx.pending_start", [Field(0, "give", _OID), Field(1, "want", _OID), Field(2, "to", UidType())]
)


def _exchange(ctx: StepContext, n1: bytes) -> fx.Exchange | None:
    raw = ctx.get(b"x:" + n1)
    if raw is None:
        return None
    try:
        return fx.Exchange.decode(raw)
    except Exception as exc:  # written only by this applet: damage the store's integrity tag missed
        raise CardError("bad_state", f"the stored exchange {n1.hex()} is damaged: {exc}") from None


def _holding(ctx: StepContext, oid: bytes) -> tr.Holding | None:
    raw = ctx.get(b"t:" + oid)
    return None if raw is None else tr.Holding.decode(oid, raw)


def _peer_key(cert: bytes | None, peer: Uid, ctx: StepContext) -> profile.PublicKey:
    """``peer``'s key from its certificate ``cert``, checked against the card's CA (and the Uid it must be).

    The check is remembered while the certificates are valid (:func:`cardnet.crypto.pki.verified`): an
    exchange's every message names the same two cards.
    """
    if cert is None:
        raise ProtocolError("no_session", f"no certificate of {peer} kept: a session with it opens first")
    try:
        got = pki.verified(cert, ctx.roots_der, now=ctx.now)
    except PkiError as exc:
        raise ProtocolError(exc.reason, f"the certificate of {peer} is refused: {exc}") from None
    if got.uid != peer:
        raise ProtocolError("wrong_peer", f"the certificate kept for {peer} is {got.uid}'s")
    return got.public_key


def rewatched(watchers: list[Uid] | None, app: Uid, on: bool) -> list[Uid] | None:
    """A list of watching applications once ``app`` asked to watch (``on``) or to stop: at most
    :data:`MAX_WATCHERS`, the oldest going first; None when empty."""
    kept = [w for w in (watchers or []) if w != app]
    if on:
        kept = [*kept[-(MAX_WATCHERS - 1) :], app]
    return kept or None


def followed_ttp(card: Card) -> Uid | None:
    """The TTP ``card``'s wallet follows (``fairx.set_ttp``), read outside a step; None if none is set or the card
    has no wallet. For the host's words about a message of the card's that cannot reach its TTP: on that failure
    path only, never on the delivery path."""
    entry = card._applets.get(SET_TTP.code)  # (applet, its table, mtype): the wallet's table on this card
    raw = None if entry is None else card._read((entry[1], b"ttp"))
    return None if raw is None else Uid.from_bytes(raw)


class ExchangeWallet(SessionApplet):
    """The wallet's side of fairx (mixed into the TRN wallet applet, which provides ``_store`` and ``_trace``)."""

    # Applications that asked (``trn.watch``) to be told of every change of a token or an exchange, so that
    # none has to poll the card. Volatile, like the authenticated set: an application's port dies with its
    # connection, and after a restart the applications connect anew and ask again.
    _watchers: list[Uid] | None = None

    def watch(self, ctx: StepContext, on: bool) -> None:
        watchers = rewatched(self._watchers, ctx.src, on)

        def adopt() -> None:
            self._watchers = watchers

        ctx.after_commit(adopt)

    def notify(self, ctx: StepContext, mtype: MType, fields: dict[str, Any]) -> None:
        """Push a change to the watching applications that are still privileged (it leaves with the step)."""
        for app in self._watchers or ():
            if ctx.is_authenticated(app):
                ctx.emit(mtype, app, **fields)

    def wants_cert(self, ctx: StepContext, peer: Uid) -> bool:
        """The certificate of a card an exchange was started with: the offer's voucher is sealed to its key."""
        return any(_PENDING_START.decode(raw)["to"] == peer for _, raw in ctx.scan(b"xs:"))

    def _store(self, ctx: StepContext, oid: bytes, h: tr.Holding | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _trace(self, ctx: StepContext, oid: bytes, h: tr.Holding) -> None:  # pragma: no cover
        raise NotImplementedError

    # -- owner orders ---------------------------------------------------------------------------------
    def fairx_order(self, ctx: StepContext, code: int, params: dict[str, Any]) -> None:
        if code == START.code:
            self._start(ctx, params["give"], params["want"], params["to"])
        elif code == LIST.code:
            self._list_exchanges(ctx)
        elif code == SET_TTP.code:
            ttp: Uid | None = params.get("ttp")
            if ttp is None:  # a read
                raw = ctx.get(b"ttp")
                ctx.reply(TTP_IS, **({} if raw is None else {"ttp": Uid.from_bytes(raw)}))
                return
            if not ttp.is_card:
                raise Refused("refused", "the TTP is a card's Uid (port 0)")
            ctx.put(b"ttp", bytes(ttp))
            ctx.reply(TTP_IS, ttp=ttp)
        else:
            n1 = params["n1"]
            x = _exchange(ctx, n1)
            if x is None:
                if code == GIVE_UP.code and ctx.get(b"xs:" + n1) is not None:
                    self._give_up_pending(ctx, n1)
                    return
                raise Refused("no_exchange", f"this card has no exchange {n1.hex()} (see the exchanges it lists)")
            try:
                out = self._order(ctx, code, x)
            except ProtocolError as exc:
                raise Refused(exc.reason, str(exc)) from None
            self._carry(ctx, out)
            assert out.exchange is not None
            ctx.reply(STATE, **self._item(out.exchange, out.note))

    def _order(self, ctx: StepContext, code: int, x: fx.Exchange) -> fx.Outcome:
        if code == ACCEPT.code:
            if x.role != fx.RESPONDER or x.phase is not fx.Phase.PROPOSED:
                raise ProtocolError("refused", f"this exchange is not an offer waiting for an answer ({x.phase.value})")
            self._check_free(ctx, x.gets, "get")
            want_token = self._usable_token(ctx, x.gives)
            seal = self._sealer(ctx, x.peer, x.peer_cert)
            n2 = ctx.random(fx.NONCE_BYTES)
            issuer_cert = self._issuer_cert(ctx, want_token)
            return fx.accept(x, n2=n2, seal=seal, sign=ctx.sign, want_token=want_token, issuer_cert=issuer_cert)
        if code == REJECT.code:
            return fx.reject(x, "refused_by_owner")
        if code == GIVE_UP.code:
            return fx.give_up(x)
        self._ttp(ctx)  # resolve and abort go to the TTP: it must be known
        if code == RESOLVE.code:
            return fx.resolve(x, ctx.sign, ctx.certificate_der)
        return fx.abort(x, ctx.sign, ctx.certificate_der)

    def _start(self, ctx: StepContext, give: bytes, want: bytes, to: Uid) -> None:
        if to == ctx.card_uid:
            raise Refused("refused", f"{to} is this card itself: exchange with another card")
        if not to.is_card:
            raise Refused("refused", f"{to} is not a card (a card's Uid ends in :00000000): exchange with a card")
        if give == want:
            raise Refused("refused", "an exchange swaps two different vouchers")
        self._ttp(ctx)  # (the offer names it: no exchange without one)
        self._issuer_cert(ctx, self._usable_token(ctx, give))
        self._check_free(ctx, want, "get")
        n1 = ctx.random(fx.NONCE_BYTES)
        h = _holding(ctx, give)
        assert h is not None
        self._store(ctx, give, replace(h, status=tr.Status.EXCHANGING, peer=to, nonce=None, refused=None))
        ctx.put(b"xs:" + n1, _PENDING_START.encode({"give": give, "want": want, "to": to}))
        note = self._send_offer(ctx, n1)
        item = {"n1": n1, "role": fx.INITIATOR, "phase": fx.Phase.OFFERED.value, "peer": to}
        ctx.reply(STATE, **item, give=give, want=want, note=note)

    def _send_offer(self, ctx: StepContext, n1: bytes, *, recovering: bool = False) -> str:
        """Turn a pending start into an offer once the peer's certificate is known: kept from a handshake, or in
        an exchange with that card this card still keeps. Else a handshake shows it: one is started (or, in
        recovery, one under way too long is restarted); a start while one is under way waits for it."""
        p = _PENDING_START.decode(ctx.get(b"xs:" + n1) or b"")
        to: Uid = p["to"]
        cert = self.peer_cert(ctx, to) or self._cert_in_records(ctx, to)
        if cert is None:
            state = self.session(ctx, to)
            if recovering:
                self.nudge_session(ctx, to, rekey=True)
            elif state is None or state.open:  # (an open session did not keep it: a new handshake shows it)
                self.start_session(ctx, to)
            return "waiting for a session with the other card"
        h = _holding(ctx, p["give"])
        assert h is not None and h.token is not None
        out = fx.start(
            a=ctx.card_uid, b=to, give_token=h.token, want=p["want"], n1=n1, my_cert=ctx.certificate_der,
            peer_cert=cert, seal=self._sealer(ctx, to, cert), sign=ctx.sign,
            issuer_cert=self._issuer_cert(ctx, h.token), ttp=self._ttp(ctx),
        )  # fmt: skip
        ctx.delete(b"xs:" + n1)
        if not self.wants_cert(ctx, to):  # (the exchange keeps it; c: holds certificates still needed only)
            ctx.delete(b"c:" + bytes(to))
        self._carry(ctx, replace(out, lock=None))  # (locked when the owner started it)
        return "offered"

    @staticmethod
    def _cert_in_records(ctx: StepContext, peer: Uid) -> bytes | None:
        n1 = ctx.get(b"xc:" + bytes(peer))  # the latest exchange with that card (if still kept)
        x = None if n1 is None else _exchange(ctx, n1)
        return x.peer_cert if x is not None and x.peer == peer else None

    def _give_up_pending(self, ctx: StepContext, n1: bytes) -> None:
        p = _PENDING_START.decode(ctx.get(b"xs:" + n1) or b"")
        ctx.delete(b"xs:" + n1)
        self._unlock(ctx, p["give"])
        item = {"n1": n1, "role": fx.INITIATOR, "phase": fx.Phase.ABORTED.value, "peer": p["to"]}
        item |= {"give": p["give"], "want": p["want"], "why": "gave up", "note": "gave up"}
        ctx.reply(STATE, **item)
        if self._watchers:
            self.notify(ctx, CHANGED, item)

    def _usable_token(self, ctx: StepContext, oid: bytes) -> bytes:
        h = _holding(ctx, oid)
        if h is None or h.status is not tr.Status.ENABLED or h.token is None:
            state = "null" if h is None else h.state
            raise Refused("illegal_move", f"start is not allowed for a token in state {state}")
        if not h.traceable:
            raise Refused("refused", f"token {oid.hex()} went untraced once: only traceable tokens are exchanged")
        return h.token

    @staticmethod
    def _issuer_cert(ctx: StepContext, token: bytes) -> bytes:
        """The certificate of ``token``'s issuer, shown with it in an exchange: this card's own if it minted it,
        else the one its authority named when it traced the token here (``ic:<issuer>``)."""
        issuer = Token.decode(token).issuer
        if issuer == ctx.card_uid:
            return ctx.certificate_der
        cert = ctx.get(b"ic:" + bytes(issuer))
        if cert is None:
            raise Refused(
                "no_issuer_cert",
                f"this card has no certificate of {issuer}, the voucher's issuer: it learns it when its authority "
                "traces a voucher of that issuer here",
            )
        return cert

    @staticmethod
    def _issuer_key(ctx: StepContext) -> fx.IssuerKey:
        def key(cert: bytes, issuer: Uid) -> profile.PublicKey:
            try:
                return pki.verified(cert, ctx.roots_der, now=ctx.now, role=pki.Role.AGENT, uid=issuer).public_key
            except PkiError as exc:
                raise ProtocolError(exc.reason, f"the certificate of the voucher's issuer is refused: {exc}") from None

        return key

    def _check_free(self, ctx: StepContext, oid: bytes, what: str) -> None:
        if _holding(ctx, oid) is not None:
            raise Refused("refused", f"this card already has a copy of token {oid.hex()}, the one it would {what}")

    def _ttp(self, ctx: StepContext) -> Uid:
        raw = ctx.get(b"ttp")
        if raw is None:
            raise Refused("no_ttp", "this card has no TTP yet: set it first (fairx.set_ttp)")
        return Uid.from_bytes(raw)

    @staticmethod
    def _sealer(ctx: StepContext, peer: Uid, cert: bytes | None) -> fx.Sealer:
        key = _peer_key(cert, peer, ctx)
        return lambda pt, info: profile.hpke_seal(key, pt, info)

    # -- messages from other cards ----------------------------------------------------------------------
    def fairx_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        code, p = fx.decode_inner(raw)
        if code == fx.OFFER:
            self._offer(ctx, peer, p)
            return
        if code == fx.REQUEST:
            raise ProtocolError("wrong_peer", "this card is not a TTP")
        x = self._find(ctx, code, p)
        if x is None:
            return  # about an exchange this card does not keep: nothing to do
        if code == fx.ADMISSION:
            if peer != self._ttp(ctx):
                raise ProtocolError("wrong_peer", "an admission from a card that is not this card's TTP")
            out = fx.on_admission(x, p, ttp_key=_peer_key(p["cert"], peer, ctx))
        elif peer != x.peer:
            raise ProtocolError("wrong_peer", "a message about an exchange with another card")
        elif code == fx.AGREE:
            key = _peer_key(x.peer_cert, peer, ctx)
            out = fx.on_agree(
                x, p, b_key=key, open_=ctx.hpke_open, sign=ctx.sign, my_cert=ctx.certificate_der,
                issuer_key=self._issuer_key(ctx),
            )  # fmt: skip
        elif code == fx.CONFIRM:
            out = fx.on_confirm(x, p, a_key=_peer_key(x.peer_cert, peer, ctx))
        elif code == fx.COMMITMENT:
            out = fx.on_commitment(x, p)
        else:
            out = fx.on_refusal(x, p["reason"])
        self._carry(ctx, out)

    def _offer(self, ctx: StepContext, peer: Uid, m1: dict[str, Any]) -> None:
        n1 = m1["n1"]
        if _exchange(ctx, n1) is not None:
            return  # a duplicate (or a replay): this offer was held or answered already
        if len(ctx.scan(b"xo:")) >= MAX_PROPOSED:
            self.send_inner(ctx, peer, fx.encode_inner(fx.REFUSAL, {"n1": n1, "reason": "busy"}))
            return
        ttp = ctx.get(b"ttp")
        if not fx.same_ttp(m1, None if ttp is None else Uid.from_bytes(ttp)):  # (nothing locked here: refused)
            self.send_inner(ctx, peer, fx.encode_inner(fx.REFUSAL, {"n1": n1, "reason": fx.TTP_MISMATCH}))
            return
        a_key = _peer_key(m1["cert"], peer, ctx)
        out = fx.on_offer(
            m1, me=ctx.card_uid, peer=peer, a_key=a_key, open_=ctx.hpke_open, issuer_key=self._issuer_key(ctx)
        )
        self._carry(ctx, out)

    def _find(self, ctx: StepContext, code: int, p: dict[str, Any]) -> fx.Exchange | None:
        if code == fx.REFUSAL:
            return _exchange(ctx, p["n1"])
        n1 = ctx.get(b"xi:" + p["xid"])
        if n1 is None and code == fx.AGREE:  # the first m2 of an exchange: found by the offer it answers
            n1 = ctx.get(b"xh:" + p["m1h"])
        if n1 is None:
            return None
        return _exchange(ctx, n1)

    # -- carrying out what the protocol decided ----------------------------------------------------------
    def _carry(self, ctx: StepContext, out: fx.Outcome) -> None:
        x = out.exchange
        if x is None:
            return
        ctx.put(b"x:" + x.n1, x.encode())
        self._index(ctx, x)
        if self._watchers:
            self.notify(ctx, CHANGED, self._item(x, out.note))
        if out.lock is not None:
            h = _holding(ctx, out.lock)
            assert h is not None
            self._store(ctx, out.lock, replace(h, status=tr.Status.EXCHANGING, peer=x.peer, nonce=None))
        if out.unlock is not None:
            self._unlock(ctx, out.unlock)
        if out.drop is not None:
            self._store(ctx, out.drop, None)
        if out.receive is not None:
            r = out.receive
            got = tr.Holding(r.oid, tr.Status.TRUSTLESS, True, r.frm, r.nonce, r.token, sig=r.st)
            self._store(ctx, r.oid, got)
            self._trace(ctx, r.oid, got)
        for to, code, fields in out.send:
            dst = x.peer if to == "peer" else self._ttp(ctx)
            self.send_inner(ctx, dst, fx.encode_inner(code, fields))

    @staticmethod
    def _index(ctx: StepContext, x: fx.Exchange) -> None:
        """Keep the record findable by what later messages name (``xh:<h(m1)>`` until m2, ``xi:<xid>`` after), and
        by what the card looks up itself (``xo:<n1>``: offers waiting for the owner; ``xc:<peer>``: the latest
        exchange with a card, whose certificate a new start reuses), and keep only the :data:`KEEP_FINISHED`
        latest finished exchanges (``xf``: their n1s, oldest first).

        Dropping a finished record is safe: a late copy of its messages then finds nothing and is ignored (a
        replayed m1 becomes a new offer, whose voucher this card can only get by a new m3 or admission, which
        name a new xid); a peer still waiting for this card's last message gets its answer from the TTP.
        """
        if ctx.get(b"xc:" + bytes(x.peer)) != x.n1:
            ctx.put(b"xc:" + bytes(x.peer), x.n1)
        if x.phase is fx.Phase.PROPOSED:
            ctx.put(b"xo:" + x.n1, b"")
        else:
            ctx.delete(b"xo:" + x.n1)
        xid = x.xid
        if x.role == fx.INITIATOR and xid is None:
            key = b"xh:" + fx.offer_hash(x.m1)
            if ctx.get(key) is None:
                ctx.put(key, x.n1)
        elif xid is not None and ctx.get(b"xi:" + xid) is None:
            ctx.put(b"xi:" + xid, x.n1)
            if x.role == fx.INITIATOR:
                ctx.delete(b"xh:" + fx.offer_hash(x.m1))
        if x.phase not in fx.FINISHED and x.phase is not fx.Phase.GAVE_UP:
            # (an initiator that gave up has its voucher back for good: its record is done with too, even while it
            # still asks the TTP to abort for a late m2; kept forever, given-up offers filled a card after ~80)
            return
        raw = ctx.get(b"xf")
        done = [] if raw is None else [raw[i : i + fx.NONCE_BYTES] for i in range(0, len(raw), fx.NONCE_BYTES)]
        if x.n1 in done:
            return
        done.append(x.n1)
        while len(done) > KEEP_FINISHED:
            gone = _exchange(ctx, done.pop(0))
            if gone is not None:
                ExchangeWallet._forget(ctx, gone)
        ctx.put(b"xf", b"".join(done))

    @staticmethod
    def _forget(ctx: StepContext, x: fx.Exchange) -> None:
        ctx.delete(b"x:" + x.n1)
        ctx.delete(b"xh:" + fx.offer_hash(x.m1))
        if x.xid is not None:
            ctx.delete(b"xi:" + x.xid)
        ctx.delete(b"xo:" + x.n1)
        if ctx.get(b"xc:" + bytes(x.peer)) == x.n1:
            ctx.delete(b"xc:" + bytes(x.peer))

    def _unlock(self, ctx: StepContext, oid: bytes) -> None:
        h = _holding(ctx, oid)
        if h is not None and h.status is tr.Status.EXCHANGING:
            self._store(ctx, oid, replace(h, status=tr.Status.ENABLED, peer=None, nonce=None))

    # -- recovery and listing ------------------------------------------------------------------------------
    def fairx_recover(self, ctx: StepContext) -> None:
        """Resend what each unfinished exchange waits for (every fairx message is idempotent)."""
        for key, _ in ctx.scan(b"xs:"):
            self._send_offer(ctx, key[3:], recovering=True)
        ttp = ctx.get(b"ttp")
        for _, raw in ctx.scan(b"x:"):
            x = fx.Exchange.decode(raw)
            sends: list[tuple[Uid, int, dict[str, Any]]] = []
            if x.phase is fx.Phase.OFFERED:
                sends.append((x.peer, fx.OFFER, x.offer))
            elif x.phase is fx.Phase.AGREED and x.m2 is not None:
                sends.append((x.peer, fx.AGREE, fx.AGREE_SCHEMA.decode(x.m2)))
            elif x.phase is fx.Phase.CONFIRMED and x.xid is not None and x.st_out is not None:
                m3 = {"xid": x.xid, "st": x.st_out, "sig": ctx.sign(fx.confirm_bytes(x.xid, fx.offer_hash(x.m1)))}
                sends.append((x.peer, fx.CONFIRM, m3))
            elif ttp is not None and (x.phase in fx.WAITING_FOR_TTP or (x.phase is fx.Phase.GAVE_UP and x.m2)):
                kind = fx.RESOLVED if x.phase is fx.Phase.RESOLVING else fx.ABORTED
                request = fx.request(x, kind, ctx.sign, ctx.certificate_der)
                sends.append((Uid.from_bytes(ttp), fx.REQUEST, request))
            for dst, code, fields in sends:
                self.send_inner(ctx, dst, fx.encode_inner(code, fields))

    def _list_exchanges(self, ctx: StepContext) -> None:
        items = [self._item(fx.Exchange.decode(raw)) for _, raw in ctx.scan(b"x:")]
        for key, raw in ctx.scan(b"xs:"):
            p = _PENDING_START.decode(raw)
            items.append(
                {"n1": key[3:], "role": fx.INITIATOR, "phase": fx.Phase.OFFERED.value, "peer": p["to"],
                 "give": p["give"], "want": p["want"], "note": "waiting for a session with the other card"}
            )  # fmt: skip
        ctx.reply(EXCHANGES, exchanges=items)

    @staticmethod
    def _item(x: fx.Exchange, note: str = "") -> dict[str, Any]:
        item: dict[str, Any] = {
            "n1": x.n1, "role": x.role, "phase": x.phase.value, "peer": x.peer, "give": x.gives, "want": x.gets,
        }  # fmt: skip
        if x.phase is fx.Phase.PROPOSED and x.token_in is not None:
            token = Token.decode(x.token_in)
            item |= {"body": token.body, "issuer": token.issuer}
        if x.why:
            item["why"] = x.why
        if note:
            item["note"] = note[:64]
        return item

    def fairx_on_session_open(self, ctx: StepContext, peer: Uid) -> None:
        """Exchanges started before the peer's certificate was known go out now."""
        for key, raw in ctx.scan(b"xs:"):
            if _PENDING_START.decode(raw)["to"] == peer:
                self._send_offer(ctx, key[3:])


class TtpApplet(SessionApplet):
    """The TTP of fair exchanges: first-wins decisions per exchange, signed admissions (TENeT appendix)."""

    name = "ttp"

    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        code, p = fx.decode_inner(raw)
        if code != fx.REQUEST:
            raise ProtocolError("wrong_peer", "a TTP answers resolve and abort requests only")
        req = fx.parse_request(p)
        if peer not in (req.a, req.b):
            raise ProtocolError("not_a_party", f"{peer} is not a party to exchange {req.xid.hex()}")
        other = req.b if peer == req.a else req.a
        other_key = _peer_key(p["peer_cert"], other, ctx)
        mine = _peer_key(p["cert"], peer, ctx)
        a_key, b_key = (mine, other_key) if peer == req.a else (other_key, mine)
        raw_prior = ctx.get(b"d:" + req.xid)
        prior = None
        if raw_prior is not None:
            kept = loads_one(raw_prior)
            assert isinstance(kept, list) and len(kept) == 2
            prior = (str(kept[0]), bytes(kept[1]) or None)
        decision, adm = fx.ttp_decide(
            req, requester=peer, a_key=a_key, b_key=b_key, prior=prior, sign=ctx.sign, my_cert=ctx.certificate_der,
            me=ctx.card_uid,
        )  # fmt: skip
        if prior is None:
            ctx.put(b"d:" + req.xid, dumps([decision[0], decision[1] or b""]))
        self.send_inner(ctx, peer, fx.encode_inner(fx.ADMISSION, adm))
