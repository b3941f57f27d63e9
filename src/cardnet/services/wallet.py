"""The wallet library (TENeT 4.3.3, "high-level library"): a person's vouchers, transfers and exchanges, over
their card's host, with every eTP detail hidden.

An application opens a :class:`Wallet` on its host's application socket (``app_socket``), names the card when
the host runs several, and gives the PIN: the card then takes the owner's privileged orders from it. Every
method sends one order to the card and returns its answer as a value (:class:`Voucher`, :class:`Exchange`); a
refusal raises :class:`WalletError` with the card's reason. The card does the protocol; what the library adds
is waiting (:meth:`Wallet.wait`, driving recovery meanwhile) and events (:meth:`Wallet.events`): the card
pushes every change of a token or an exchange to the applications watching it (``trn.watch``), so nothing
polls. One task reads the connection: answers go to the order waiting for them, pushed changes to every
subscriber. Orders are pipelined: concurrent callers do not wait for each other's answers. The card takes a
connection's orders in the order they were sent and answers each once (its answer, or ``card.refused``
naming the order's mtype), so an answer belongs to the oldest order still waiting for that answer's type
(a refusal: for that mtype); the host steps orders that arrive together in one transaction (one fsync).

Operations and RFC 4154 (VTS-API): docs/wallet-api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from cardnet.applets import fairx as fa
from cardnet.applets import trn
from cardnet.applets.trn import LIST, RECOVER, RESULT, SEND, TOKENS
from cardnet.card import mtypes as cm
from cardnet.errors import CardnetError
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.host.core import HOST_PORT, STORE_FAILED
from cardnet.protocols import fairx as fx
from cardnet.services.admissions import AdmissionMemory, AdmissionsError
from cardnet.wire import Message, MType, Uid

ANSWER_TIMEOUT_S = 30.0
EVENT_QUEUE = 4096  # changes a subscriber may have unread; past that it is told it missed some (and resyncs)
MAX_RESYNCS = 8  # readings of the card's state in a row after host.missed notices (then the next notice starts over)
RECOVER_EVERY_S = 1.0  # how often wait() resends what an exchange waits for
NOTICE_EVERY_S = 0.25  # how often a wait asks the host whether the other card's host sent word (no card step)
GATE_STORE_FAILED = "gate_store_failed"  # redeem(): the gate's card cannot write its store (the voucher stays here)
TAKEN = "taken by the gate"  # redeem(): the voucher left this card for the gate's (its acknowledgement came)
PEER_STORE_FAILED = "peer_store_failed"  # wait_moved(), wait(): the other card cannot write its store (nothing lost)
TTP_STORE_FAILED = "ttp_store_failed"  # wait(): the TTP asked to settle cannot write its store (nothing lost)
UNWATCH_TIMEOUT_S = 2.0
FINISHED = frozenset(p.value for p in (*fx.FINISHED, fx.Phase.GAVE_UP))
WAITING_FOR_TTP = frozenset(p.value for p in fx.WAITING_FOR_TTP)
MOVING = frozenset({"disabled+O", "disabled", "trustless_disabled", "trustless"})  # a voucher on its way in or out


class WalletError(CardnetError):
    """The card refused an order (``reason`` is the card's), or the host could not be reached."""


def _no_host(exc: BaseException) -> WalletError:
    return WalletError("no_host", f"the connection to the host is gone: {exc}")


@dataclass(frozen=True, eq=False)  # each order is itself: found in the waiting line by identity
class _Order:
    """An order sent to the card, waiting for its answer (``reply``) or a refusal naming ``mtype``."""

    mtype: int
    reply: MType
    answer: asyncio.Future[dict[str, Any]]


@dataclass(frozen=True)
class Voucher:
    """A token on the card (TRN): its status says whether it is usable (``enabled``) or on its way."""

    oid: bytes
    status: str
    body: bytes | None = None
    peer: Uid | None = None  # the other card of a transfer under way
    issuer: Uid | None = None  # offered (the card's policy asks the owner): the agent card that minted it
    refused: str | None = None  # enabled again after a refused transfer: the receiver's reason

    @classmethod
    def of(cls, item: dict[str, Any]) -> Voucher:
        return cls(item["oid"], item["status"], item.get("body"), item.get("peer"), item.get("issuer"),
                   item.get("refused"))  # fmt: skip


@dataclass(frozen=True)
class Redemption:
    """How a gate answered a voucher presented to it (:meth:`Wallet.redeem`): ``taken`` (the transfer committed:
    the voucher left this card for good, and the gate's operator sees the verdict) or refused with the gate's
    ``reason`` (the voucher is usable on this card again). ``unremembered``: why an admission could not be written
    to the wallet's memory (:mod:`cardnet.services.admissions`), if it could not (the admission stands)."""

    oid: bytes
    gate: Uid
    taken: bool
    reason: str
    unremembered: str | None = None


@dataclass(frozen=True)
class Exchange:
    """One exchange as the card sees it: ``role`` initiator (this card offered) or responder."""

    n1: bytes
    role: str
    phase: str
    peer: Uid
    give: bytes  # the voucher this card gives
    want: bytes  # the voucher it gets
    body: bytes | None = None  # the voucher offered to this card (an offer waiting for the owner)
    issuer: Uid | None = None
    why: str | None = None
    note: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def swapped(self) -> bool:
        return self.phase == fx.Phase.DONE.value

    @classmethod
    def of(cls, item: dict[str, Any]) -> Exchange:
        fields: dict[str, Any] = {k: item.get(k) for k in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass(frozen=True)
class Event:
    """Something the application may want to react to: ``offer_received``, ``exchange_done``, ``resolved`` (done
    by the TTP's decision), ``aborted``, ``token_arrived`` (a voucher became usable on the card), ``token_left``;
    ``missed`` when changes were dropped: the application read its subscription too slowly (list again to resync),
    or the wallet fell behind reading its connection and the host dropped messages for it (``host.missed``): the
    wallet then read the card's state again, and the event carries it (``vouchers``, ``exchanges``: every voucher
    and exchange the card holds, None where the card could not be read)."""

    kind: str
    exchange: Exchange | None = None
    voucher: Voucher | None = None
    vouchers: tuple[Voucher, ...] | None = None
    exchanges: tuple[Exchange, ...] | None = None


def event_of(msg_type: int, item: dict[str, Any]) -> Event | None:
    """The event a pushed change means (None: a change no application needs to react to)."""
    if msg_type == fa.CHANGED.code:
        x = Exchange.of(item)
        if x.phase == fx.Phase.PROPOSED.value:
            return Event("offer_received", exchange=x)
        if x.phase == fx.Phase.DONE.value:
            return Event("resolved" if (x.note or "").startswith("resolved") else "exchange_done", exchange=x)
        if x.phase in (fx.Phase.ABORTED.value, fx.Phase.GAVE_UP.value):
            return Event("aborted", exchange=x)
        return Event("exchange_changed", exchange=x)
    v = Voucher.of(item)
    if v.status == "enabled":
        return Event("token_arrived", voucher=v)
    if v.status == trn.GONE:
        return Event("token_left", voucher=v)
    return Event("token_changed", voucher=v)


def _about(event: Event, oid: bytes) -> bool:
    """Whether ``event`` may change how voucher ``oid`` stands (``missed``: any change may have been dropped)."""
    return event.kind == "missed" or (event.voucher is not None and event.voucher.oid == oid)


@dataclass
class _Waiting:
    """One wait of the library for other cards (``peers``, card domains: the other party, and for an exchange the
    TTP): :meth:`Wallet.redeem`, :meth:`Wallet.wait_moved`, :meth:`Wallet.wait`. :meth:`next` returns what the
    waiter should do next, resending what the card waits for every ``recover_every_s`` meanwhile, and asking the
    host every ``NOTICE_EVERY_S`` whether a peer's host sent word that the peer's card cannot write its store
    (``host.undeliverable`` code ``store_failed``, which the host remembers and counts: ``seen`` is each peer's
    count and code when last asked; ``failed`` the peer of the last such word), so that the waiter learns it at once
    instead of at its deadline (host.route: no card step)."""

    wallet: Wallet
    changes: asyncio.Queue[Event]
    peers: tuple[bytes, ...]
    deadline: float  # loop time
    recover_every_s: float
    seen: list[tuple[int, str | None]]
    recover_at: float
    failed: bytes | None = None

    async def next(self, about: Callable[[Event], bool]) -> str:
        """``look`` (an event ``about`` what is waited for came, or a resend went out: read it again),
        ``store_failed`` (a new notice: the peer's card cannot write its store) or ``timeout`` (the deadline)."""
        loop = asyncio.get_running_loop()
        while True:
            left = self.deadline - loop.time()
            if left <= 0:
                return "timeout"
            for i, peer in enumerate(self.peers):
                notices = await self.wallet._notices(peer)
                if notices != self.seen[i]:
                    self.seen[i] = notices
                    if notices[1] == STORE_FAILED:
                        self.failed = peer
                        return "store_failed"
            try:
                async with asyncio.timeout(min(left, NOTICE_EVERY_S)):
                    while not about(await self.changes.get()):
                        pass
                return "look"
            except TimeoutError:
                if loop.time() >= self.recover_at:
                    await self.wallet.recover()
                    self.recover_at = loop.time() + self.recover_every_s
                    return "look"


def _cannot_write(peer: Uid | None) -> str:
    return f"the other card {peer} cannot write its store (its disk is full or failing; its host said so)"


def transfer_store_failed(v: Voucher) -> str:
    """Why :meth:`Wallet.wait_moved` stopped: voucher ``v`` (still on its way) cannot reach a card that cannot
    write; how it stands (TRN: a transfer whose commit is sent is the receiver's, docs/trn.md)."""
    head = f"{_cannot_write(v.peer)}, so it has not taken {v.oid.hex()}: nothing was lost"
    if v.status == "disabled+O":  # no commit sent: the card may cancel
        return (f"{head}; it is still yours: it moves by itself once their disk is mended (this card resends it), "
                "or cancel the transfer to have it usable here again")  # fmt: skip
    if v.status == "disabled":  # committed: it is the receiver's, whatever happens
        return (f"{head}; the transfer is committed: it finishes by itself once their disk is mended (this card "
                "resends the commit) and cannot be taken back")  # fmt: skip
    return f"{head}; the transfer finishes by itself once that card can write again"


def exchange_store_failed(x: Exchange) -> str:
    """Why :meth:`Wallet.wait` stopped: exchange ``x`` waits on a card that cannot write; how it stands."""
    head = f"{_cannot_write(x.peer)}, so exchange {x.n1.hex()} cannot go on now: nothing was lost"
    if x.phase == fx.Phase.OFFERED.value:
        return (f"{head}; your voucher is still yours, locked in the offer: the offer reaches them by itself once "
                "their disk is mended (this card resends it), or give it up to have your voucher back now")  # fmt: skip
    return (f"{head}; the exchange ends by itself once their disk is mended (this card resends), both vouchers "
            "swapped or neither; until then the TTP can settle it (resolve, abort)")  # fmt: skip


def ttp_store_failed(x: Exchange, ttp: Uid) -> str:
    """Why :meth:`Wallet.wait` stopped: exchange ``x`` waits for the decision of TTP ``ttp``, whose card cannot
    write its store; how it stands."""
    return (f"the TTP {ttp} cannot write its store (its disk is full or failing; its host said so), so it has not "
            f"decided exchange {x.n1.hex()}: nothing was lost; your request stands: this card asks the TTP again by "
            "itself, and the exchange ends once the TTP's disk is mended (both vouchers swapped or neither); ask the "
            "TTP's operator to free space on its disk")  # fmt: skip


class Wallet:
    """A person's wallet over their card (see the module)."""

    def __init__(self, app: AppClient) -> None:
        self.app = app
        self._waiting: deque[_Order] = deque()  # orders sent and not yet answered, oldest first
        self._gone: BaseException | None = None  # why the connection ended (every later order fails the same way)
        self._subscribers: list[asyncio.Queue[Event]] = []
        self._watching = False
        self._reader: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None  # reads the card's state again after a host.missed notice
        self._resync_again = False

    @classmethod
    async def open(cls, socket: str, *, pin: str | None, card: bytes | None = None) -> Wallet:
        """The wallet on ``card`` (the host's only card if None) at the host's application ``socket``, logged
        in with ``pin`` (None: not logged in; the card then takes only its unprivileged orders)."""
        try:
            app = await AppClient.connect(socket, card=card)
        except OSError as exc:
            raise WalletError("no_host", f"cannot reach the host at {socket}: {exc.strerror or exc}") from None
        except CardnetError as exc:
            raise WalletError(exc.reason, str(exc)) from None  # (the host's refusal in its words: which card, why)
        wallet = cls(app)
        wallet._reader = asyncio.get_running_loop().create_task(wallet._read())
        if pin is None:
            return wallet
        try:
            r = await wallet._ask(cm.PIN_VERIFY, cm.PIN_RESULT, pin=pin)
        except BaseException:
            await wallet.close()
            raise
        if not r["ok"]:
            await wallet.close()
            left = r["tries_left"]
            raise WalletError("wrong_pin", f"wrong PIN: the card refused it ({left} tries left)")
        return wallet

    async def close(self) -> None:
        if self._watching:  # the card stops pushing changes to this connection's port (best effort: it may be gone)
            with contextlib.suppress(WalletError, TimeoutError):
                async with asyncio.timeout(UNWATCH_TIMEOUT_S):
                    await self._ask(trn.WATCH, RESULT, on=False)
            self._watching = False
        for task in (self._resync, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.app.aclose()

    async def __aenter__(self) -> Wallet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def card(self) -> Uid:
        return self.app.uid.card_uid()

    # -- vouchers (TRN) --------------------------------------------------------------------------------
    async def vouchers(self) -> list[Voucher]:
        return [Voucher.of(t) for t in (await self._ask(LIST, TOKENS))["tokens"]]

    async def voucher(self, oid: bytes) -> Voucher | None:
        """Voucher ``oid`` as this card holds it, None if it holds none (one read, however many it holds)."""
        tokens = (await self._ask(LIST, TOKENS, oid=oid))["tokens"]
        return Voucher.of(tokens[0]) if tokens else None

    async def issue(self, oid: bytes, body: bytes) -> str:
        """Mint a voucher (an agent card: the issuer); the card's answer in words."""
        return str((await self._ask(trn.MINT, RESULT, oid=oid, body=body))["reason"])

    async def transfer(self, oid: bytes, to: Uid, *, traceable: bool = True) -> str:
        """Start moving voucher ``oid`` to card ``to`` (TRN); it is usable there once committed and traced."""
        return str((await self._ask(SEND, RESULT, oid=oid, to=to, traceable=traceable))["reason"])

    async def redeem(
        self,
        oid: bytes,
        gate: Uid,
        *,
        timeout_s: float = 10.0,
        recover_every_s: float = RECOVER_EVERY_S,
        memory: AdmissionMemory | None = None,
    ) -> Redemption:
        """Consume voucher ``oid`` at a gate (docs/gate.md): send it to the gate's card ``gate`` and wait for the
        gate's answer, resending meanwhile. If the gate has not answered within ``timeout_s`` the transfer is
        cancelled (the voucher is usable here again) and ``WalletError no_answer`` raised; once the gate copied
        it, it is the gate's (``taken``): only the commit can follow. If the gate's host says its card cannot write
        its store (``host.undeliverable`` code ``store_failed``, which this host remembers: :meth:`route`), the
        transfer is cancelled at once and the redemption is refused ``gate_store_failed``: the voucher is usable
        here again (if the gate took the copy after all, the cancel is refused and the gate's answer decides).
        An admission is written to ``memory`` (the holder's own record: :mod:`cardnet.services.admissions`)."""
        got = await self._redeem(oid, gate, timeout_s, recover_every_s)
        if got.taken and memory is not None:
            verdict = "admitted" if got.reason == TAKEN else "admitted_unacknowledged"
            try:
                memory.record(self.card.domain, oid, str(gate), verdict)
            except AdmissionsError as exc:
                return dataclasses.replace(got, unremembered=str(exc))
        return got

    async def _redeem(self, oid: bytes, gate: Uid, timeout_s: float, recover_every_s: float) -> Redemption:
        async with self.subscription() as changes:
            waiting = await self._wait_for(changes, (gate.domain,), timeout_s, recover_every_s)
            await self.transfer(oid, gate)
            about = lambda e: _about(e, oid)  # noqa: E731
            step = "look"
            while True:
                if step == "look":
                    mine = await self.voucher(oid)
                    if mine is None:
                        return Redemption(oid, gate, True, TAKEN)
                    if mine.status == "enabled":
                        return Redemption(oid, gate, False, mine.refused or "refused")
                    if mine.status == "disabled":  # the gate copied it and the commit is sent: it is the gate's
                        return Redemption(oid, gate, True, "taken by the gate (its acknowledgement is on its way)")
                elif step == "timeout":
                    with contextlib.suppress(WalletError):
                        await self.cancel(oid)
                    raise WalletError(
                        "no_answer",
                        f"the gate {gate} did not answer in {timeout_s:g} s: the voucher "
                        "was taken back (check the gate's Uid and route; a blocked device is refused)",
                    )
                else:  # store_failed
                    try:
                        await self.cancel(oid)
                    except WalletError:  # (the gate copied it meanwhile: its answer decides)
                        step = "look"
                        continue
                    return Redemption(oid, gate, False, GATE_STORE_FAILED)
                step = await waiting.next(about)

    async def _wait_for(
        self, changes: asyncio.Queue[Event], peers: tuple[bytes, ...], timeout_s: float, recover_every_s: float
    ) -> _Waiting:
        """A wait of ``timeout_s`` for card domains ``peers`` (:class:`_Waiting`), from this host's notices now."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        seen = [await self._notices(peer) for peer in peers]
        return _Waiting(self, changes, peers, now + timeout_s, recover_every_s, seen, now + recover_every_s)

    async def peer_store_failed(self, domain: bytes) -> bool:
        """Whether the last ``host.undeliverable`` notice this card got about card domain ``domain`` said that card
        cannot write its store (its disk full or failing). The host keeps the last notice: a transfer or exchange
        with a card mended since ends by itself, so a caller asks about the peers of what is still under way."""
        return (await self._notices(domain))[1] == STORE_FAILED

    async def _notices(self, domain: bytes) -> tuple[int, str | None]:
        """How many ``host.undeliverable`` notices this card got about ``domain``, and the last one's code."""
        got = await self.route(domain)
        return got.get("undeliverable_count", 0), got.get("undeliverable_code")

    async def cancel(self, oid: bytes) -> str:
        """Take back a voucher being sent, while its transfer cannot have been committed."""
        return str((await self._ask(trn.CANCEL, RESULT, oid=oid))["reason"])

    async def answer_offer(self, oid: bytes, *, accept: bool) -> str:
        """Take (``accept``) or refuse a voucher offered to this card (when its policy asks the owner)."""
        return str((await self._ask(trn.ANSWER, RESULT, oid=oid, accept=accept))["reason"])

    async def policy(self, *, issuers: list[Uid] | None = None, ask: bool | None = None) -> dict[str, Any]:
        """Set (or, with neither argument, show) which incoming vouchers this card takes: ``issuers`` (empty:
        any) and whether it ``ask``s the owner first."""
        fields: dict[str, Any] = {}
        if issuers is not None:
            fields["issuers"] = issuers
        if ask is not None:
            fields["ask"] = ask
        return await self._ask(trn.ACCEPT_POLICY, trn.ACCEPT_POLICY_IS, **fields)

    async def set_authority(self, authority: Uid) -> str:
        return str((await self._ask(trn.SET_AUTHORITY, RESULT, authority=authority))["reason"])

    async def reissue(self, oid: bytes, *, new_oid: bytes | None = None, body: bytes | None = None) -> dict[str, Any]:
        """Ask the authority to revoke lost voucher ``oid`` and reissue it (an agent card); its state."""
        fields: dict[str, Any] = {"oid": oid}
        if new_oid is not None:
            fields["new_oid"] = new_oid
        if body is not None:
            fields["body"] = body
        return await self._ask(trn.REISSUE, trn.REISSUE_STATE, **fields)

    async def route(self, domain: bytes) -> dict[str, Any]:
        """What the host knows about reaching ``domain`` (``host.route_is``: where, and a recent failure)."""
        return await self._order(Uid(self.app.uid.domain, HOST_PORT), hm.ROUTE, hm.ROUTE_IS, {"domain": domain})

    async def recover(self, oid: bytes | None = None) -> None:
        """Resend whatever transfers and exchanges wait for (the host also does it on its timer; no answer); with
        ``oid``, what token ``oid``'s transfer waits for alone (re-signed if at the commit), not every other one."""
        await self.app.send(self.card, RECOVER, **({} if oid is None else {"oid": oid}))

    # -- exchanges (fairx) -----------------------------------------------------------------------------
    async def offer(self, give: bytes, want: bytes, to: Uid) -> Exchange:
        """Offer voucher ``give`` (held here, usable) for ``want``, held by card ``to``."""
        return Exchange.of(await self._ask(fa.START, fa.STATE, give=give, want=want, to=to))

    async def exchanges(self) -> list[Exchange]:
        return [Exchange.of(x) for x in (await self._ask(fa.LIST, fa.EXCHANGES))["exchanges"]]

    async def offers(self) -> list[Exchange]:
        """Offers waiting for this wallet's answer (accept or reject)."""
        return [x for x in await self.exchanges() if x.role == fx.RESPONDER and x.phase == fx.Phase.PROPOSED.value]

    async def status(self, n1: bytes) -> Exchange:
        for x in await self.exchanges():
            if x.n1 == n1:
                return x
        raise WalletError("no_exchange", f"this card has no exchange {n1.hex()}")

    async def accept(self, n1: bytes) -> Exchange:
        return await self._exchange_order(fa.ACCEPT, n1)

    async def reject(self, n1: bytes) -> Exchange:
        return await self._exchange_order(fa.REJECT, n1)

    async def give_up(self, n1: bytes) -> Exchange:
        """Before the confirmation: take the offered voucher back (a late agreement is refused)."""
        return await self._exchange_order(fa.GIVE_UP, n1)

    async def resolve(self, n1: bytes) -> Exchange:
        """After the confirmation without the commitment: ask the TTP (repeatable)."""
        return await self._exchange_order(fa.RESOLVE, n1)

    async def abort(self, n1: bytes) -> Exchange:
        """After the agreement without the confirmation: ask the TTP (repeatable)."""
        return await self._exchange_order(fa.ABORT, n1)

    async def set_ttp(self, ttp: Uid) -> None:
        await self._ask(fa.SET_TTP, fa.TTP_IS, ttp=ttp)

    async def ttp(self) -> Uid | None:
        """The TTP this card follows (:meth:`set_ttp`); None while none is set."""
        got: Uid | None = (await self._ask(fa.SET_TTP, fa.TTP_IS)).get("ttp")
        return got

    async def wait(self, n1: bytes, *, timeout_s: float = 30.0, recover_every_s: float = RECOVER_EVERY_S) -> Exchange:
        """The exchange once it ended (swapped, aborted or given up), resending what it waits for meanwhile.

        Raises TimeoutError after ``timeout_s``: the exchange then still waits; the recovery order its phase
        allows (:meth:`give_up`, :meth:`resolve`, :meth:`abort`) ends it with the TTP's help. Raises
        ``WalletError peer_store_failed`` at once when the other card's host says that card cannot write its store
        (a full or failing disk), and ``ttp_store_failed`` when the exchange waits for the TTP's decision (resolve,
        abort) and the TTP's host says the same of the TTP's card: nothing was lost, the exchange stands as it is
        (the message says what may end it).
        """
        async with asyncio.timeout(timeout_s), self.subscription() as changes:
            x = await self.status(n1)
            if x.finished:
                return x
            ttp = await self.ttp()
            peers = (x.peer.domain,) if ttp is None else (x.peer.domain, ttp.domain)
            waiting = await self._wait_for(changes, peers, timeout_s, recover_every_s)
            about = lambda e: e.kind == "missed" or (e.exchange is not None and e.exchange.n1 == n1)  # noqa: E731
            while True:
                step = await waiting.next(about)
                x = await self.status(n1)
                if x.finished:
                    return x
                if step == "timeout":
                    raise TimeoutError
                if step != "store_failed":
                    continue
                if waiting.failed == x.peer.domain:
                    raise WalletError(PEER_STORE_FAILED, exchange_store_failed(x))
                if ttp is not None and x.phase in WAITING_FOR_TTP:  # (else word of another exchange's request)
                    raise WalletError(TTP_STORE_FAILED, ttp_store_failed(x, ttp))

    async def wait_moved(self, oid: bytes, *, timeout_s: float = 30.0,
                         recover_every_s: float = RECOVER_EVERY_S) -> Voucher | None:  # fmt: skip
        """Voucher ``oid`` once it is no longer on its way: None if it left this card (the receiver has it), else
        as it stands here (``enabled`` again after a refusal or a cancel), resending what its transfer waits for
        meanwhile. Raises TimeoutError after ``timeout_s``: the transfer then still goes on (:meth:`recover`).
        Raises ``WalletError peer_store_failed`` at once when the other card's host says that card cannot write its
        store (a full or failing disk): nothing was lost and nothing is cancelled (the message says how it stands)."""
        async with asyncio.timeout(timeout_s), self.subscription() as changes:
            v = await self.voucher(oid)
            if v is None or v.status not in MOVING or v.peer is None:
                return v
            waiting = await self._wait_for(changes, (v.peer.domain,), timeout_s, recover_every_s)
            while True:
                step = await waiting.next(lambda e: _about(e, oid))
                v = await self.voucher(oid)
                if v is None or v.status not in MOVING:
                    return v
                if step == "timeout":
                    raise TimeoutError
                if step == "store_failed":
                    raise WalletError(PEER_STORE_FAILED, transfer_store_failed(v))

    async def events(self) -> AsyncIterator[Event]:
        """What changes on the card, as events, as the card pushes them; runs until the caller stops iterating."""
        async with self.subscription() as changes:
            while True:
                yield await changes.get()

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[asyncio.Queue[Event]]:
        """A queue of every :class:`Event` from now on (the card is asked to push its changes to this wallet)."""
        queue: asyncio.Queue[Event] = asyncio.Queue(EVENT_QUEUE)
        self._subscribers.append(queue)
        try:
            if not self._watching:
                await self._ask(trn.WATCH, RESULT, on=True)
                self._watching = True
            yield queue
        finally:
            self._subscribers.remove(queue)

    # -- plumbing ----------------------------------------------------------------------------------------
    async def _exchange_order(self, mtype: MType, n1: bytes) -> Exchange:
        return Exchange.of(await self._ask(mtype, fa.STATE, n1=n1))

    async def ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        """Send any order to the card and wait for its answer ``reply`` (other protocols' libraries, such as
        SPEED's customer side, drive the card through this); a refusal raises :class:`WalletError`."""
        return await self._ask(mtype, reply, **fields)

    async def _ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        return await self._order(self.card, mtype, reply, fields)

    async def _order(self, dst: Uid, mtype: MType, reply: MType, fields: dict[str, Any]) -> dict[str, Any]:
        """Send an order to ``dst`` (the card, or the host's port) and wait for its answer."""
        if self._gone is not None:
            raise _no_host(self._gone)
        order = _Order(mtype.code, reply, asyncio.get_running_loop().create_future())
        self._waiting.append(order)  # before the send: the sends leave in this order (the connection's send lock)
        try:
            await self.app.send(dst, mtype, **fields)
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                got = await order.answer
        finally:
            if not order.answer.done():
                order.answer.cancel()
            if order in self._waiting:  # answered orders left it already (a missed deque.remove formats repr(order))
                self._waiting.remove(order)
        if reply is RESULT and not got.get("ok", True):
            raise WalletError("refused", str(got.get("reason", "refused")))
        return got

    def _deliver(self, msg: Message) -> None:
        """An answer to the oldest order waiting for it (see the module); one that no order waits for is dropped.
        A card's refusal, or the host's ``host.undeliverable`` notice for an order it could not give the card (its
        store cannot be written, say), fails the oldest order of that type."""
        failed: WalletError | None = None
        if msg.mtype == cm.REFUSED.code:
            p = cm.REFUSED.parse(msg)
            failed = WalletError(p["reason"], p["detail"] or p["reason"])
        elif msg.mtype == hm.UNDELIVERABLE.code and msg.src == self.card:
            p = hm.UNDELIVERABLE.parse(msg)
            failed = WalletError("undeliverable", f"the host could not give the order to the card: {p['reason']}")
        code = msg.mtype if failed is None else p["mtype"]  # the answer's type, or the failed order's
        for order in self._waiting:
            if order.answer.done() or (order.reply.code if failed is None else order.mtype) != code:
                continue
            self._waiting.remove(order)
            if failed is not None:
                order.answer.set_exception(failed)
            else:
                try:
                    order.answer.set_result(dict(order.reply.parse(msg)))
                except CardnetError as exc:
                    order.answer.set_exception(WalletError("bad_answer", f"the card's answer did not decode: {exc}"))
            return

    async def _read(self) -> None:
        """The one reader of the connection: pushed changes to the subscribers, answers to the orders."""
        try:
            while True:
                msg = await self.app.recv()
                if msg.mtype in (fa.CHANGED.code, trn.CHANGED.code):
                    schema = fa.CHANGED if msg.mtype == fa.CHANGED.code else trn.CHANGED
                    event = event_of(msg.mtype, dict(schema.parse(msg)))
                    if event is not None:
                        self._publish(event)
                elif msg.mtype == hm.MISSED.code and msg.src == self.card:
                    self._missed()
                else:
                    self._deliver(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the host went away (or sent what no order understands): orders fail, not hang
            self._gone = exc
            while self._waiting:
                order = self._waiting.popleft()
                if not order.answer.done():
                    order.answer.set_exception(_no_host(exc))

    def _missed(self) -> None:
        """The host dropped messages for this wallet (it read its connection too slowly): pushed changes among them
        are lost, so the card's state is read again and handed to the subscribers as a ``missed`` event. (An order
        whose answer was dropped gets none: it times out after ``ANSWER_TIMEOUT_S``.)"""
        if not self._subscribers:
            return  # nobody follows the changes; the next subscription starts from the card's state anyway
        if self._resync is not None and not self._resync.done():
            self._resync_again = True  # read once more after the reading under way: it may predate this notice
            return
        self._resync = asyncio.get_running_loop().create_task(self._read_again())

    async def _read_again(self) -> None:
        for _ in range(MAX_RESYNCS):
            self._resync_again = False
            vouchers: tuple[Voucher, ...] | None = None
            exchanges: tuple[Exchange, ...] | None = None
            with contextlib.suppress(WalletError, TimeoutError):
                vouchers = tuple(await self.vouchers())
            with contextlib.suppress(WalletError, TimeoutError):  # (a card without the fairx applet refuses)
                exchanges = tuple(await self.exchanges())
            self._publish(Event("missed", vouchers=vouchers, exchanges=exchanges))
            if not self._resync_again:
                return

    def _publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(Event("missed"))
            queue.put_nowait(event)
