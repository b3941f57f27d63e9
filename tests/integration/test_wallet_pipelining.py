"""The wallet library pipelines orders over real host processes: concurrent callers on one :class:`Wallet` send
their orders without waiting for each other's answers, and each still gets its own answer (an answer goes to the
oldest order waiting for its type, a ``card.refused`` to the oldest order of the refused mtype); when the host
dies, every waiting order fails with ``no_host`` and so does every later one, at once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from cardnet.applets.trn import MINT, SEND
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.services.wallet import Exchange, Voucher, Wallet, WalletError
from cardnet.wire import Message, MType, Uid

T1 = bytes.fromhex("00112233445566778899aabbccddeeff")
T2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")
NO_N1 = [bytes([0xA0 + i]) * 16 for i in range(4)]  # exchanges no card has
NO_OID = [bytes([0xB0 + i]) * 16 for i in range(3)]  # vouchers no card holds


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path, ttp=True) as n:
        yield n


def refused(got: object, reason: str, *words: str) -> None:
    """``got`` is the card's refusal with ``reason``, its detail naming every one of ``words``."""
    assert isinstance(got, WalletError), f"expected a refusal ({reason}), got {got!r}"
    assert got.reason == reason, got
    for word in words:
        assert word in str(got), f"{got!r} does not name {word}"


def voucher(got: object, oid: bytes) -> Voucher | None:
    assert isinstance(got, list), got
    assert all(isinstance(v, Voucher) for v in got), got
    return next((v for v in got if v.oid == oid), None)


def the_exchange(got: object, n1: bytes) -> Exchange:
    assert isinstance(got, list) and len(got) == 1 and isinstance(got[0], Exchange), got
    assert got[0].n1 == n1, got
    return got[0]


def test_concurrent_orders_on_one_wallet_are_pipelined_and_each_gets_its_own_answer(
    net: TrnNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        await net.setup_trace()
        for oid, to in ((T1, "a"), (T2, "b")):
            assert (await net.ask("agent", MINT, oid=oid, body=b"voucher " + oid[:1].hex().encode()))["ok"]
            await net.ask("agent", SEND, oid=oid, to=net.uids[to])
            await net.settle(to, oid)
        wa = await Wallet.open(net.host_of("a").socket, pin=PIN, card=net.uids["a"].domain)
        wb = await Wallet.open(net.host_of("b").socket, pin=PIN, card=net.uids["b"].domain)
        try:
            for w in (wa, wb):
                await w.set_ttp(net.uids["ttp"])
            x = await wa.offer(T1, T2, net.uids["b"])
            async with asyncio.timeout(20):
                while x.n1 not in {o.n1 for o in await wb.offers()}:
                    await asyncio.sleep(0.05)

            # what leaves on b's connection and when each caller got its answer, in the order it happened
            log: list[tuple[str, int]] = []
            send = wb.app.send

            async def logged_send(dst: Uid, mtype: MType, /, **fields: Any) -> Message:
                msg = await send(dst, mtype, **fields)
                log.append(("sent", mtype.code))
                return msg

            monkeypatch.setattr(wb.app, "send", logged_send)

            async def answered(i: int, order: Coroutine[Any, Any, Any]) -> Any:
                try:
                    return await order
                finally:
                    log.append(("answered", i))

            a_uid = net.uids["a"]
            orders: list[Coroutine[Any, Any, Any]] = [
                wb.vouchers(),  # 0
                wb.exchanges(),  # 1
                wb.accept(NO_N1[0]),  # 2
                wb.policy(ask=True),  # 3
                wb.answer_offer(NO_OID[0], accept=True),  # 4
                wb.transfer(NO_OID[1], a_uid),  # 5
                wb.policy(),  # 6
                wb.accept(NO_N1[1]),  # 7
                wb.vouchers(),  # 8
                wb.accept(x.n1),  # 9: the one that succeeds, among accepts that are refused
                wb.accept(x.n1),  # 10: no longer an offer
                wb.exchanges(),  # 11
                wb.policy(ask=False),  # 12
                wb.accept(NO_N1[2]),  # 13
                wb.vouchers(),  # 14
                wb.answer_offer(NO_OID[2], accept=False),  # 15
                wb.cancel(NO_OID[1]),  # 16
                wb.exchanges(),  # 17
                wb.policy(),  # 18
                wb.accept(NO_N1[3]),  # 19
            ]
            async with asyncio.timeout(20):
                got = await asyncio.gather(*(answered(i, o) for i, o in enumerate(orders)), return_exceptions=True)
            monkeypatch.undo()

            # pipelined: every order was on its way before the first answer came back (a lock would give one)
            first = next(k for k, (what, _) in enumerate(log) if what == "answered")
            assert first == len(orders), f"only {first} of {len(orders)} orders were sent before the first answer"
            assert sorted(i for what, i in log if what == "answered") == list(range(len(orders)))

            # each caller got its own answer; the card took the orders in the order they were sent
            for i in (0, 8):  # before the accept: T2 is b's, usable
                v = voucher(got[i], T2)
                assert v is not None and v.status == "enabled", got[i]
            v = voucher(got[14], T2)  # after it: T2 is promised to a
            assert v is None or v.status != "enabled", got[14]
            before = the_exchange(got[1], x.n1)
            assert before.role == "responder" and before.phase == "proposed" and before.give == T2, before
            accepted = got[9]
            assert isinstance(accepted, Exchange), accepted
            assert accepted.n1 == x.n1 and accepted.phase == "agreed", accepted
            refused(got[10], "refused", "not an offer waiting for an answer")
            for i in (11, 17):
                assert the_exchange(got[i], x.n1).phase != "proposed", got[i]
            for i, n1 in zip((2, 7, 13, 19), NO_N1, strict=True):  # same mtype: each refusal names its own n1
                refused(got[i], "no_exchange", n1.hex())
            refused(got[4], "no_offer", NO_OID[0].hex())
            refused(got[15], "no_offer", NO_OID[2].hex())
            refused(got[5], "illegal_move", "start")
            refused(got[16], "illegal_move", "cancel")
            asks = [p["ask"] if isinstance(p, dict) else p for p in (got[i] for i in (3, 6, 12, 18))]
            assert asks == [True, True, False, False], asks

            # the accepted exchange goes on to its end, and both wallets keep answering
            assert (await wa.wait(x.n1, timeout_s=20)).swapped
            assert (await wb.wait(x.n1, timeout_s=20)).swapped
            assert [(v.oid, v.status) for v in await wb.vouchers()] == [(T1, "enabled")]
        finally:
            await wa.close()
            await wb.close()

    asyncio.run(run())


def test_orders_waiting_when_the_host_dies_fail_with_no_host_and_so_do_later_ones(tmp_path: Path) -> None:
    async def run(net: TrnNet) -> None:
        host = net.host_of("a")
        w = await Wallet.open(host.socket, pin=PIN, card=net.uids["a"].domain)
        try:
            assert await w.vouchers() == []
            assert host.proc is not None
            host.proc.send_signal(signal.SIGSTOP)  # the host takes the orders into its socket and answers none
            try:
                orders: list[Coroutine[Any, Any, Any]] = [
                    w.vouchers(),
                    w.exchanges(),
                    w.policy(),
                    w.accept(NO_N1[0]),
                    w.transfer(NO_OID[0], net.uids["agent"]),
                    w.vouchers(),
                ]
                waiting = [asyncio.ensure_future(o) for o in orders]
                await asyncio.sleep(0.5)
                assert not any(t.done() for t in waiting), [t for t in waiting if t.done()]
            finally:
                host.kill()  # SIGKILL works on a stopped process
            async with asyncio.timeout(5):  # no hang: the reader sees the connection end
                got = await asyncio.gather(*waiting, return_exceptions=True)
            for g in got:
                assert isinstance(g, WalletError) and g.reason == "no_host", got
            async with asyncio.timeout(1):  # a later order fails at once
                with pytest.raises(WalletError) as later:
                    await w.exchanges()
            assert later.value.reason == "no_host"
        finally:
            async with asyncio.timeout(5):
                await w.close()

    with TrnNet(tmp_path, ("a",)) as net:
        asyncio.run(run(net))
