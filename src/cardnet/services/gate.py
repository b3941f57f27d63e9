"""The gate service: the operator's program beside the gate card (``cardnet gate run``).

The gate card (applet ``gate``, :mod:`cardnet.applets.gate`) does the admitting: it takes each ticket by TRN,
judges it, keeps it, records the admission and reports it to the authority. This service, logged in to the card
with the operator's PIN, is what the operator watches: it asks the card to push its events (``gate.watch``: the
gate's events alone, not ``trn.changed`` for every ticket taken, which would double what it reads),
hands each one over as a :class:`GateEvent`, and keeps the card's blocklist fresh by asking it to open a new
session with the authority every ``refresh_s`` (``gate.refresh``: the handshake brings the authority's newest
signed blocklist; while the authority is unreachable the card keeps the last one). A blocked device retries its
handshake on every recovery: the same refusal is handed over once per ``quiet_s``.

Events are numbered by the card (``seq``) and handed over in that order. A service that falls behind (the host
drops what it cannot queue for it and says so with ``host.missed``), or that sees a number skipped, reads the
card's journal of its last events (``gate.journal``) and hands over what it missed; what the card no longer keeps
is logged and counted as lost (:attr:`GateService.lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cardnet.applets.gate import EVENT, JOURNAL, JOURNAL_SIZE, JOURNALED, REFRESH, REFUSED_KIND, WATCH_EVENTS
from cardnet.applets.trn import RESULT
from cardnet.card import mtypes as cm
from cardnet.errors import CardnetError
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.wire import Uid

log = logging.getLogger("cardnet.gate")

DEFAULT_REFRESH_S = 10.0
QUIET_S = 30.0  # the same refusal (device, ticket, reason) is handed over once per this many seconds
MAX_QUIET = 4096  # refusals remembered for that
MAX_HELD = 4096  # events that arrived ahead of a missed one, held until the journal fills the gap
_NOW = 2**63  # gate.journal after this: no event, only where the card's numbering stands


class GateError(CardnetError):
    """The gate card refused the operator (a wrong PIN) or could not be reached."""


@dataclass(frozen=True)
class GateEvent:
    """A change at the gate: ``kind`` refused (the ticket stayed with its holder), verdict (a ticket was taken:
    pending, admitted, admitted_offline or refused by the authority) or report (the authority's answer to an
    admission made offline)."""

    kind: str
    holder: Uid
    at_ms: int
    verdict: str
    reason: str
    oid: bytes | None = None
    report: str | None = None
    report_reason: str | None = None
    body: bytes | None = None
    seq: int | None = None  # the event's number on the gate card

    @classmethod
    def of(cls, item: dict[str, Any]) -> GateEvent:
        return cls(
            item.get("kind", "verdict"), item["from"], item["at_ms"], item["verdict"], item["reason"], item.get("oid"),
            item.get("report"), item.get("report_reason"), item.get("body"), item.get("seq"),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` lines: bytes as hex (the oid) or text (the body), Uids as text."""
        d: dict[str, Any] = {
            "kind": self.kind, "holder": str(self.holder), "at_ms": self.at_ms, "verdict": self.verdict,
            "reason": self.reason, "oid": None if self.oid is None else self.oid.hex(), "report": self.report,
            "report_reason": self.report_reason,
            "body": None if self.body is None else self.body.decode("utf-8", "replace"), "seq": self.seq,
        }  # fmt: skip
        return d


@dataclass
class GateService:
    """Watches the gate card at ``socket`` (see the module); ``on_event`` gets every :class:`GateEvent`.

    ``missed`` counts the messages the host dropped for the service, ``recovered`` the events it read again from
    the card's journal, ``lost`` those the card no longer kept, ``ignored`` the messages read that it had no use
    for; ``app`` is the connection while logged in."""

    socket: str
    pin: str
    on_event: Callable[[GateEvent], None]
    card: bytes | None = None
    refresh_s: float = DEFAULT_REFRESH_S
    quiet_s: float = QUIET_S
    retry_s: float = 0.5
    _quiet: dict[tuple[bytes, bytes, str], float] = field(default_factory=dict)
    app: AppClient | None = field(default=None, init=False)
    missed: int = field(default=0, init=False)
    recovered: int = field(default=0, init=False)
    lost: int = field(default=0, init=False)
    ignored: int = field(default=0, init=False)
    _next: int | None = field(default=None, init=False)  # the number of the next event to hand over
    _held: dict[int, GateEvent] = field(default_factory=dict, init=False)
    _asking: bool = field(default=False, init=False)  # a gate.journal order is out

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: a lost connection to the card is logged and opened again; a wrong PIN ends it."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except GateError:
                raise
            except (CardnetError, OSError, TimeoutError) as exc:
                log.warning("gate service: %s: logging in again", exc or type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.retry_s)

    async def _session(self, stop: asyncio.Event) -> None:
        async with await AppClient.connect(self.socket, card=self.card) as app:
            card = app.uid.card_uid()
            await app.send(card, cm.PIN_VERIFY, pin=self.pin)
            got = await app.recv_type(cm.PIN_RESULT)
            if not got["ok"]:
                raise GateError("wrong_pin", f"the gate card refused the operator PIN ({got['tries_left']} tries left)")
            await app.send(card, WATCH_EVENTS, on=True)
            await app.recv_type(RESULT)
            self.app = app
            # where the card's numbering stands (first login), or what was journaled while logged out
            await self._ask_journal(app, card)
            refresher = asyncio.create_task(self._refresh(app, card, stop))
            reader = asyncio.create_task(self._read(app))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():
                    reader.result()  # the connection ended: raise why (the service logs in again)
            finally:
                for task in (refresher, reader, stopping):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(refresher, reader, stopping)
                self.app = None
                self._asking = False

    async def _read(self, app: AppClient) -> None:
        """Hand over every gate event the card pushes, a batch of messages at a time (a busy gate pushes hundreds a
        second: a reader slower than the card would lose them to the host's bound on what waits for it); on the
        host's ``host.missed``, or a number skipped, read the card's journal."""
        card = app.uid.card_uid()
        while True:
            for msg in await app.conn.recv_many():
                if msg.mtype == EVENT.code:
                    if self._take(GateEvent.of(dict(EVENT.parse(msg)))) and not self._asking:
                        await self._ask_journal(app, card)
                elif msg.mtype == JOURNALED.code:
                    if self._journaled(dict(JOURNALED.parse(msg))):
                        await self._ask_journal(app, card)
                elif msg.mtype == hm.MISSED.code and msg.src == card:
                    count = hm.MISSED.parse(msg)["count"]
                    self.missed += count
                    log.warning("gate service: the host dropped %d message(s) for it (it fell behind): reading the "
                                "gate card's journal for the events among them", count)  # fmt: skip
                    await self._ask_journal(app, card)  # (even if one is out: its answer may be among the dropped)
                else:
                    self.ignored += 1

    async def _ask_journal(self, app: AppClient, card: Uid) -> None:
        self._asking = True
        await app.send(card, JOURNAL, after=_NOW if self._next is None else self._next - 1)

    def _take(self, event: GateEvent) -> bool:
        """Hand ``event`` over in its turn (held if one before it is missing; skipped if handed over already);
        True: one is missing, read the journal."""
        seq = event.seq
        if seq is None:  # (an event the card could not keep: it is full)
            self._hand_over(event)
            return False
        if self._next is None:
            self._next = seq
        if seq < self._next:
            return False
        if seq > self._next:
            if len(self._held) < MAX_HELD:  # (past that: read again from the journal)
                self._held[seq] = event
            return True
        self._hand_over(event)
        self._next = seq + 1
        while self._next in self._held:
            self._hand_over(self._held.pop(self._next))
            self._next += 1
        return False

    def _journaled(self, page: dict[str, Any]) -> bool:
        """The card's journal after the last event handed over: hand over what was missed; True: read on."""
        if self._next is None:  # the first login: events start after the card's last one
            self._next = page["last"] + 1
            self._asking = False
            return False
        if page["first"] > self._next:
            self._skip(page["first"] - self._next)
        recovered = 0
        for item in page["items"]:
            event = GateEvent.of(item)
            if event.seq is not None and event.seq >= self._next and event.seq not in self._held:
                recovered += 1
            self._take(event)
        if recovered:
            self.recovered += recovered
            log.warning("gate service: %d event(s) it missed read again from the gate card", recovered)
        if page["more"]:
            return True
        self._asking = False
        while self._held:  # the journal holds everything up to its last: what is still missing is gone
            self._skip(min(self._held) - self._next)
        return False

    def _skip(self, count: int) -> None:
        """``count`` events from ``_next`` on are gone from the card's journal: counted lost, the rest goes on."""
        assert self._next is not None
        self.lost += count
        log.warning("gate service: %d event(s) are lost: the gate card keeps its last %d only (`cardnet gate "
                    "admissions` lists every admission)", count, JOURNAL_SIZE)  # fmt: skip
        self._next += count
        for seq in sorted(s for s in self._held if s < self._next):  # (arrived, but the journal moved past them)
            self._hand_over(self._held.pop(seq))
        while self._next in self._held:
            self._hand_over(self._held.pop(self._next))
            self._next += 1

    async def _refresh(self, app: AppClient, card: Uid, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await app.send(card, REFRESH)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.refresh_s)

    def _hand_over(self, event: GateEvent) -> None:
        if event.kind == REFUSED_KIND:
            key = (bytes(event.holder), event.oid or b"", event.reason)
            now = time.monotonic()
            if now - self._quiet.get(key, -self.quiet_s) < self.quiet_s:
                return
            if len(self._quiet) >= MAX_QUIET:
                self._quiet.clear()
            self._quiet[key] = now
        self.on_event(event)
