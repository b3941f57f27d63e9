"""The wallet library (TENeT 4.3.3, "high-level library"): a person's vouchers, transfers and exchanges, over
their card's host, with every eTP detail hidden.

An application opens a :class:`Wallet` on its host's application socket (``app_socket``), names the card when
the host runs several, and gives the PIN: the card then takes the owner's privileged orders from it. Every
method sends one order to the card and returns its answer as a value (:class:`Voucher`, :class:`Exchange`); a
refusal raises :class:`WalletError` with the card's reason. The card does the protocol; what the library adds
is waiting (:meth:`Wallet.wait`, driving recovery meanwhile) and events (:meth:`Wallet.events`, by comparing
what the card lists).

Operations and RFC 4154 (VTS-API): docs/wallet-api.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cardnet.applets import fairx as fa
from cardnet.applets.trn import LIST, RECOVER, RESULT, SEND, TOKENS
from cardnet.card import mtypes as cm
from cardnet.errors import CardnetError
from cardnet.host.client import AppClient
from cardnet.protocols import fairx as fx
from cardnet.wire import MType, Uid

ANSWER_TIMEOUT_S = 30.0
FINISHED = frozenset(p.value for p in (*fx.FINISHED, fx.Phase.GAVE_UP))


class WalletError(CardnetError):
    """The card refused an order (``reason`` is the card's), or the host could not be reached."""


@dataclass(frozen=True)
class Voucher:
    """A token on the card (TRN): its status says whether it is usable (``enabled``) or on its way."""

    oid: bytes
    status: str
    body: bytes | None = None
    peer: Uid | None = None

    @classmethod
    def of(cls, item: dict[str, Any]) -> Voucher:
        return cls(item["oid"], item["status"], item.get("body"), item.get("peer"))


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
    """Something the application may want to react to: ``offer_received``, ``exchange_done``, ``aborted``,
    ``token_arrived`` (a voucher became usable on the card)."""

    kind: str
    exchange: Exchange | None = None
    voucher: Voucher | None = None


class Wallet:
    """A person's wallet over their card (see the module)."""

    def __init__(self, app: AppClient) -> None:
        self.app = app
        self._one_at_a_time = asyncio.Lock()  # a connection answers orders in turn: concurrent callers queue

    @classmethod
    async def open(cls, socket: str, *, pin: str, card: bytes | None = None) -> Wallet:
        try:
            app = await AppClient.connect(socket, card=card)
        except OSError as exc:
            raise WalletError("no_host", f"cannot reach the host at {socket}: {exc.strerror or exc}") from None
        except CardnetError as exc:
            raise WalletError(exc.reason, f"the host refused: {exc}") from None
        wallet = cls(app)
        try:
            await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=pin)
            r = await wallet._answer(cm.PIN_RESULT)
        except BaseException:
            await app.aclose()
            raise
        if not r["ok"]:
            await app.aclose()
            left = r["tries_left"]
            raise WalletError("wrong_pin", f"wrong PIN: the card refused it ({left} tries left)")
        return wallet

    async def close(self) -> None:
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

    async def transfer(self, oid: bytes, to: Uid) -> None:
        await self._ask(SEND, RESULT, oid=oid, to=to)

    async def recover(self) -> None:
        """Resend whatever transfers and exchanges wait for (the host also does it on its timer)."""
        await self.app.send(self.card, RECOVER)

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

    async def wait(self, n1: bytes, *, timeout_s: float = 30.0, poll_s: float = 0.1) -> Exchange:
        """The exchange once it ended (swapped, aborted or given up), resending what it waits for meanwhile.

        Raises TimeoutError after ``timeout_s``: the exchange then still waits; the recovery order its phase
        allows (:meth:`give_up`, :meth:`resolve`, :meth:`abort`) ends it with the TTP's help.
        """
        async with asyncio.timeout(timeout_s):
            polls = 0
            while True:
                x = await self.status(n1)
                if x.finished:
                    return x
                polls += 1
                if polls % 10 == 0:
                    await self.recover()
                await asyncio.sleep(poll_s)

    async def events(self, *, poll_s: float = 0.2) -> AsyncIterator[Event]:
        """What changes on the card, as events (polling its lists): new offers, exchanges that end, vouchers
        that become usable. Runs until the caller stops iterating."""
        seen_x = {x.n1: x for x in await self.exchanges()}
        seen_v = {v.oid: v for v in await self.vouchers()}
        while True:
            await asyncio.sleep(poll_s)
            for x in await self.exchanges():
                before = seen_x.get(x.n1)
                seen_x[x.n1] = x
                if before is not None and before.phase == x.phase:
                    continue
                if x.phase == fx.Phase.PROPOSED.value:
                    yield Event("offer_received", exchange=x)
                elif x.phase == fx.Phase.DONE.value:
                    yield Event("exchange_done", exchange=x)
                elif x.phase in (fx.Phase.ABORTED.value, fx.Phase.GAVE_UP.value):
                    yield Event("aborted", exchange=x)
            for v in await self.vouchers():
                before_v = seen_v.get(v.oid)
                seen_v[v.oid] = v
                if v.status == "enabled" and (before_v is None or before_v.status != "enabled"):
                    yield Event("token_arrived", voucher=v)

    # -- plumbing ----------------------------------------------------------------------------------------
    async def _exchange_order(self, mtype: MType, n1: bytes) -> Exchange:
        return Exchange.of(await self._ask(mtype, fa.STATE, n1=n1))

    async def _ask(self, mtype: MType, reply: MType, **fields: Any) -> dict[str, Any]:
        async with self._one_at_a_time:
            await self.app.send(self.card, mtype, **fields)
            got = await self._answer(reply)
        if reply is RESULT and not got.get("ok", True):
            raise WalletError("refused", str(got.get("reason", "refused")))
        return got

    async def _answer(self, reply: MType) -> dict[str, Any]:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            while True:
                msg = await self.app.recv()
                if msg.mtype == cm.REFUSED.code:
                    p = cm.REFUSED.parse(msg)
                    raise WalletError(p["reason"], p["detail"] or p["reason"])
                if msg.mtype == reply.code:
                    return dict(reply.parse(msg))
