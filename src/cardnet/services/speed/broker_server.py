"""The SPEED broker served over TCP: group commit, the receive limit, settlement and pruning on a timer."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cardnet.applets.speed import sam as sa
from cardnet.errors import CardnetError
from cardnet.protocols.speed import frames as fr
from cardnet.services.serving import MAX_GROUP, GroupCommitServer
from cardnet.services.speed.broker import BrokerCore
from cardnet.services.speed.broker_records import BrokerError
from cardnet.services.speed.broker_settlement import KEEP_DAYS, SETTLE_EVERY_S, SETTLE_HINTS
from cardnet.transport import DEFAULT_SERVER_LIMITS, RecvLimit, ServerLimits

log = logging.getLogger("cardnet.speed.broker")

RECV_LIMIT = RecvLimit(fr.BROKER_MAX_REQUEST, ((fr.COMPLAINT.code, fr.BROKER_MAX_COMPLAINT),))
"""A broker's receive limit: its largest request (``speed.order_msg``, 24,696 bytes), a complaint excepted (it carries
the deciphered products: 12,718,407 bytes); larger ones are refused unread. Its send limit stays the transport's."""


class BrokerServer(GroupCommitServer):
    """:class:`BrokerCore` over TCP with group commit (:mod:`cardnet.services.serving`: the requests waiting at once
    answered one after another in one transaction of the broker's store, nothing sent before it committed), and
    settlement (see :meth:`BrokerCore.settle`) when it starts and every :data:`SETTLE_EVERY_S` seconds, under
    :attr:`lock` (never beside a group), followed once a day by :meth:`BrokerCore.prune` (the SAM keeps
    ``keep_days`` whole days besides today; ``None``: never prune)."""

    def __init__(
        self,
        core: BrokerCore,
        *,
        server_limits: ServerLimits = DEFAULT_SERVER_LIMITS,
        max_group: int = MAX_GROUP,
        keep_days: int | None = KEEP_DAYS,
    ) -> None:
        if keep_days is not None and keep_days < 1:
            raise BrokerError("bad_keep", "the SAM keeps at least yesterday (keep_days >= 1): it is still settled")
        super().__init__(
            lambda msg: [core.handle(msg)],
            group=core.group,
            server_limits=server_limits,
            max_group=max_group,
            oversize=fr.too_large,
            recv_limit=RECV_LIMIT,
            too_large=fr.request_too_large,
            refused=fr.refused,
        )
        self.core = core
        self.keep_days = keep_days
        self._pruned_on: int | None = None  # the day this server last pruned the SAM (once a day is enough)
        self._settler: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        await self._settle()
        address = await super().start(host, port)
        self._settler = asyncio.get_running_loop().create_task(self._settling())
        return address

    async def aclose(self) -> None:
        if self._settler is not None:
            self._settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settler
        await super().aclose()

    async def _settle(self) -> None:
        """Settle yesterday and today; then, on a new day, settle and prune the days the SAM need not keep."""
        today = int(self.core.clock() // sa.DAY_S)
        async with self.lock:
            for day in (today - 1, today):
                try:
                    n = await asyncio.to_thread(self.core.settle, day)
                except CardnetError as exc:  # payments go on (this one waits); the next settlement tries again
                    log.error("could not settle day %d from the SAM's log: %s (%s)", day, exc,
                              SETTLE_HINTS.get(exc.reason, "see the error above"))  # fmt: skip
                    return
                if n:
                    log.warning("settled %d purse debit(s) of day %d from the SAM's log", n, day)
            if self.keep_days is None or self._pruned_on == today:
                return
            try:
                got = await asyncio.to_thread(self.core.prune, keep_days=self.keep_days)
            except CardnetError as exc:  # payments go on; the next day tries again
                log.error("could not prune the SAM's settled days: %s (%s)", exc,
                          SETTLE_HINTS.get(exc.reason, "the next day tries again"))  # fmt: skip
                return
            self._pruned_on = today
            if got.settled:
                log.warning("settled %d purse debit(s) of days %s from the SAM's log", got.settled, got.days)
            if got.entries:
                log.info("pruned %d log entries of days before %d from the SAM (%d bytes freed, %d open kept)",
                         got.entries, got.before_day, got.freed_bytes, got.open)  # fmt: skip
            if got.authorisations_ended:
                log.info("dropped %d sb.auth record(s) of payments settled from the SAM's log",
                         got.authorisations_ended)  # fmt: skip

    async def _settling(self) -> None:
        while True:
            await asyncio.sleep(SETTLE_EVERY_S)
            with contextlib.suppress(CardnetError):
                await self._settle()
