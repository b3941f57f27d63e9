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

A gate card whose store cannot be written (a full or failing disk) takes no ticket: its host refuses the steps, tells
the holders' hosts (``host.undeliverable`` code ``store_failed``: the holder is refused at once and keeps the ticket)
and answers the service's own orders with the same notice. The service then hands over a :class:`GateStatus`
``closed`` (what failed, what to do) and logs it, asks the card every ``probe_s`` whether it can write again (an
order that is answered only once the card wrote its answer: ``gate.setup`` without fields, answered ``gate.state``;
it asks that every ``refresh_s`` anyway, so a failure is seen even while the refresh writes nothing), and hands over
``open`` once it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cardnet.applets.gate import (
    EVENT,
    JOURNAL,
    JOURNAL_SIZE,
    JOURNALED,
    REFRESH,
    REFUSED_KIND,
    SETUP,
    STATE,
    WATCH_EVENTS,
)
from cardnet.applets.trn import RESULT
from cardnet.card import mtypes as cm
from cardnet.errors import CardnetError
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.host.core import STORE_FAILED
from cardnet.host.errors import HostError
from cardnet.wire import Uid

log = logging.getLogger("cardnet.gate")

DEFAULT_REFRESH_S = 10.0
PROBE_S = 1.0  # while the gate card cannot write its store: how often the service asks whether it can again
QUIET_S = 30.0  # the same refusal (device, ticket, reason) is handed over once per this many seconds
MAX_QUIET = 4096  # refusals remembered for that
MAX_HELD = 4096  # events that arrived ahead of a missed one, held until the journal fills the gap
_NOW = 2**63  # gate.journal after this: no event, only where the card's numbering stands
_WRITTEN = frozenset({EVENT.code, JOURNALED.code, STATE.code})  # answers the card writes: it can write its store


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


@dataclass(frozen=True)
class GateStatus:
    """Whether the gate admits tickets: ``state`` ``closed`` (``reason`` ``store_failed``: its card cannot write
    its store) or ``open`` again; ``message`` says what happened, ``hint`` what to do, ``detail`` the host's words."""

    state: str
    reason: str
    message: str
    hint: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "message": self.message, "hint": self.hint,
                "detail": self.detail}  # fmt: skip


def closed_status(detail: str) -> GateStatus:
    """The gate card cannot write its store (``detail``: the host's words): closed, and what to do."""
    return GateStatus(
        "closed", STORE_FAILED,
        "the gate card cannot write its store: it admits no ticket until it can (a holder presenting one is told so "
        "at once and keeps the ticket)",
        "free space on the disk that holds the gate card's store (or mend the disk): the gate opens again by itself "
        "once its card can write (restarting `cardnet gate run` also does); nothing it admitted is lost",
        detail,
    )  # fmt: skip


OPEN = GateStatus("open", STORE_FAILED, "the gate card can write its store again: the gate admits tickets again")


@dataclass
class GateService:
    """Watches the gate card at ``socket`` (see the module); ``on_event`` gets every :class:`GateEvent`.

    ``missed`` counts the messages the host dropped for the service, ``recovered`` the events it read again from
    the card's journal, ``lost`` those the card no longer kept, ``ignored`` the messages read that it had no use
    for; ``app`` is the connection while logged in. ``on_status`` gets a :class:`GateStatus` when the gate closes
    (its card cannot write its store) and when it opens again; ``closed`` is the status while closed."""

    socket: str
    pin: str
    on_event: Callable[[GateEvent], None]
    card: bytes | None = None
    refresh_s: float = DEFAULT_REFRESH_S
    quiet_s: float = QUIET_S
    retry_s: float = 0.5
    on_status: Callable[[GateStatus], None] | None = None
    probe_s: float = PROBE_S
    closed: GateStatus | None = field(default=None, init=False)
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
                if isinstance(exc, HostError) and exc.reason == STORE_FAILED:  # (the login is a write of the card)
                    self._close(str(exc))
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
            self._open()  # (the card wrote its answers)
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
                if self.closed is not None and msg.mtype in _WRITTEN and msg.src == card:
                    self._open()
                    if not self._asking:  # (what a failed gate.journal order asked for)
                        await self._ask_journal(app, card)
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
                elif msg.mtype == hm.UNDELIVERABLE.code and msg.src == card:
                    self._not_taken(dict(hm.UNDELIVERABLE.parse(msg)))
                elif msg.mtype != STATE.code:  # (gate.state: the answer to the probe, taken above)
                    self.ignored += 1

    def _not_taken(self, notice: dict[str, Any]) -> None:
        """The host could not give the card an order of the service (``host.undeliverable``)."""
        if notice["mtype"] == JOURNAL.code:
            self._asking = False  # its answer will not come: asked again once the card can write
        if notice.get("code") == STORE_FAILED:
            self._close(notice["reason"])
        else:
            log.warning("gate service: the host could not give the gate card its order 0x%04x: %s", notice["mtype"],
                        notice["reason"])  # fmt: skip

    def _close(self, detail: str) -> None:
        """The gate card cannot write its store: say so once (and again only after it opened meanwhile)."""
        if self.closed is not None:
            return
        self.closed = status = closed_status(detail)
        log.error("gate service: %s (%s); %s", status.message, detail, status.hint)
        if self.on_status is not None:
            self.on_status(status)

    def _open(self) -> None:
        if self.closed is None:
            return
        self.closed = None
        log.warning("gate service: %s", OPEN.message)
        if self.on_status is not None:
            self.on_status(OPEN)

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
        """Every ``refresh_s``: a new session with the authority, and the probe (``gate.setup`` without fields:
        answered ``gate.state`` once the card wrote the answer, else the host's notice); while closed, the probe
        alone every ``probe_s``."""
        while not stop.is_set():
            if self.closed is None:
                await app.send(card, REFRESH)
            await app.send(card, SETUP)
            wait_s = self.refresh_s if self.closed is None else min(self.refresh_s, self.probe_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)

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
