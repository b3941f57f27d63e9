"""The authority service: the trace registry's host plus the blocklist signer.

The authority's card (applet ``authority``) records movements and blocks the
senders of branches. This service, as its operator, polls the card for the
blocked set, signs a new blocklist epoch with the CA when it changed, and
hands it to the card (``trn.blocklist``); the card passes it to every card it
opens a session with, and cards refuse blocked peers from then on.

It talks to its card like any application: over the host's Unix socket, after
verifying the PIN — the service holds the CA key, never the card's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST, GRAPH, GRAPH_Q
from cardnet.applets.trn import BLOCKLIST
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.errors import CardnetError
from cardnet.host.client import AppClient, undeliverable
from cardnet.protocols import trace_view
from cardnet.wire import Uid

log = logging.getLogger("cardnet.authority")

MAX_BACKOFF_S = 300.0  # a blocklist the card refused is signed again at most this far apart (doubling up to it)


class BlocklistRefused(CardnetError):
    """The authority card refused a blocklist the signer handed it (``reason`` ``blocklist_refused``): signed with a
    CA the card does not trust, say. Signing again at once would be refused again."""


def ca_trusted(ca: pki.CertificateAuthority, roots_der: list[bytes]) -> bool:
    """Whether a card with the trusted roots ``roots_der`` takes a blocklist signed by ``ca`` (the card's own check:
    the blocklist's signature verifies under one of its roots)."""
    probe = ca.sign_blocklist(0, [], now=datetime.now(UTC))
    for root in roots_der:
        try:
            probe.verify(pki.cert_from_der(root))
        except CardnetError:
            continue
        return True
    return False


def ca_names(roots_der: list[bytes]) -> str:
    """The subjects of the CA certificates ``roots_der``, for people ("'CN=net' , 'CN=other'")."""
    names = []
    for root in roots_der:
        try:
            names.append(repr(pki.cert_from_der(root).subject.rfc4514_string()))
        except (CardnetError, ValueError):
            names.append("an unreadable certificate")
    return ", ".join(names) or "no CA"


@dataclass
class BlocklistSigner:
    """Signs a new blocklist epoch whenever the authority card's blocked set grows."""

    ca: pki.CertificateAuthority
    socket: str
    pin: str
    every_s: float = 1.0
    epoch: int = 0
    signed: frozenset[Uid] = frozenset()
    card: bytes | None = None  # the authority card's domain (needed when its host runs several cards)
    refresh_s: float = 0.0  # also re-sign an unchanged set this often (0: never), for cards with a max blocklist age
    signed_at: float = 0.0
    refusals: int = 0  # blocklists the card refused in a row (the wait before the next grows with them)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``; a slow or lost connection to the card is logged and retried. A blocklist the card
        refuses is logged as an error and signed again only after a wait that doubles each time, up to
        :data:`MAX_BACKOFF_S` (the card would refuse it again at once: it does not trust the CA, say)."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except PermissionError:  # a wrong PIN: retrying would only use up the card's PIN tries
                raise
            except BlocklistRefused as exc:
                self.refusals += 1
                wait_s = min(MAX_BACKOFF_S, self.every_s * 2**self.refusals)
                log.error("%s; trying again in %g s", exc, wait_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait_s)
            except (CardnetError, OSError, TimeoutError) as exc:
                log.warning("blocklist signer: %s: logging in again", exc or type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every_s)

    async def _session(self, stop: asyncio.Event) -> None:
        async with await AppClient.connect(self.socket, card=self.card) as app:
            await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=self.pin)
            if not (await app.recv_type(cm.PIN_RESULT))["ok"]:
                raise PermissionError("the authority card refused the operator PIN")
            while not stop.is_set():
                await self.once(app)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every_s)

    async def once(self, app: AppClient) -> pki.Blocklist | None:
        """One poll: read the card's blocked set, and sign and hand it a new epoch if it changed (or is stale, or
        the card does not hold the last epoch signed)."""
        return await self.hand(app, await self.poll(app))

    async def poll(self, app: AppClient, *, timeout_s: float = 10.0) -> dict[str, Any]:
        """The card's ``auth.blocked``: its blocked set and the epoch of the blocklist it holds. The card answers a
        connection's orders in order, so a refusal of the blocklist last handed (``trn.blocklist`` has no answer
        when taken) comes before it: it raises :class:`BlocklistRefused` with the card's words."""
        await app.send(app.uid.card_uid(), BLOCKED_LIST)
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await app.recv()
                if msg.mtype == BLOCKED.code:
                    got = dict(BLOCKED.parse(msg))
                    if got.get("epoch", 0) >= self.epoch:
                        self.refusals = 0
                    return got
                if msg.mtype == cm.REFUSED.code and msg.src == app.uid.card_uid():
                    p = cm.REFUSED.parse(msg)
                    if p["mtype"] == BLOCKLIST.code:
                        raise BlocklistRefused(
                            "blocklist_refused",
                            f"the authority card refused blocklist epoch {self.epoch} ({p['reason']}: {p['detail']}): "
                            "it does not hold it, and the cards it meets do not learn of the blocked devices; if "
                            "the card does not trust the CA, restart `cardnet authority run` with --ca the CA that "
                            "issued the authority card",
                        )
                undeliverable(msg, app.uid)

    async def hand(self, app: AppClient, got: dict[str, Any]) -> pki.Blocklist | None:
        """Sign and hand the card a new epoch if what :meth:`poll` ``got`` calls for it; the blocklist handed."""
        blocked = frozenset(got["uids"])
        stale = self.refresh_s > 0 and time.time() - self.signed_at >= self.refresh_s
        # the card holds an older epoch than the last one signed: it never took it (its host could not give it the
        # order: its store could not be written, say), so sign it again rather than think it delivered
        taken = got.get("epoch", 0) >= self.epoch
        if blocked == self.signed and not stale and taken:
            return None
        # Epochs only grow: after a restart of the service, continue above what the card already holds
        # (else cards that have a higher epoch would ignore every new blocklist).
        self.epoch = max(self.epoch, got.get("epoch", 0)) + 1
        bl = self.ca.sign_blocklist(self.epoch, blocked, now=datetime.now(UTC))
        await app.send(app.uid.card_uid(), BLOCKLIST, blocklist=bl.encode())
        self.signed = blocked
        self.signed_at = time.time()
        log.info("blocklist epoch %d signed: %d blocked device(s)", self.epoch, len(blocked))  # routine: not a warning
        return bl


MAX_REISSUES = 16  # a token's trace follows at most this many reissues (old oid -> new oid)
Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]  # sends auth.graph_q with these fields: the auth.graph


def app_ask(app: AppClient, timeout_s: float = 30.0) -> Ask:
    """An :data:`Ask` through ``app`` (logged in to the authority card); a refusal raises :class:`CardnetError`."""

    async def ask(fields: dict[str, Any]) -> dict[str, Any]:
        await app.send(app.uid.card_uid(), GRAPH_Q, **fields)
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await app.recv()
                if msg.mtype == cm.REFUSED.code:
                    p = cm.REFUSED.parse(msg)
                    raise CardnetError(p["reason"], f"the authority card refused the graph query: {p['detail']}")
                if msg.mtype == GRAPH.code:
                    return dict(GRAPH.parse(msg))

    return ask


async def fetch_graph(ask: Ask, oid: bytes | None = None) -> trace_view.Graph:
    """The authority's movement graph (``oid``: that token's, following its reissues), page by page."""
    graphs = []
    seen: set[bytes] = set()
    while True:
        builder = trace_view.GraphBuilder()
        fields: dict[str, Any] = {} if oid is None else {"oid": oid}
        while True:
            cursor = builder.add(await ask(fields))
            if cursor is None:
                break
            fields |= {"at": cursor[0], "start": cursor[1]}
        graph = builder.graph()
        graphs.append(graph)
        if oid is None:
            return graph
        seen.add(oid)
        chain = graph.chain(oid)
        if chain is None or chain.reissued_as is None or chain.reissued_as in seen or len(seen) > MAX_REISSUES:
            return trace_view.merge(graphs)
        oid = chain.reissued_as
