"""smc on cards: the TrustedPals security module, computing F(UIC(inputs)) with the other members' modules.

The module is a card of its own (the applet owns the card's TRN sessions). Its host drives it:

* ``smc.prepare {spec}`` (privileged): take part in the run the spec names (:class:`~cardnet.protocols.smc.run.
  RunSpec`), if the card's own registry has the function with the same code hash and this card is a member.
  The module draws a frame key per member and its rho share, and sends each member a join over the cards'
  authenticated session (queued while a handshake runs). Sent again, it resends the joins not yet answered.
* ``smc.input {run, input}`` (privileged): the party's input, taken only once every member joined with the
  same spec (the terms are agreed before any input is taken) and before the first round.
* ``smc.tick {run, round}`` (privileged): the host's Clock, at each round's deadline: complete the rounds before
  ``round`` still open with the frames that arrived, send every other member this round's frame (``smc.frame``),
  and at the last tick compute the result. ``smc.state {run}`` (privileged) reports. Every order is answered
  with ``smc.state_is``. ``smc.known {run}`` (not privileged; from an application on the module card's own port only) ->
  ``smc.known_is {run, held}``: whether the module holds the run (``live``, ``made_room``, ``restarted``,
  ``no_run``), so that a late join asks for no PIN for a run the module is not in.
* ``smc.frame {run, round, ct}`` from the other modules: opened at once under the sender's key and kept for its
  round if authentic; anything else is dropped without an answer (an answer would be traffic that depends on
  the module's state). When every other member's frame of the current round is in, the module ends the round
  itself (it does not wait for the deadline) and sends the next round's frames; at the end of the run it
  pushes ``smc.finished`` to the application that gave it its last order.

What is durable: ``r:<run>`` (the spec's digest), written when the module joins. The run itself (keys, UIC
state, frames kept) lives in the card's volatile memory, as on a smart card's RAM: a module that restarts
finds ``r:<run>`` but no run in memory and takes no further part in it (``restarted``); it never sends a
frame that could contradict one it sent before. A step whose commit fails after a tick advanced the run has
sent nothing: a send omission, which UIC tolerates. At most :data:`MAX_RUNS` runs are live at once (finished
ones make room first, then the oldest: an order for a run dropped so is refused ``made_room``) and
:data:`MAX_KEPT` run ids are remembered.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any, Final

from cardnet.applets.sessions import SessionApplet
from cardnet.card import Refused, StepContext
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.functions import REGISTRY
from cardnet.protocols.smc.registry import MAX_TERMS_BYTES
from cardnet.protocols.smc.run import (
    CONTRIB_BYTES,
    KEY_BYTES,
    RUN_ID_BYTES,
    Join,
    ModuleRun,
    RunSpec,
)
from cardnet.protocols.smc.uic_wire import MAX_INPUT_BYTES, MAX_MODULES
from cardnet.wire import Bool, Bytes, Field, Message, Schema, Text, Uid, UInt, register

MAX_RUNS: Final = 8  # runs live in memory at once
MAX_KEPT: Final = 256  # run ids remembered durably (a restarted module refuses them)
MAX_EARLY: Final = 64  # joins kept for runs this module was not yet told of
MAX_SPEC_BYTES: Final = 32 + MAX_TERMS_BYTES + MAX_MODULES * 16
MAX_FRAME_BYTES: Final = 2 * MAX_MODULES * (MAX_INPUT_BYTES + 8)
MAX_RESULT_BYTES: Final = MAX_MODULES * (MAX_INPUT_BYTES + 64)

_RUN = Bytes(RUN_ID_BYTES, RUN_ID_BYTES)
_BY_RUN = Schema("smc.by_run", [Field(0, "run", _RUN)])
PREPARE = register(
    0x0801, "smc.prepare", "smc", Schema("smc.prepare", [Field(0, "spec", Bytes(MAX_SPEC_BYTES))]), privileged=True
)
INPUT = register(
    0x0802,
    "smc.input",
    "smc",
    Schema("smc.input", [Field(0, "run", _RUN), Field(1, "input", Bytes(MAX_INPUT_BYTES))]),
    privileged=True,
)
TICK = register(
    0x0803,
    "smc.tick",
    "smc",
    Schema("smc.tick", [Field(0, "run", _RUN), Field(1, "round", UInt(1 << 16))]),
    privileged=True,
)
STATE = register(0x0804, "smc.state", "smc", _BY_RUN, privileged=True)
STATE_IS = register(
    0x0805,
    "smc.state_is",
    "smc",
    Schema(
        "smc.state_is",
        [
            Field(0, "run", _RUN),
            Field(1, "status", Text(16)),
            Field(2, "me", UInt(MAX_MODULES)),
            Field(3, "joined", UInt(MAX_MODULES)),
            Field(4, "ticks", UInt(1 << 16)),
            Field(5, "rounds", UInt(1 << 16)),
            Field(6, "has_input", Bool()),
            Field(7, "result", Bytes(MAX_RESULT_BYTES), optional=True),
            Field(8, "problem", Text(300), optional=True),
        ],
    ),
)
FINISHED = register(0x0807, "smc.finished", "smc", STATE_IS.schema)  # pushed to the host at a run's end
KNOWN = register(0x0808, "smc.known", "smc", _BY_RUN)  # not privileged: asked before the PIN (applications only)
KNOWN_IS = register(
    0x0809, "smc.known_is", "smc", Schema("smc.known_is", [Field(0, "run", _RUN), Field(1, "held", Text(16))])
)
FRAME = register(
    0x0806,
    "smc.frame",
    "smc",
    Schema(
        "smc.frame", [Field(0, "run", _RUN), Field(1, "round", UInt(1 << 16)), Field(2, "ct", Bytes(MAX_FRAME_BYTES))]
    ),
)
ORDERS = (PREPARE, INPUT, TICK, STATE)


class _Live:
    """A run in the module's memory: the protocol state, and the last problem a member's join showed."""

    __slots__ = ("app", "problem", "run")

    def __init__(self, run: ModuleRun) -> None:
        self.run = run
        self.problem: str | None = None
        self.app: Uid | None = None  # the host's application that gave the last order (told of the run's end)


class SmcApplet(SessionApplet):
    """The security module (see the module docstring)."""

    name = "smc"
    handles = (*SessionApplet.handles, PREPARE, INPUT, TICK, STATE, FRAME, KNOWN)

    def __init__(self) -> None:
        self._live: OrderedDict[bytes, _Live] = OrderedDict()
        self._early: OrderedDict[tuple[bytes, Uid], bytes] = OrderedDict()
        self._dropped: OrderedDict[bytes, bool] = OrderedDict()  # runs dropped to make room: run -> it had finished

    # --- orders ------------------------------------------------------------------------------------------------

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        if code == FRAME.code:
            self._frame(ctx, msg.src, params)
        elif code == TICK.code:
            self._tick(ctx, params["run"], params["round"])
        elif code == PREPARE.code:
            self._prepare(ctx, params["spec"])
        elif code == INPUT.code:
            live = self._get(ctx, params["run"])
            live.app = ctx.src
            try:
                live.run.give_input(params["input"])
            except ProtocolError as exc:
                raise Refused(exc.reason, str(exc)) from None
            self._report(ctx, live)
        elif code == STATE.code:
            self._report(ctx, self._get(ctx, params["run"]))
        elif code == KNOWN.code:
            self._known(ctx, msg.src, params["run"])
        else:
            super().handle(ctx, msg, params)

    def _get(self, ctx: StepContext, run: bytes) -> _Live:
        live = self._live.get(run)
        if live is not None:
            return live
        if run in self._dropped:
            ended = "it had ended; its result went with it" if self._dropped[run] else "it had not ended"
            raise Refused(
                "made_room",
                f"this module dropped run {run.hex()} from its memory to make room for newer runs (it holds "
                f"{MAX_RUNS} at once; {ended}): it takes no further part in it (a module never rejoins a run)",
            )
        if ctx.get(b"r:" + run) is not None:
            raise Refused(
                "restarted",
                f"this module restarted during run {run.hex()}: it takes no further part in it (a module never "
                "rejoins a run, so it cannot contradict what it sent); start a new run",
            )
        raise Refused("no_run", f"this module was not prepared for run {run.hex()}: send smc.prepare first")

    def _known(self, ctx: StepContext, src: Uid, run: bytes) -> None:
        """Whether this module holds ``run``: ``live``, ``made_room`` (dropped for newer runs), ``restarted`` or
        ``no_run``, asked by an application of the module's host before it asks its person for the PIN (`smc join`
        after the first round). The host knows all of it already (it gave the orders and restarted the card); anyone
        else asking is dropped without an answer, as any traffic that would depend on the module's state: another card
        (of this host or a remote one) and an application on a port of another card (another host's, through the
        links, as much as this host's). Only the module's own host hands out ports of the module card, and it drops
        a remote message that claims one (its forged-source guard)."""
        if src.is_card or src.domain != ctx.card_uid.domain:
            return
        if run in self._live:
            held = "live"
        elif run in self._dropped:
            held = "made_room"
        else:
            held = "restarted" if ctx.get(b"r:" + run) is not None else "no_run"
        ctx.reply(KNOWN_IS, run=run, held=held)

    def _prepare(self, ctx: StepContext, raw: bytes) -> None:
        try:
            spec = RunSpec.decode(raw)
            fn = REGISTRY.check(spec.terms)
            me = spec.index(ctx.card_uid)
        except ProtocolError as exc:
            raise Refused(exc.reason, str(exc)) from None
        live = self._live.get(spec.run)
        if live is None:
            if ctx.get(b"r:" + spec.run) is not None:
                self._get(ctx, spec.run)  # raises: restarted
            keys = {j: ctx.random(KEY_BYTES) for j in range(spec.n) if j != me}
            live = _Live(ModuleRun(spec, me, fn, keys, ctx.random(CONTRIB_BYTES)))
            self._remember(ctx, spec)
            ctx.after_commit(lambda: self._admit(spec.run, live))
        elif live.run.spec != spec:
            raise Refused("terms_differ", f"run {spec.run.hex()} was prepared here with another spec")
        for j, member in enumerate(spec.members):
            if j != me and j not in live.run.joined:
                self.send_inner(ctx, member, live.run.join_for(j).encode())
        self._report(ctx, live)

    def _remember(self, ctx: StepContext, spec: RunSpec) -> None:
        seq_raw = ctx.get(b"seq")
        seq = int.from_bytes(seq_raw, "big") if seq_raw else 0
        ctx.put(b"r:" + spec.run, spec.digest())
        ctx.put(b"o:" + seq.to_bytes(8, "big"), spec.run)
        ctx.put(b"seq", (seq + 1).to_bytes(8, "big"))
        if seq >= MAX_KEPT:
            old = (seq - MAX_KEPT).to_bytes(8, "big")
            gone = ctx.get(b"o:" + old)
            ctx.delete(b"o:" + old)
            if gone is not None and gone not in self._live:
                ctx.delete(b"r:" + gone)

    def _admit(self, run: bytes, live: _Live) -> None:
        """After the prepare's commit: the run enters memory (finished runs, then the oldest, make room)."""
        while len(self._live) >= MAX_RUNS:
            done = next((k for k, v in self._live.items() if v.run.finished), None)
            gone = done if done is not None else next(iter(self._live))
            self._dropped[gone] = self._live.pop(gone).run.finished
            while len(self._dropped) > MAX_KEPT:  # (remembered in memory, as the runs were: a restart says restarted)
                self._dropped.popitem(last=False)
        self._live[run] = live
        for (r, peer), raw in list(self._early.items()):
            if r == run:
                del self._early[(r, peer)]
                self._join(live, peer, raw)

    def _tick(self, ctx: StepContext, run: bytes, r: int) -> None:
        """The Clock's deadline for round ``r``: the module ends every round before it that is still open (a
        round whose frames all arrived ended already); a tick for a round already reached only reports."""
        live = self._get(ctx, run)
        live.app = ctx.src
        m = live.run
        if r > m.spec.rounds + 1:
            raise Refused("wrong_round", f"run {run.hex()} has {m.spec.rounds + 1} ticks, not {r}")
        while m.ticks < r:
            self._advance(ctx, m)
        self._report(ctx, live)

    def _advance(self, ctx: StepContext, m: ModuleRun) -> None:
        r = m.ticks + 1
        for j, ct in m.tick(r).items():
            ctx.emit(FRAME, m.spec.members[j], run=m.spec.run, round=r, ct=ct)

    def _report(self, ctx: StepContext, live: _Live) -> None:
        ctx.reply(STATE_IS, **self._fields(live))

    def _fields(self, live: _Live) -> dict[str, Any]:
        m = live.run
        fields: dict[str, Any] = {
            "run": m.spec.run,
            "status": m.public_status,
            "me": m.me,
            "joined": len(m.joined),
            "ticks": m.ticks,
            "rounds": m.spec.rounds,
            "has_input": m.my_input is not None,
        }
        if m.result is not None:
            fields["result"] = m.result
        if live.problem is not None:
            fields["problem"] = live.problem
        return fields

    # --- from the other modules --------------------------------------------------------------------------------

    def _frame(self, ctx: StepContext, src: Uid, params: dict[str, Any]) -> None:
        live = self._live.get(params["run"])
        if live is None or not src.is_card:
            return  # no answer: a frame for no live run is dropped
        try:
            j = live.run.spec.index(src)
        except ProtocolError:
            return
        m = live.run
        if not m.offer(params["round"], j, params["ct"]):
            return
        if m.round_full:
            while m.round_full:  # (the next round's frames may all be in already)
                self._advance(ctx, m)
            if m.finished and live.app is not None:
                ctx.emit(FINISHED, live.app, **self._fields(live))

    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        try:
            join = Join.decode(raw)
        except ProtocolError:
            return  # not a join: nothing else travels in an smc module's sessions
        live = self._live.get(join.run)
        if live is None:
            key = (join.run, peer)
            ctx.after_commit(lambda: self._keep_early(key, raw))
            return
        if not join.have:  # the peer lacks our join (lost on the way): send it again
            try:
                j = live.run.spec.index(peer)
            except ProtocolError:
                return
            self.send_inner(ctx, peer, replace(live.run.join_for(j), have=True).encode())
        ctx.after_commit(lambda: self._join(live, peer, raw))

    def _keep_early(self, key: tuple[bytes, Uid], raw: bytes) -> None:
        live = self._live.get(key[0])
        if live is not None:  # the run was admitted by an earlier step of the same group commit
            self._join(live, key[1], raw)
            return
        self._early[key] = raw
        while len(self._early) > MAX_EARLY:
            self._early.popitem(last=False)

    def _join(self, live: _Live, peer: Uid, raw: bytes) -> None:
        try:
            live.run.accept_join(live.run.spec.index(peer), Join.decode(raw))
        except ProtocolError as exc:
            live.problem = f"{peer}: {exc}"
