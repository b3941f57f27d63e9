"""An SMC controller's order that the module's host cannot give its card (the card's store cannot be written: a full
disk) fails at once with the host's words (``SmcError`` ``undeliverable``), not after the controller's answer
timeout: ``Module.ask`` reads the host's ``host.undeliverable`` for it. Once mended, the same order on the same
connection is answered.

A real module host process over its Unix socket; the fault is the kernel's: the running host's soft
``RLIMIT_FSIZE`` lowered to one byte with ``prlimit``, then raised again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from diskfull import disk_full

from cardnet.bench.smcnet import PIN, SmcNet
from cardnet.card import mtypes as cm
from cardnet.services.smc.controller import Module, SmcError


def test_an_order_the_module_card_cannot_take_fails_at_once_in_words(tmp_path: Path) -> None:
    with SmcNet(tmp_path, 1) as net:
        asyncio.run(_run(net))


async def _run(net: SmcNet) -> None:
    [hp] = net.hosts
    assert hp.proc is not None
    pid = hp.proc.pid
    module = await Module.open(hp.socket, pin=PIN, card=hp.domain)
    try:
        with disk_full(pid):  # the host's "disk" fails
            with pytest.raises(SmcError) as order:
                await module.ask(cm.PIN_VERIFY, cm.PIN_RESULT, pin=PIN)
            assert order.value.reason == "undeliverable"
            assert "cannot write its store" in str(order.value) and "free space" in str(order.value)
            assert hp.running
        assert (await module.ask(cm.PIN_VERIFY, cm.PIN_RESULT, pin=PIN))["ok"]
    finally:
        await module.close()
