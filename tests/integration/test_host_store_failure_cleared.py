"""The ``store_failed`` notice a host remembers about another card is cleared once that card can write again.

Real host processes on 127.0.0.1; the fault is the kernel's (``diskfull.disk_full``: b's host process gets a soft
``RLIMIT_FSIZE`` of one byte, so every write of b's card store fails as on a full disk, then it is put back). While
b's disk is full, a sends b a ticket and offers b an exchange: b's host tells a's host ``store_failed`` and a's wallet
says so (``Wallet.peer_store_failed``, which the web wallet's list of what is under way shows as
``peer_store_failed``). Once the disk is mended the ticket moves (b's card committed steps and answered a's card):
the old notice must no longer be given, or the exchange still waiting for b's answer would be shown as failed for
ever.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from diskfull import disk_full
from test_peer_store_failure import tickets_and_ttp

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.services.wallet import Wallet

T1, T2, T3 = bytes([0x71]) * 16, bytes([0x72]) * 16, bytes([0x73]) * 16
WAIT_S = 60.0


def test_the_store_failed_notice_about_a_card_is_cleared_once_that_card_can_write_again(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a", "b"), ttp=True)
    with net:
        b = net.hosts["b"].proc
        assert b is not None
        b_domain = net.uids["b"].domain

        async def go() -> None:
            await tickets_and_ttp(
                net, (T1, "a", b"Final, seat 1"), (T2, "a", b"Final, seat 2"), (T3, "b", b"Final, seat 3")
            )
            async with await Wallet.open(net.hosts["a"].socket, pin=PIN) as wallet:
                assert not await wallet.peer_store_failed(b_domain)
                with disk_full(b.pid):
                    assert await wallet.transfer(T1, net.uids["b"]) == "start"
                    await wallet.offer(T2, T3, net.uids["b"])
                    for _ in range(300):
                        if await wallet.peer_store_failed(b_domain):
                            break
                        await asyncio.sleep(0.1)
                    assert await wallet.peer_store_failed(b_domain), net.hosts["a"].log_tail()
                    failed = await wallet.route(b_domain)
                    assert failed["undeliverable_code"] == "store_failed", failed
                # mended: the ticket moves, so b's card wrote and answered
                assert await wallet.wait_moved(T1, timeout_s=WAIT_S, recover_every_s=0.3) is None
                (x,) = await wallet.exchanges()
                assert x.phase == "offered", x  # still waiting for b's answer ...
                # ... and no longer said to wait for a card that cannot write
                assert not await wallet.peer_store_failed(b_domain), (
                    await wallet.route(b_domain),
                    net.hosts["a"].log_tail(),
                )
                mended = await wallet.route(b_domain)
                assert "undeliverable_code" not in mended, mended
            await net.settle("b", T1)

        asyncio.run(go())
