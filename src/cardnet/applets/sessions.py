"""Card-side TRN sessions: the applet base that opens sessions and carries inner messages.

An applet built on :class:`SessionApplet` calls ``send_inner(ctx, peer, raw)``;
if a session with ``peer`` is open the message leaves as a ``session.record``
at once, otherwise it is queued (in the card's state, so it survives a tear)
and a handshake is started. When the session opens, the queue is flushed in
order. Incoming records are opened and handed to ``on_inner``. A peer that
lost or replaced the session answers ``session.failed``; the card then drops
its session and starts a new one, keeping the queue; if the peer says it holds
no session with the card (``no_session``, ``session_ended``) while the card's
was open, the applet resends what it had under way with the peer at once
(``on_session_lost``), not at its next recovery.

Freshness (docs/trn.md, "Freshness"): the card's policy is the one written
at personalisation (the system row ``policy``) tightened by the owner's
``session.policy`` (privileged, tighten-only: a host cannot loosen it, and
cannot tighten it either, which would deny service for good). A host may end
all open sessions with ``session.rekey`` (not privileged: it can end them
anyway by dropping records), e.g. on a timer. A session is re-keyed
(dropped and handshaked again, its messages queued) once it is older than the
policy's lifetime in host seconds or has carried its record count; a receiver
refuses records of a session past twice those bounds (slack for messages in
flight). While the card's own newest blocklist is too old for the policy,
sessions with any peer but the authority (the card's ``a`` key) are refused
(``blocklist_stale``) and open ones end, and recovery (``restart_sessions``)
handshakes with the authority again to fetch a fresh one.

State (in the applet's key-value space): ``s:<peer>`` the session,
``q:<peer>`` the queue (CBOR list of inner messages), ``bl`` the newest
blocklist this card has seen, ``pol`` the tightenings received, and
``c:<peer>`` a peer's certificate as its last handshake showed it, for the
peers the applet :meth:`~SessionApplet.wants_cert` (none by default), and
``sf:<peer>`` once this card refused an inner message the peer's card sent
(the peer forgets the session on the ``session.failed`` that follows), until
a new session opens: the peer's records already on their way still open in the
old session, this card's next message opens a new one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from cardnet.card import Applet, Refused, StepContext
from cardnet.card.applet import SYS
from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.protocols import session as sess
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import DecodeError, Field, Message, MType, Schema, Text, Uid, UInt, register
from cardnet.wire.cbor import dumps, loads_one
from cardnet.wire.memo import Memo

MAX_QUEUE = 64  # inner messages waiting for one peer's session
# ... and their bytes: recovery resends a waiting exchange's request (m1, m2 and certificates: ~3.5 kB) on every
# round, so while a handshake cannot finish (the peer down) copies pile up; 64 of them filled a 256 KiB card, whose
# every later step (the recovery that would reopen the session, a mere list) was then refused: stuck for good.
MAX_QUEUE_BYTES = 16 * 1024
QUIET = frozenset({"replay", "duplicate", "rekeying"})
LOST = frozenset({"no_session", "session_ended"})  # session.failed reasons: the peer holds no session with this card
POLICY = register(0x0206, "session.policy", "session", sess.POLICY_SCHEMA, privileged=True)
POLICY_IS = register(
    0x0207,
    "session.policy_is",
    "session",
    Schema(
        "session.policy_is",
        [*(Field(i, n, UInt()) for i, n in enumerate(sess.Policy().as_dict())), Field(4, "note", Text(200))],
    ),
)
REKEY = register(0x0208, "session.rekey", "session", Schema("session.rekey", []))


class SessionApplet(Applet):
    """Base for applets that talk to other cards over TRN sessions."""

    handles: ClassVar[tuple[MType, ...]] = (
        sess.HELLO, sess.ACCEPT, sess.FINISH, sess.RECORD, sess.FAILED, POLICY, REKEY,
    )  # fmt: skip

    # -- to override -------------------------------------------------------------------
    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def on_session_open(self, ctx: StepContext, peer: Uid) -> None:
        """Called once a session with ``peer`` opened (after the queue was flushed)."""

    def on_blocklist(self, ctx: StepContext, bl: pki.Blocklist) -> None:
        """Called when a newer blocklist was adopted."""

    def on_session_lost(self, ctx: StepContext, peer: Uid) -> None:
        """Called when ``peer`` said it holds no session with this card while this card's was open (it ended it, or
        lost it): what this card sent in it was never read. Resend what is under way with ``peer`` (``send_inner``
        queues it and opens a new session) instead of leaving it to the next recovery."""

    # -- freshness policy ----------------------------------------------------------------------
    def policy(self, ctx: StepContext) -> sess.Policy:
        """The personalised policy tightened by every ``session.policy`` this card accepted."""
        raws = (ctx.get(b"policy", table=SYS), ctx.get(b"pol"))
        policy = _POLICIES.get(raws)
        if policy is None:
            policy = _POLICIES.remember(raws, sess.Policy.decode(raws[0]).tighter(sess.Policy.decode(raws[1])))
        return policy

    def authority(self, ctx: StepContext) -> Uid | None:
        """The card's authority (exempt from the blocklist-age check: it is where fresh blocklists come from)."""
        raw = ctx.get(b"a")
        return None if raw is None else Uid.from_bytes(raw)

    def _set_policy(self, ctx: StepContext, fields: dict[str, Any]) -> None:
        current = self.policy(ctx)
        wanted = current.tighter(sess.Policy.of(fields))
        looser = [n for n in fields if getattr(wanted, n) != fields[n]]
        if looser:
            raise Refused(
                "policy_loosened",
                f"{', '.join(looser)} would loosen this card's freshness policy ({current.as_dict()}): "
                "a policy can only be tightened (a new card is personalised with a looser one)",
            )
        if wanted != current:
            ctx.put(b"pol", wanted.encode())
        note = "tightened" if wanted != current else "unchanged"
        ctx.reply(POLICY_IS, **wanted.as_dict(), note=note)

    def rekey(self, ctx: StepContext) -> None:
        """End every open session: the next message to a peer opens a new one, with every check again.

        Not privileged: a host can already end sessions (drop records, forge ``session.failed``); a host
        timer (``ticks = { "session.rekey" = 600 }``) bounds session lifetimes in its own clock this way.
        """
        for key, raw in ctx.scan(b"s:"):
            if sess.Session.decode(raw).open:
                ctx.delete(key)

    def _stale(self, ctx: StepContext, peer: Uid, bl: pki.Blocklist | None) -> None:
        """Refuse a session with ``peer`` while this card's newest blocklist ``bl`` is too old for its policy."""
        if peer != self.authority(ctx):
            sess.fresh_enough(self.policy(ctx), bl, ctx.now)

    def _due(self, ctx: StepContext, state: sess.Session, slack: int) -> str | None:
        """Why the open session ``state`` must end now (lifetime, records, or a blocklist gone stale)."""
        policy = self.policy(ctx)
        why = policy.due(state, ctx.now, slack)
        wants_fresh = policy.min_epoch or policy.max_blocklist_age_s  # (else no blocklist can make it due)
        if why is None and wants_fresh and state.peer != self.authority(ctx):
            why = policy.blocklist_problem(self.blocklist(ctx), ctx.now)
        return why

    # -- state helpers -----------------------------------------------------------------------
    def wants_cert(self, ctx: StepContext, peer: Uid) -> bool:
        """Whether to keep ``peer``'s certificate when a handshake with it completes (``c:<peer>``)."""
        return False

    def _keep_cert(self, ctx: StepContext, peer: Uid, cert: bytes) -> None:
        """Keep the certificate the handshake just checked, if the applet :meth:`wants_cert` it."""
        if self.wants_cert(ctx, peer) and ctx.get(b"c:" + bytes(peer)) != cert:
            ctx.put(b"c:" + bytes(peer), cert)

    def peer_cert(self, ctx: StepContext, peer: Uid) -> bytes | None:
        """``peer``'s certificate as a handshake showed it, if kept (:meth:`wants_cert`)."""
        return ctx.get(b"c:" + bytes(peer))

    def session(self, ctx: StepContext, peer: Uid) -> sess.Session | None:
        raw = ctx.get(b"s:" + bytes(peer))
        if raw is None:
            return None
        state = _STATES.get(raw)
        if state is None:
            state = _STATES.remember(raw, sess.Session.decode(raw))
        return state

    def _save(self, ctx: StepContext, state: sess.Session) -> None:
        raw = state.encode()
        _STATES.remember(raw, state)
        ctx.put(b"s:" + bytes(state.peer), raw)

    def blocklist(self, ctx: StepContext) -> pki.Blocklist | None:
        raw = ctx.get(b"bl")
        return None if raw is None else pki.Blocklist.decode(raw)

    def adopt_blocklist(self, ctx: StepContext, bl: pki.Blocklist | None) -> None:
        current = self.blocklist(ctx)
        if bl is not None and (current is None or bl.epoch > current.epoch):
            ctx.put(b"bl", bl.encode())
            for key, _ in ctx.scan(b"s:"):  # a session opened before its peer was blocked ends now
                if bl.is_blocked(Uid.from_bytes(key[2:])):
                    ctx.delete(key)
            self.on_blocklist(ctx, bl)

    def accept_blocklist(self, ctx: StepContext, raw: bytes) -> None:
        """Adopt a blocklist delivered by message, if a trusted CA signed it and it is newer."""
        try:
            bl = pki.Blocklist.decode(raw)
        except (DecodeError, PkiError) as exc:
            raise Refused("bad_blocklist", f"not a blocklist: {exc}") from None
        if not any(_verifies(bl, r) for r in ctx.roots_der):
            raise Refused("bad_blocklist", "the blocklist is not signed by a trusted CA")
        self.adopt_blocklist(ctx, bl)

    def queued(self, ctx: StepContext, peer: Uid) -> list[bytes]:
        raw = ctx.get(b"q:" + bytes(peer))
        if raw is None:
            return []
        items = loads_one(raw)
        assert isinstance(items, list)
        return [bytes(x) for x in items]

    # -- sending -----------------------------------------------------------------------------
    def send_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        state = self.session(ctx, peer)
        if (
            state is not None
            and state.open
            and (self._due(ctx, state, 1) is not None or ctx.get(b"sf:" + bytes(peer)) is not None)
        ):
            ctx.delete(b"s:" + bytes(peer))  # re-key: the message waits in the queue for the new session
            state = None
        if state is not None and state.open:
            state, rec = sess.seal(state, ctx.card_uid, raw)
            self._save(ctx, state)
            ctx.emit(sess.RECORD, peer, **rec)
            return
        queue = [m for m in self.queued(ctx, peer) if m != raw]  # (a copy of the same message: once is enough)
        while queue and (len(queue) >= MAX_QUEUE or sum(map(len, queue)) + len(raw) > MAX_QUEUE_BYTES):
            queue = queue[1:]  # the sender's recovery resends what matters; keep the newest
        ctx.put(b"q:" + bytes(peer), dumps([*queue, raw]))
        if state is None:
            self.start_session(ctx, peer)

    def start_session(self, ctx: StepContext, peer: Uid) -> None:
        ctx.delete(b"stale:" + bytes(peer))
        ctx.delete(b"sf:" + bytes(peer))
        state, hello = sess.initiate(peer, ctx.random(48), ctx.random(16), ctx.certificate_der)
        bl = self.blocklist(ctx)
        if bl is not None:
            hello["blocklist"] = bl.encode()
        self._save(ctx, state)
        ctx.emit(sess.HELLO, peer, **hello)

    def restart_sessions(self, ctx: StepContext) -> None:
        """Recovery: every peer with queued messages and no open session gets a new handshake.

        If the card's blocklist is too old for its policy, the session with the authority is handshaked
        again (unless a handshake is under way): its accept carries the authority's newest blocklist.
        """
        authority = self.authority(ctx)
        if authority is not None and self.policy(ctx).blocklist_problem(self.blocklist(ctx), ctx.now) is not None:
            state = self.session(ctx, authority)
            if state is None or state.open:
                self.start_session(ctx, authority)
        for key, _ in ctx.scan(b"q:"):
            self.nudge_session(ctx, Uid.from_bytes(key[2:]))

    def nudge_session(self, ctx: StepContext, peer: Uid, *, rekey: bool = False) -> None:
        """Recovery for one peer: a handshake if there is no session (or ``rekey`` and it is open), a new one if
        the one under way has outlived a recovery period."""
        state = self.session(ctx, peer)
        if state is None or (rekey and state.open):
            self.start_session(ctx, peer)
        elif not state.open:  # a handshake under way: give it one recovery period before starting over
            if ctx.get(b"stale:" + bytes(peer)) is not None:
                self.start_session(ctx, peer)
            else:
                ctx.put(b"stale:" + bytes(peer), b"\x01")

    def _flush(self, ctx: StepContext, peer: Uid) -> None:
        ctx.delete(b"stale:" + bytes(peer))
        queue = self.queued(ctx, peer)
        ctx.delete(b"q:" + bytes(peer))
        for raw in queue:
            self.send_inner(ctx, peer, raw)
        self.on_session_open(ctx, peer)

    # -- receiving -----------------------------------------------------------------------------
    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        peer = msg.src
        if msg.mtype == POLICY.code:
            self._set_policy(ctx, params)
            return
        if msg.mtype == REKEY.code:
            self.rekey(ctx)
            return
        if not peer.is_card:  # a clean refusal (card.refused), not an applet error
            raise Refused("wrong_peer", f"sessions are between cards (port 0), not with {peer}")
        try:
            if msg.mtype == sess.HELLO.code:
                self._hello(ctx, peer, params)
            elif msg.mtype == sess.ACCEPT.code:
                self._accept(ctx, peer, params)
            elif msg.mtype == sess.FINISH.code:
                self._finish(ctx, peer, params)
            elif msg.mtype == sess.RECORD.code:
                self._record(ctx, peer, params)
            else:
                self._failed(ctx, peer, str(params.get("reason", "")))
        except ProtocolError as exc:
            # A replayed or reordered record is normal on a lossy network: drop it quietly.
            # Anything else tells the peer to start over (an unauthenticated hint: at worst a DoS,
            # which any host can do anyway).
            if msg.mtype != sess.FAILED.code and exc.reason not in QUIET:
                ctx.emit(sess.FAILED, peer, reason=exc.reason[:64], detail=str(exc)[:300])
            self.on_refused(ctx, peer, exc)

    def on_refused(self, ctx: StepContext, peer: Uid, exc: ProtocolError) -> None:
        """A session message from ``peer`` was refused (already answered with session.failed)."""

    def _hello(self, ctx: StepContext, peer: Uid, hello: dict[str, Any]) -> None:
        mine = self.session(ctx, peer)
        if mine is not None and not mine.initiator and mine.nonce_a == hello["nonce"]:
            raise ProtocolError("duplicate", "a hello this card already answered")
        if mine is not None and mine.phase == sess.WAIT_ACCEPT and bytes(ctx.card_uid) < bytes(peer):
            return  # both started: the smaller Uid stays initiator; the peer will answer our hello
        state, accept, verified = sess.respond(
            ctx.card_uid,
            peer,
            hello,
            my_cert=ctx.certificate_der,
            roots=ctx.roots_der,
            now=ctx.now,
            random48=ctx.random(48),
            random16=ctx.random(16),
            sign=ctx.sign,
            blocklist=self.blocklist(ctx),
            min_epoch=self.policy(ctx).min_epoch,
        )
        self.adopt_blocklist(ctx, verified.blocklist)
        self._stale(ctx, peer, verified.blocklist)
        self._save(ctx, state)
        ctx.delete(b"sf:" + bytes(peer))  # (a new session: whatever this card refused was in the old one)
        ctx.emit(sess.ACCEPT, peer, **accept)

    def _accept(self, ctx: StepContext, peer: Uid, accept: dict[str, Any]) -> None:
        state = self.session(ctx, peer)
        if state is not None and state.open and state.nonce_b == accept["nonce"]:
            raise ProtocolError("duplicate", "an accept for a session already open")
        if state is None or state.phase != sess.WAIT_ACCEPT:
            raise ProtocolError("no_session", f"no handshake with {peer} is waiting for an accept")
        opened, fin, verified = sess.finish(
            state,
            ctx.card_uid,
            accept,
            my_cert=ctx.certificate_der,
            roots=ctx.roots_der,
            now=ctx.now,
            sign=ctx.sign,
            blocklist=self.blocklist(ctx),
            min_epoch=self.policy(ctx).min_epoch,
        )
        self.adopt_blocklist(ctx, verified.blocklist)
        self._stale(ctx, peer, verified.blocklist)
        self._save(ctx, opened)
        ctx.delete(b"sf:" + bytes(peer))  # (a new session: whatever this card refused was in the old one)
        ctx.emit(sess.FINISH, peer, **fin)
        self._keep_cert(ctx, peer, accept["cert"])
        self._flush(ctx, peer)

    def _finish(self, ctx: StepContext, peer: Uid, fin: dict[str, Any]) -> None:
        state = self.session(ctx, peer)
        if state is not None and state.open and not state.initiator:
            raise ProtocolError("duplicate", "a finish for a session already open")
        if state is None or state.phase != sess.WAIT_FINISH:
            raise ProtocolError("no_session", f"no handshake with {peer} is waiting for a finish")
        key = sess.peer_key_of(state, ctx.roots_der, ctx.now)
        self._save(ctx, sess.complete(state, fin, key, ctx.now))
        ctx.delete(b"sf:" + bytes(peer))
        if state.cert_a is not None:
            self._keep_cert(ctx, peer, state.cert_a)
        self._flush(ctx, peer)

    def _record(self, ctx: StepContext, peer: Uid, rec: dict[str, Any]) -> None:
        state = self.session(ctx, peer)
        if state is not None and state.phase == sess.WAIT_ACCEPT and state.initiator:
            # this card is re-keying: a record of the old session is dropped (the peer gets our hello anyway,
            # and recovery resends what mattered)
            raise ProtocolError("rekeying", f"a record from {peer} while this card opens a new session with it")
        if state is None or not state.open:
            raise ProtocolError("no_session", f"no open session with {peer}: open a new one")
        why = self._due(ctx, state, 2)
        if why is not None:
            ctx.delete(b"s:" + bytes(peer))
            raise ProtocolError("session_expired", f"{why}: open a new session")
        state, inner = sess.open_record(state, ctx.card_uid, rec)
        self._save(ctx, state)
        try:
            self.on_inner(ctx, peer, inner)
        except ProtocolError as exc:
            if exc.reason not in QUIET:
                # The peer card sent this (it opened in their session) and forgets the session when this refusal's
                # session.failed reaches it. This card keeps its own for the peer's records already on their way
                # (they still open), but its next message opens a new session (``sf:``): sent in this one it would
                # be refused (no_session) and lost until recovery.
                ctx.put(b"sf:" + bytes(peer), b"")
            raise

    def _failed(self, ctx: StepContext, peer: Uid, reason: str) -> None:
        """The peer refused something of ours: forget the session; recovery opens a new one.

        If the peer says it holds no session with this card (:data:`LOST`) while this card's was open, what this card
        sent in it was never read: the applet resends what it has under way with the peer now
        (:meth:`on_session_lost`). A handshake is never answered that way (a hello is refused for what it shows), so
        such a refusal while this card's own hello waits is about an older session's record: the handshake stays."""
        state = self.session(ctx, peer)
        if state is None:
            return
        if reason in LOST and state.initiator and state.phase == sess.WAIT_ACCEPT:
            return
        ctx.delete(b"s:" + bytes(peer))
        if reason in LOST and state.open:
            self.on_session_lost(ctx, peer)


# A record decodes its session's state, then encodes it advanced; a reply sent in the same step decodes it again,
# and the next record decodes what the last one encoded. States and policies are frozen values, so they are kept
# here by their exact bytes (in the card's state: integrity-checked when read) and decoded once: what a lookup
# returns is what decoding those bytes returns.
_STATES: Memo[bytes, sess.Session] = Memo()
_POLICIES: Memo[tuple[bytes | None, bytes | None], sess.Policy] = Memo()


def _verifies(bl: pki.Blocklist, root_der: bytes) -> bool:
    try:
        bl.verify(pki.cert_from_der(root_der))
    except PkiError:
        return False
    return True
