"""An application's order that the host cannot give its card (the card's store cannot be written: a full disk)
ends the application's wait at once: ``AppClient.recv_type``, with which the gate service, the authority's
blocklist signer and ``cardnet authority`` read their card's answers, raises ``undeliverable`` with the host's
words on the host's ``host.undeliverable`` for its order (before: it skipped the notice and waited for its
timeout, and the services logged "TimeoutError").

Real host process, over its Unix socket; the fault is the kernel's: the running host's soft ``RLIMIT_FSIZE``
lowered to one byte with ``prlimit``, then raised again, and the same connection's order is answered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from diskfull import disk_full

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import mtypes as cm
from cardnet.host.client import AppClient
from cardnet.host.errors import HostError

WAIT_S = 30.0  # a bound far above what must happen; nothing is measured


def test_an_order_the_card_cannot_take_ends_recv_type_at_once_in_words(tmp_path: Path) -> None:
    with TrnNet(tmp_path, wallets=("a",)) as net:
        asyncio.run(_run(net))


async def _run(net: TrnNet) -> None:
    a = net.host_of("a")
    assert a.proc is not None
    pid = a.proc.pid
    app = await AppClient.connect(a.socket, card=net.uids["a"].domain)
    try:
        card = app.uid.card_uid()
        await app.send(card, cm.PIN_VERIFY, pin=PIN)
        assert (await app.recv_type(cm.PIN_RESULT))["ok"]
        with disk_full(pid):  # the host's "disk" fails
            await app.send(card, cm.PIN_VERIFY, pin=PIN)
            with pytest.raises(HostError) as order:
                await app.recv_type(cm.PIN_RESULT, timeout_s=WAIT_S)
            assert order.value.reason == "undeliverable"
            assert "cannot write its store" in str(order.value) and "free space" in str(order.value)
            assert f"0x{cm.PIN_VERIFY.code:04x}" in str(order.value)
            assert a.running
        await app.send(card, cm.PIN_VERIFY, pin=PIN)  # the same connection, the same order: answered now
        assert (await app.recv_type(cm.PIN_RESULT, timeout_s=WAIT_S))["ok"]
    finally:
        await app.aclose()
