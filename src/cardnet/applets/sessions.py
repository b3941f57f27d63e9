"""Card-side TRN sessions: the applet base that opens sessions and carries inner messages.

An applet built on :class:`SessionApplet` calls ``send_inner(ctx, peer, raw)``;
if a session with ``peer`` is open the message leaves as a ``session.record``
at once, otherwise it is queued (in the card's state, so it survives a tear)
and a handshake is started. When the session opens, the queue is flushed in
order. Incoming records are opened and handed to ``on_inner``. A peer that
lost or replaced the session answers ``session.failed``; the card then drops
its session and starts a new one, keeping the queue.

State (in the applet's key-value space): ``s:<peer>`` the session,
``q:<peer>`` the queue (CBOR list of inner messages), ``bl`` the newest
blocklist this card has seen.
"""

from __future__ import annotations

from typing import Any, ClassVar

from cardnet.card import Applet, Refused, StepContext
from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.protocols import session as sess
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import DecodeError, Message, MType, Uid
from cardnet.wire.cbor import dumps, loads_one

MAX_QUEUE = 64  # inner messages waiting for one peer's session
QUIET = frozenset({"replay", "duplicate"})


class SessionApplet(Applet):
    """Base for applets that talk to other cards over TRN sessions."""

    handles: ClassVar[tuple[MType, ...]] = (sess.HELLO, sess.ACCEPT, sess.FINISH, sess.RECORD, sess.FAILED)
    min_epoch = 0  # refuse peers whose newest blocklist is older (0: no requirement)

    # -- to override -------------------------------------------------------------------
    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def on_session_open(self, ctx: StepContext, peer: Uid) -> None:
        """Called once a session with ``peer`` opened (after the queue was flushed)."""

    def on_blocklist(self, ctx: StepContext, bl: pki.Blocklist) -> None:
        """Called when a newer blocklist was adopted."""

    # -- state helpers -----------------------------------------------------------------------
    def session(self, ctx: StepContext, peer: Uid) -> sess.Session | None:
        return sess.decode_state(ctx.get(b"s:" + bytes(peer)))

    def _save(self, ctx: StepContext, state: sess.Session) -> None:
        ctx.put(b"s:" + bytes(state.peer), state.encode())

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
        if state is not None and state.open:
            state, rec = sess.seal(state, ctx.card_uid, raw)
            self._save(ctx, state)
            ctx.emit(sess.RECORD, peer, **rec)
            return
        queue = self.queued(ctx, peer)
        if len(queue) >= MAX_QUEUE:
            queue = queue[1:]  # the sender's recovery resends what matters; keep the newest
        ctx.put(b"q:" + bytes(peer), dumps([*queue, raw]))
        if state is None:
            self.start_session(ctx, peer)

    def start_session(self, ctx: StepContext, peer: Uid) -> None:
        ctx.delete(b"stale:" + bytes(peer))
        state, hello = sess.initiate(peer, ctx.random(48), ctx.random(16), ctx.certificate_der)
        bl = self.blocklist(ctx)
        if bl is not None:
            hello["blocklist"] = bl.encode()
        self._save(ctx, state)
        ctx.emit(sess.HELLO, peer, **hello)

    def restart_sessions(self, ctx: StepContext) -> None:
        """Recovery: every peer with queued messages and no open session gets a new handshake."""
        for key, _ in ctx.scan(b"q:"):
            peer = Uid.from_bytes(key[2:])
            state = self.session(ctx, peer)
            if state is None:
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
                self._failed(ctx, peer)
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
            min_epoch=self.min_epoch,
        )
        self.adopt_blocklist(ctx, verified.blocklist)
        self._save(ctx, state)
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
            min_epoch=self.min_epoch,
        )
        self.adopt_blocklist(ctx, verified.blocklist)
        self._save(ctx, opened)
        ctx.emit(sess.FINISH, peer, **fin)
        self._flush(ctx, peer)

    def _finish(self, ctx: StepContext, peer: Uid, fin: dict[str, Any]) -> None:
        state = self.session(ctx, peer)
        if state is not None and state.open and not state.initiator:
            raise ProtocolError("duplicate", "a finish for a session already open")
        if state is None or state.phase != sess.WAIT_FINISH:
            raise ProtocolError("no_session", f"no handshake with {peer} is waiting for a finish")
        key = sess.peer_key_of(state, ctx.roots_der, ctx.now)
        self._save(ctx, sess.complete(state, fin, key))
        self._flush(ctx, peer)

    def _record(self, ctx: StepContext, peer: Uid, rec: dict[str, Any]) -> None:
        state = self.session(ctx, peer)
        if state is None or not state.open:
            raise ProtocolError("no_session", f"no open session with {peer}: open a new one")
        state, inner = sess.open_record(state, ctx.card_uid, rec)
        self._save(ctx, state)
        self.on_inner(ctx, peer, inner)

    def _failed(self, ctx: StepContext, peer: Uid) -> None:
        """The peer refused something of ours: forget the session; recovery opens a new one."""
        if ctx.get(b"s:" + bytes(peer)) is not None:
            ctx.delete(b"s:" + bytes(peer))


def _verifies(bl: pki.Blocklist, root_der: bytes) -> bool:
    try:
        bl.verify(pki.cert_from_der(root_der))
    except PkiError:
        return False
    return True
