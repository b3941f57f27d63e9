"""The gate service: the operator's program beside the gate card (``cardnet gate run``).

The gate card (applet ``gate``, :mod:`cardnet.applets.gate`) does the admitting: it takes each ticket by TRN,
judges it, keeps it, records the admission and reports it to the authority. This service, logged in to the card
with the operator's PIN, is what the operator watches: it asks the card to push its changes (``trn.watch``),
hands each one over as a :class:`GateEvent`, and keeps the card's blocklist fresh by asking it to open a new
session with the authority every ``refresh_s`` (``gate.refresh``: the handshake brings the authority's newest
signed blocklist; while the authority is unreachable the card keeps the last one). A blocked device retries its
handshake on every recovery: the same refusal is handed over once per ``quiet_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cardnet.applets.gate import EVENT, REFRESH, REFUSED_KIND
from cardnet.applets.trn import RESULT, WATCH
from cardnet.card import mtypes as cm
from cardnet.errors import CardnetError
from cardnet.host.client import AppClient
from cardnet.wire import Uid

log = logging.getLogger("cardnet.gate")

DEFAULT_REFRESH_S = 10.0
QUIET_S = 30.0  # the same refusal (device, ticket, reason) is handed over once per this many seconds
MAX_QUIET = 4096  # refusals remembered for that


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

    @classmethod
    def of(cls, item: dict[str, Any]) -> GateEvent:
        return cls(
            item.get("kind", "verdict"), item["from"], item["at_ms"], item["verdict"], item["reason"], item.get("oid"),
            item.get("report"), item.get("report_reason"), item.get("body"),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` lines: bytes as hex (the oid) or text (the body), Uids as text."""
        d: dict[str, Any] = {
            "kind": self.kind, "holder": str(self.holder), "at_ms": self.at_ms, "verdict": self.verdict,
            "reason": self.reason, "oid": None if self.oid is None else self.oid.hex(), "report": self.report,
            "report_reason": self.report_reason,
            "body": None if self.body is None else self.body.decode("utf-8", "replace"),
        }  # fmt: skip
        return d


@dataclass
class GateService:
    """Watches the gate card at ``socket`` (see the module); ``on_event`` gets every :class:`GateEvent`."""

    socket: str
    pin: str
    on_event: Callable[[GateEvent], None]
    card: bytes | None = None
    refresh_s: float = DEFAULT_REFRESH_S
    quiet_s: float = QUIET_S
    retry_s: float = 0.5
    _quiet: dict[tuple[bytes, bytes, str], float] = field(default_factory=dict)

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
            await app.send(card, WATCH, on=True)
            await app.recv_type(RESULT)
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

    async def _read(self, app: AppClient) -> None:
        """Hand over every gate event the card pushes, a batch of messages at a time (a busy gate pushes hundreds a
        second: a reader slower than the card would lose them to the host's bound on what waits for it)."""
        code = EVENT.code
        while True:
            for msg in await app.conn.recv_many():
                if msg.mtype == code:
                    self._hand_over(GateEvent.of(dict(EVENT.parse(msg))))

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
