"""The authority applet: the trace registry on the authority's own service card.

Cards open TRN sessions with the authority and send ``seekfor``; the applet
checks the token's issuer (agents are registered by the operator), records the
movement if it extends the chain (:mod:`cardnet.protocols.trn.trace`), blocks the
sender of a branch, and answers ``seeked`` with the issuer's certificate. The
authority service signs blocklists with the CA and feeds them back with
``trn.blocklist``; the applet then hands them to every card it meets.

Operator commands (privileged): ``auth.add_agent {cert}``, ``auth.revoke
{oid}``, ``auth.query {oid}`` -> ``auth.chain``, ``auth.blocked_list`` ->
``auth.blocked`` (the blocked Uids and the epoch of the blocklist the card holds),
``auth.graph_q {oid?, at?, start?}`` -> ``auth.graph`` (one bounded page of the
movement graph, or of one token's: chains with their transfer ids, the
branches that blocked their signers, the suspects, the roles of the devices
named; ``next``/``next_start`` resume it; the trace view draws it).

Reissue: an issuing agent's card sends ``reissue {oid, new_oid, body_hash,
token?}`` over its session; the applet judges it (:func:`trace.decide_reissue`),
and if granted durably revokes the old oid, records the new oid's issuer and
the holder and body hash it is destined for, and answers ``reissued`` with that
holder. A resend gets the same answer.

State: ``agent:<uid>`` certificates, each token's chain (:mod:`cardnet.applets.authority_chain`:
``chain:<oid>`` its issuer and length, ``move:<oid><index>`` each movement with its sender's signed
statement, ``mvn:<oid><nonce>`` the movements by transfer nonce), ``revoked:<oid>``, ``blocked:<uid>`` (with
the statements that convict it), ``cert:<uid>`` the certificate each card
presented in its own seekfor (to check its statements when it sends on),
``suspect:<uid>`` (the last refused unproven
claim of that receiver), ``reissued:<old oid>`` and
``dest:<new oid>`` (the reissue, by either oid).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from cardnet.applets import authority_chain
from cardnet.applets.sessions import SessionApplet
from cardnet.applets.trn import BLOCKLIST, RESULT
from cardnet.card import Refused, StepContext
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn import trace
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import OID_BYTES, Token
from cardnet.wire import Bool, Bytes, Field, ListOf, Message, Nested, Schema, Text, UidType, UInt, register
from cardnet.wire.cbor import dumps, loads_one
from cardnet.wire.ids import Uid

_OID = Bytes(OID_BYTES, OID_BYTES)
ADD_AGENT = register(
    0x0330, "auth.add_agent", "trn", Schema("auth.add_agent", [Field(0, "cert", Bytes(8192))]), privileged=True
)
REVOKE = register(0x0331, "auth.revoke", "trn", Schema("auth.revoke", [Field(0, "oid", _OID)]), privileged=True)
QUERY = register(0x0332, "auth.query", "trn", Schema("auth.query", [Field(0, "oid", _OID)]), privileged=True)
CHAIN = register(
    0x0333,
    "auth.chain",
    "trn",
    Schema(
        "auth.chain",
        [
            Field(0, "oid", _OID),
            Field(1, "issuer", UidType(), optional=True),
            Field(2, "holders", ListOf(UidType(), 100_000)),
            Field(3, "revoked", Bytes(1), optional=True),
            Field(4, "reissued_as", _OID, optional=True),
        ],
    ),
)
BLOCKED_LIST = register(0x0334, "auth.blocked_list", "trn", Schema("auth.blocked_list", []), privileged=True)
BLOCKED = register(
    0x0335,
    "auth.blocked",
    "trn",
    Schema(
        "auth.blocked",
        [
            Field(0, "uids", ListOf(UidType(), 65536)),
            Field(1, "epoch", UInt(), optional=True),
            # claimants of refused unsigned/forged movement claims: reported to the operator, not blocked
            Field(2, "suspects", ListOf(UidType(), 65536), optional=True),
        ],
    ),
)

# The movement graph, a bounded page at a time (the reply is emitted through the card's outbox, within its capacity).
GRAPH_PAGE_BYTES = 8192  # an estimate of one page's param size; a page holds at least one item
MAX_EVIDENCE = 8  # a branch's signed statements sent (the last ones; the refused claim last)
_KEY = Bytes(64)
_MOVE = Schema("auth.move", [Field(0, "from", UidType()), Field(1, "to", UidType()), Field(2, "nonce", Bytes(64))])
_PART = Schema(
    "auth.chain_part",
    [
        Field(0, "oid", _OID),
        Field(1, "issuer", UidType()),
        Field(2, "start", UInt()),  # the chain index of ``moves[0]`` (a long chain comes in several parts)
        Field(3, "moves", ListOf(Nested(_MOVE), 256)),
        Field(4, "total", UInt()),  # the chain's length
        Field(5, "revoked", Bool(), optional=True),
        Field(6, "reissued_as", _OID, optional=True),
        Field(7, "reissue_of", _OID, optional=True),
    ],
)
_BRANCH = Schema(
    "auth.branch",
    [
        Field(0, "signer", UidType()),
        Field(1, "oid", _OID),
        Field(2, "moves", ListOf(Nested(_MOVE), MAX_EVIDENCE)),  # its signed statements, the refused claim last
        Field(3, "evidence", UInt()),  # how many statements convict it (``moves`` are the last of them)
    ],
)
_SUSPECT = Schema("auth.suspect", [Field(0, "uid", UidType()), Field(1, "oid", _OID), Field(2, "reason", Text(256))])
_ROLE = Schema("auth.role", [Field(0, "uid", UidType()), Field(1, "role", Text(16))])
GRAPH_Q = register(
    0x0336,
    "auth.graph_q",
    "trn",
    Schema(
        "auth.graph_q",
        [
            Field(0, "oid", _OID, optional=True),  # only this token's chain, branches and suspects
            Field(1, "at", _KEY, optional=True),  # resume at this key (a previous page's ``next``)
            Field(2, "start", UInt(), optional=True),  # ... at this movement of its chain (``next_start``)
        ],
    ),
    privileged=True,
)
GRAPH = register(
    0x0337,
    "auth.graph",
    "trn",
    Schema(
        "auth.graph",
        [
            Field(0, "authority", UidType()),
            Field(1, "chains", ListOf(Nested(_PART), 256)),
            Field(2, "branches", ListOf(Nested(_BRANCH), 256)),
            Field(3, "suspects", ListOf(Nested(_SUSPECT), 256)),
            Field(4, "roles", ListOf(Nested(_ROLE), 1024)),
            Field(5, "next", _KEY, optional=True),  # more follows: ask again with ``at``/``start``
            Field(6, "next_start", UInt(), optional=True),
        ],
    ),
)


def _chain(ctx: StepContext, oid: bytes) -> tuple[Uid | None, authority_chain.StoredChain | None]:
    """The issuer and the chain recorded for ``oid`` (None, None: nothing recorded)."""
    chain = authority_chain.load(ctx.get, oid)
    return (None, None) if chain is None else (chain.issuer, chain)


class _Blocked:
    """``uid in blocked``: one lookup of ``blocked:<uid>`` (a trace reads no list of every blocked device)."""

    __slots__ = ("_get",)

    def __init__(self, ctx: StepContext) -> None:
        self._get = ctx.get

    def __contains__(self, who: object) -> bool:
        return isinstance(who, Uid) and self._get(b"blocked:" + who.raw) is not None


def _reissue_of(raw: bytes | None) -> trace.Reissue | None:
    if raw is None:
        return None
    data = loads_one(raw)
    assert isinstance(data, list)
    old, new, holder, body_hash = data
    return trace.Reissue(bytes(old), bytes(new), Uid.from_bytes(holder), bytes(body_hash))


def _encode_reissue(r: trace.Reissue) -> bytes:
    return dumps([r.old, r.new, bytes(r.holder), r.body_hash])


class AuthorityApplet(SessionApplet):
    name = "authority"
    handles = (*SessionApplet.handles, ADD_AGENT, REVOKE, QUERY, BLOCKED_LIST, GRAPH_Q, BLOCKLIST)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        if code in (c.code for c in SessionApplet.handles):
            super().handle(ctx, msg, params)
        elif code == ADD_AGENT.code:
            self._add_agent(ctx, params["cert"])
        elif code == REVOKE.code:
            ctx.put(b"revoked:" + params["oid"], b"\x01")
            ctx.reply(RESULT, ok=True, reason="revoked", oid=params["oid"])
        elif code == QUERY.code:
            issuer, chain = _chain(ctx, params["oid"])
            moves = [] if chain is None else chain.span(0, len(chain))
            fields: dict[str, Any] = {"oid": params["oid"], "holders": [m.to for m in moves]}
            if issuer is not None:
                fields["issuer"] = issuer
            if ctx.get(b"revoked:" + params["oid"]) is not None:
                fields["revoked"] = b"\x01"
            reissue = _reissue_of(ctx.get(b"reissued:" + params["oid"]))
            if reissue is not None:
                fields["reissued_as"] = reissue.new
            ctx.reply(CHAIN, **fields)
        elif code == BLOCKED_LIST.code:
            bl = self.blocklist(ctx)  # the epoch it holds: a restarted signer must sign above it
            ctx.reply(
                BLOCKED, uids=[Uid.from_bytes(k[8:]) for k, _ in ctx.scan(b"blocked:")], epoch=bl.epoch if bl else 0,
                suspects=[Uid.from_bytes(k[8:]) for k, _ in ctx.scan(b"suspect:")],
            )  # fmt: skip
        elif code == GRAPH_Q.code:
            ctx.reply(GRAPH, **_graph_page(ctx, params.get("oid"), params.get("at", b""), params.get("start", 0)))
        else:
            self.accept_blocklist(ctx, params["blocklist"])

    def _add_agent(self, ctx: StepContext, cert_der: bytes) -> None:
        try:
            agent = pki.verify_chain(
                [pki.cert_from_der(cert_der)], [pki.cert_from_der(r) for r in ctx.roots_der], now=ctx.now,
                role=pki.Role.AGENT,
            )  # fmt: skip
        except PkiError as exc:
            raise Refused(exc.reason, f"not an agent certificate of this CA: {exc}") from None
        ctx.put(b"agent:" + bytes(agent.uid), cert_der)
        ctx.reply(RESULT, ok=True, reason=f"agent {agent.uid} registered")

    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        code, p = tr.decode_inner(raw)
        if code == tr.REISSUE:
            self._reissue(ctx, peer, p)
            return
        if code != tr.SEEKFOR:
            raise ProtocolError("wrong_peer", f"the authority takes only seekfor and reissue, not {tr.NAMES[code]}")
        oid = p["oid"]
        verdict, cert = self._judge(ctx, peer, p)
        for uid in verdict.block:  # with the signed statements that convict it
            evidence = [authority_chain.movement_cbor(m) for m in verdict.evidence]
            ctx.put(b"blocked:" + bytes(uid), dumps(["branch", oid, evidence]))
        if verdict.suspect is not None:  # recorded and reported (auth.blocked), never blocked on its own
            ctx.put(b"suspect:" + bytes(verdict.suspect), dumps([verdict.reason[:200], oid]))
        reply: dict[str, Any] = {
            "oid": oid, "ok": verdict.ok, "reason": verdict.reason[:200], "from": p["from"], "nonce": p["nonce"],
        }  # fmt: skip
        if verdict.ok and cert is not None:
            reply["issuer_cert"] = cert
        self.send_inner(ctx, peer, tr.encode_inner(tr.SEEKED, reply))

    def _judge(self, ctx: StepContext, peer: Uid, p: dict[str, Any]) -> tuple[trace.Verdict, bytes | None]:
        oid = p["oid"]
        try:
            token = Token.decode(p["token"])
        except ProtocolError as exc:
            return trace.Verdict(False, str(exc)), None
        if token.oid != oid:
            return trace.Verdict(False, "the token does not carry this oid"), None
        cert = ctx.get(b"agent:" + bytes(token.issuer))
        if cert is None:
            return trace.Verdict(False, f"unknown issuer {token.issuer}"), None
        try:
            token.verify(pki.cert_from_der(cert).public_key())  # type: ignore[arg-type]
        except ProtocolError as exc:
            return trace.Verdict(False, f"forged or altered token: {exc}"), None
        _, chain = _chain(ctx, oid)
        blocked = self._blocked(ctx)
        claim = trace.Movement(p["from"], peer, p["nonce"], p.get("sig", b""))
        roots, now = ctx.roots_der, ctx.now
        known = ctx.get(b"cert:" + bytes(peer.card_uid()))
        if "cert" in p and p["cert"] != known and trace.certifies(p["cert"], peer, roots, now):
            ctx.put(b"cert:" + bytes(peer.card_uid()), p["cert"])  # to check this card's own statements later
        reissue = _reissue_of(ctx.get(b"dest:" + oid))
        destined = None
        if reissue is not None:
            if profile.sha256(token.body) != reissue.body_hash:
                return trace.Verdict(False, "the body differs from the one declared when this oid was reissued"), None
            destined = reissue.holder if reissue.holder != token.issuer else None
        verdict = trace.decide(
            chain or (), claim, token.issuer, revoked=ctx.get(b"revoked:" + oid) is not None, blocked=blocked,
            destined=destined, unproven=trace.check_statement(oid, claim, self._cert_of(ctx, claim.frm)),
        )  # fmt: skip
        if verdict.record is not None:
            authority_chain.append(ctx, oid, token.issuer, chain, verdict.record)
        return verdict, cert

    def _cert_of(self, ctx: StepContext, sender: Uid) -> bytes | None:
        """The sender's certificate: a registered agent's, or the one the sender presented when it traced."""
        return ctx.get(b"agent:" + bytes(sender)) or ctx.get(b"cert:" + bytes(sender.card_uid()))

    def _blocked(self, ctx: StepContext) -> Container[Uid]:
        return _Blocked(ctx)

    # -- reissue -------------------------------------------------------------------------------
    def _reissue(self, ctx: StepContext, peer: Uid, p: dict[str, Any]) -> None:
        old, new = p["oid"], p["new_oid"]
        request = trace.Reissue(old, new, peer, p["body_hash"])
        issuer, chain = _chain(ctx, old)
        refusal = None
        if ctx.get(b"agent:" + bytes(peer)) is None:
            refusal = f"{peer} is not a registered agent (auth.add_agent)"
        elif issuer is None and "token" in p:
            issuer, refusal = self._minted_by(ctx, old, p["token"])
        if refusal is not None:
            verdict = trace.ReissueVerdict(False, refusal)
        else:
            in_use = any(ctx.get(k + new) is not None for k in (b"chain:", b"revoked:", b"reissued:", b"dest:"))
            verdict = trace.decide_reissue(
                request, peer, issuer=issuer, chain=chain or (), revoked=ctx.get(b"revoked:" + old) is not None,
                previous=_reissue_of(ctx.get(b"reissued:" + old)), new_in_use=in_use, blocked=self._blocked(ctx),
            )  # fmt: skip
        grant = verdict.grant
        if grant is not None and not verdict.again:
            assert issuer is not None
            ctx.put(b"revoked:" + old, b"\x01")
            ctx.put(b"reissued:" + old, _encode_reissue(grant))
            ctx.put(b"dest:" + new, _encode_reissue(grant))
            authority_chain.start(ctx, new, issuer)
            if not chain:  # (an oid it never traced: remember its issuer too)
                authority_chain.start(ctx, old, issuer)
        reply: dict[str, Any] = {"oid": old, "new_oid": new, "ok": verdict.ok, "reason": verdict.reason[:200]}
        if grant is not None:
            reply["holder"] = grant.holder
        self.send_inner(ctx, peer, tr.encode_inner(tr.REISSUED, reply))

    def _minted_by(self, ctx: StepContext, oid: bytes, raw: bytes) -> tuple[Uid | None, str | None]:
        """The issuer of a never-traced oid, from the minted token its agent presents (checked)."""
        try:
            token = Token.decode(raw)
        except ProtocolError as exc:
            return None, str(exc)
        cert = ctx.get(b"agent:" + bytes(token.issuer))
        if token.oid != oid or cert is None:
            return None, "the presented token is not a registered agent's token for this oid"
        try:
            token.verify(pki.cert_from_der(cert).public_key())  # type: ignore[arg-type]
        except ProtocolError as exc:
            return None, f"forged or altered token: {exc}"
        return token.issuer, None


# -- the movement graph, page by page (auth.graph_q) ------------------------------------------------------------
def _graph_items(ctx: StepContext, only: bytes | None) -> list[tuple[bytes, bytes]]:
    """The entries a graph is drawn from, in key order: ``blocked:``, ``chain:``, ``suspect:`` (of ``only``)."""
    if only is None:
        return [*ctx.scan(b"blocked:"), *ctx.scan(b"chain:"), *ctx.scan(b"suspect:")]
    raw = ctx.get(b"chain:" + only)
    mine = [(k, v) for k, v in [*ctx.scan(b"blocked:"), *ctx.scan(b"suspect:")] if _entry(v)[1] == only]
    return sorted([*mine, *([(b"chain:" + only, raw)] if raw is not None else [])])


def _entry(raw: bytes) -> list[Any]:
    """A ``blocked:`` entry (``["branch", oid, statements]``) or a ``suspect:`` one (``[reason, oid]``)."""
    data = loads_one(raw)
    assert isinstance(data, list)
    return data


def _graph_page(ctx: StepContext, only: bytes | None, at: bytes, start: int) -> dict[str, Any]:
    """One page of ``auth.graph``: the items from key ``at`` (its chain from movement ``start``) while the page's
    estimated size stays under :data:`GRAPH_PAGE_BYTES` (at least one item, or one part of a chain)."""
    chains: list[dict[str, Any]] = []
    branches: list[dict[str, Any]] = []
    suspects: list[dict[str, Any]] = []
    named: set[Uid] = set()
    used = counted = 0
    page: dict[str, Any] = {}
    for key, raw in _graph_items(ctx, only):
        if key < at:
            continue
        first = start if key == at else 0
        used += 32 * (len(named) - counted)  # the roles of the devices named so far (about 32 bytes each)
        counted = len(named)
        if used >= GRAPH_PAGE_BYTES:
            page |= {"next": key, "next_start": first}
            break
        if key.startswith(b"chain:"):
            oid = key[6:]
            issuer, chain = _chain(ctx, oid)
            assert issuer is not None and chain is not None
            room = max(1, (GRAPH_PAGE_BYTES - used - 120) // 64)
            moves = chain.span(first, first + min(room, 256))
            part: dict[str, Any] = {
                "oid": oid, "issuer": issuer, "start": first, "total": len(chain),
                "moves": [{"from": m.frm, "to": m.to, "nonce": m.nonce} for m in moves],
            }  # fmt: skip
            if ctx.get(b"revoked:" + oid) is not None:
                part["revoked"] = True
            if (old := _reissue_of(ctx.get(b"reissued:" + oid))) is not None:
                part["reissued_as"] = old.new
            if (new := _reissue_of(ctx.get(b"dest:" + oid))) is not None:
                part["reissue_of"] = new.old
            chains.append(part)
            named.update([issuer, *(m.frm for m in moves), *(m.to for m in moves)])
            used += 120 + 64 * len(moves)
            if first + len(moves) < len(chain):
                page |= {"next": key, "next_start": first + len(moves)}
                break
        elif key.startswith(b"blocked:"):
            signer = Uid.from_bytes(key[8:])
            _, oid, evidence = _entry(raw)
            shown = [authority_chain.movement_of(m) for m in evidence[-MAX_EVIDENCE:]]
            moves_ = [{"from": m.frm, "to": m.to, "nonce": m.nonce} for m in shown]
            branches.append({"signer": signer, "oid": oid, "moves": moves_, "evidence": len(evidence)})
            named.update([signer, *(m.frm for m in shown), *(m.to for m in shown)])
            used += 60 + 64 * len(shown)
        else:
            uid = Uid.from_bytes(key[8:])
            reason, oid = _entry(raw)[:2]
            assert isinstance(reason, str)
            text = reason.encode()[:256].decode("utf-8", "ignore")  # the field's bound is in bytes
            suspects.append({"uid": uid, "oid": oid, "reason": text})
            named.add(uid)
            used += 60 + len(text.encode())
    roles = [{"uid": u, "role": r} for u in sorted(named, key=bytes) if (r := _role(ctx, u)) is not None]
    return {"authority": ctx.card_uid, "chains": chains, "branches": branches, "suspects": suspects, "roles": roles,
            **page}  # fmt: skip


def _role(ctx: StepContext, uid: Uid) -> str | None:
    """What the authority knows ``uid`` as: itself, a registered agent, or the role of the certificate that card
    presented when it traced (None: it knows no certificate of it)."""
    if uid.card_uid() == ctx.card_uid.card_uid():
        return "authority"
    if ctx.get(b"agent:" + bytes(uid)) is not None:
        return "agent"
    cert = ctx.get(b"cert:" + bytes(uid.card_uid()))
    if cert is None:
        return None
    try:
        return pki.role_of(pki.cert_from_der(cert)).value
    except PkiError:
        return None
