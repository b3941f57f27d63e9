"""The Controller and the Clock of one TrustedPals host: they drive the host's security module through a run.

The module (the ``smc`` applet on the host's card) does the protocol; the host only orders it about, through
an application connection logged in with the PIN (every order is privileged):

1. :meth:`Party.prepare`: ``smc.prepare`` with the run's spec, repeated every :data:`REPREPARE_S` until every
   member's join arrived (a repeat resends the joins not yet answered) or the join time is up;
2. :meth:`Party.give_input`: the party's input, once the terms are agreed;
3. :meth:`Party.run_rounds`: the Clock: ``smc.tick`` for round ``r`` at its deadline ``start_at + (r - 1) *
   round_s`` (wall clock, so hosts in other processes keep the same rounds), ``R + 1`` ticks at most, then the
   result. The module ends a round by itself as soon as every frame of it is in, and pushes ``smc.finished``
   at the end of the run: without faults the run takes as long as its frames travel, not ``R`` deadlines.

A tick that comes late (a slow host) still ends the rounds before it, in order: the module then finds fewer
frames for the rounds it completes, omissions it tolerates. The frames themselves travel card to card through
the host runtime; the host's Adversary (``[adversary]`` in its configuration) may drop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Final

from cardnet.applets.smc import FINISHED, INPUT, PREPARE, STATE, STATE_IS, TICK
from cardnet.card import mtypes as cm
from cardnet.errors import CardnetError
from cardnet.host.client import AppClient, undeliverable
from cardnet.host.errors import HostError
from cardnet.protocols.smc.run import RunSpec
from cardnet.wire import Message, MType

REPREPARE_S: Final = 0.05
DEFAULT_JOIN_TIMEOUT_S: Final = 10.0
ANSWER_TIMEOUT_S: Final = 30.0


class SmcError(CardnetError):
    """A module refused an order, or its host went away (or would not let this program use the module card);
    ``reason`` says why, ``hint``, when given, what to do."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(reason, message)
        self.hint = hint


# What to do when the module's host will not let this program use the module card (its HostError reason).
_NO_PORT_HINTS: Final = {
    "no_card": "name the module card by the domain of one of the cards this host runs (the message names them; "
    "`--card DOMAIN` on the command line)",
    "store_failed": "free space on the disk that holds the card's store (the host's log names it), then try again",
}


def card_refused(exc: HostError) -> SmcError:
    """The module's host would not let this program use the module card (``exc``: the host's words, which name
    the host, the card and why): an :class:`SmcError` of the host's reason, with what to do."""
    return SmcError(exc.reason, f"cannot open the module card: {exc}", hint=exc.hint or _NO_PORT_HINTS.get(exc.reason))


@dataclass(frozen=True)
class Outcome:
    """How a run ended for one module: ``decided`` with ``result``, or ``halted`` / ``out`` without one."""

    me: int
    status: str
    result: bytes | None
    ticks: int
    rounds: int
    problem: str | None = None


def _outcome(state: dict[str, Any]) -> Outcome:
    return Outcome(
        state["me"], state["status"], state.get("result"), state["ticks"], state["rounds"], state.get("problem")
    )


class Module:
    """A logged-in connection to one host's module card: orders answered in turn, and the pushed run ends."""

    def __init__(self, app: AppClient) -> None:
        self.app = app
        self.card = app.uid.card_uid()
        self._answers: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._finished: dict[bytes, dict[str, Any]] = {}
        self._finish_events: dict[bytes, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, socket: str, *, pin: str, card: bytes | None = None) -> Module:
        try:
            app = await AppClient.connect(socket, card=card)
        except OSError as exc:
            raise SmcError("no_host", f"cannot reach the module's host at {socket}: {exc.strerror or exc}") from None
        except HostError as exc:  # (a wrong card domain, a card that cannot write its store: said, with what to do)
            raise card_refused(exc) from None
        module = cls(app)
        try:
            r = await module.ask(cm.PIN_VERIFY, cm.PIN_RESULT, pin=pin)
            if not r["ok"]:
                raise SmcError("wrong_pin", f"wrong PIN: the module card refused it ({r['tries_left']} tries left)")
        except BaseException:
            await module.close()
            raise
        return module

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self.app.aclose()

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.app.recv()
                if msg.mtype == FINISHED.code:
                    state = dict(FINISHED.parse(msg))
                    self._finished[state["run"]] = state
                    self._finish_events.setdefault(state["run"], asyncio.Event()).set()
                else:
                    self._answers.put_nowait(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the host went away: orders fail, not hang
            self._answers.put_nowait(exc)
            for event in self._finish_events.values():
                event.set()

    def finished(self, run: bytes) -> asyncio.Event:
        """Set when the module pushed the end of ``run`` (or the connection broke)."""
        return self._finish_events.setdefault(run, asyncio.Event())

    def finish_state(self, run: bytes) -> dict[str, Any] | None:
        return self._finished.get(run)

    async def ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        async with self._lock:
            try:
                await self.app.send(self.card, mtype, **fields)
            except (CardnetError, OSError) as exc:
                raise SmcError("no_host", f"the connection to the module's host is gone: {exc}") from None
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                while True:
                    msg = await self._answers.get()
                    if isinstance(msg, BaseException):
                        self._answers.put_nowait(msg)
                        raise SmcError("no_host", f"the connection to the module's host is gone: {msg}")
                    if msg.mtype == cm.REFUSED.code:
                        p = cm.REFUSED.parse(msg)
                        raise SmcError(p["reason"], f"the module refused {mtype.name}: {p['detail'] or p['reason']}")
                    if msg.mtype == reply.code:
                        return dict(reply.parse(msg))
                    try:
                        undeliverable(msg, self.app.uid)
                    except HostError as exc:  # the host could not give the card this order: at once, not at timeout
                        raise SmcError(exc.reason, f"{mtype.name}: {exc}") from None


class Party:
    """One host's Controller and Clock for one run, over a logged-in :class:`Module` connection."""

    def __init__(self, module: Module, spec: RunSpec) -> None:
        self.module = module
        self.spec = spec
        self.state: dict[str, Any] = {}

    async def _order(self, mtype: MType, **fields: Any) -> dict[str, Any]:
        self.state = await self.module.ask(mtype, STATE_IS, **fields)
        return self.state

    async def prepare(self, timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> bool:
        """Join the run; True once every member joined with the same terms, False if the time ran out."""
        deadline = time.monotonic() + timeout_s
        spec = self.spec.encode()
        while True:
            state = await self._order(PREPARE, spec=spec)
            if state["joined"] == self.spec.n:
                return True
            if state.get("problem"):
                raise SmcError("terms_differ", f"a member's join was refused: {state['problem']}")
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(REPREPARE_S)

    @property
    def agreed(self) -> bool:
        """At least ``n - t`` members (this one included) joined with the same terms: the module takes its input
        (a member whose join never came counts as faulty)."""
        return int(self.state.get("joined", 0)) >= self.spec.n - self.spec.terms.t

    async def give_input(self, raw: bytes) -> None:
        await self._order(INPUT, run=self.spec.run, input=raw)

    async def status(self) -> dict[str, Any]:
        return await self._order(STATE, run=self.spec.run)

    async def run_rounds(self, start_at: float, round_s: float) -> Outcome:
        """The Clock: round ``r``'s deadline is ``start_at + (r - 1) * round_s`` (``time.time()`` seconds); the
        module ends rounds earlier by itself when their frames are in, and says when the run ended."""
        last = self.spec.rounds + 1
        done = self.module.finished(self.spec.run)
        for r in range(1, last + 1):
            delay = start_at + (r - 1) * round_s - time.time()
            if delay > 0 and r > 1:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), delay)
            elif delay > 0:
                await asyncio.sleep(delay)
            pushed = self.module.finish_state(self.spec.run)
            if pushed is not None:
                self.state = pushed
                break
            state = await self._order(TICK, run=self.spec.run, round=r)
            if state["ticks"] == last:
                break
        return _outcome(self.state)


async def run_parties(
    parties: list[Party],
    inputs: list[bytes | None],
    *,
    round_s: float,
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S,
    start_margin_s: float = 0.01,
) -> list[Outcome]:
    """Run every party of one process together: all join (until every join is in, or the join time is up), those
    with at least ``n - t`` joins take their input (None: none given), then the Clock starts for all at one instant.
    A module with fewer joins, or no input, takes no part."""
    await asyncio.gather(*(p.prepare(join_timeout_s) for p in parties))
    for p, raw in zip(parties, inputs, strict=True):
        if p.agreed and raw is not None:
            await p.give_input(raw)
    start_at = time.time() + start_margin_s
    return list(await asyncio.gather(*(p.run_rounds(start_at, round_s) for p in parties)))
