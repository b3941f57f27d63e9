"""`Module.open` (the SMC controller's logged-in connection to a host's module card) fails as an ``SmcError`` in
words, with what to do, whatever stops it: no host at the socket (``no_host``), a card domain the host does not run
(``no_card``, the host's cards named), a module card whose store cannot be written (``store_failed``). Before, only
the first was one: the host's own ``HostError`` escaped the others, so a caller catching ``SmcError`` (`cardnet smc
join`) let it through with no hint.

A real module host process over its Unix socket; the full disk is the kernel's (the running host's soft
``RLIMIT_FSIZE`` lowered with ``prlimit``, then raised again).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from diskfull import disk_full

from cardnet.bench.smcnet import PIN, SmcNet
from cardnet.services.smc.controller import Module, SmcError

WRONG = bytes.fromhex("0bad0bad0bad0bad0bad0bad")  # a card domain no host here runs (a mistyped --card)


def test_a_module_card_the_host_cannot_give_a_port_on_is_an_smc_error_with_what_to_do(tmp_path: Path) -> None:
    with SmcNet(tmp_path, 1) as net:
        asyncio.run(_run(net, tmp_path))
        # and `cardnet smc join --card` with a domain the host does not run says so before any PIN, with what to do
        [hp] = net.hosts
        run = tmp_path / "run.toml"
        other = "b0b000b0b000b0b000b0b000:00000000"
        planned = cardnet("smc", "plan", "-f", "median", "-m", str(net.uids[0]), "-m", other, "--start-in", "600",
                          "--out", str(run))  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        r = cardnet("smc", "join", "--run", str(run), "--socket", hp.socket, "--card", WRONG.hex(), "-i", "5", "--json")
        err = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and "Traceback" not in r.stderr and err["reason"] == "no_card", (r.stdout, r.stderr)
        assert f"no card of domain {WRONG.hex()} on this host (it has {hp.domain.hex()})" in err["message"], err
        assert "--card DOMAIN" in err["hint"], err
        # and for a person: what was wrong and what to do, without the host's jargon ("gave no port")
        r = cardnet("smc", "join", "--run", str(run), "--socket", hp.socket, "--card", WRONG.hex(), "-i", "5")
        said = " ".join(r.stderr.split())
        assert r.returncode == 2 and "Traceback" not in said and "gave no port" not in said, said
        assert f"error: cannot open the module card: the host at {hp.socket} did not let this program use card" in said
        assert "what to do:" in said and "--card DOMAIN" in said, said


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CARDNET_PIN"}  # (no PIN: the host is checked before one)
    return subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)  # fmt: skip


async def _run(net: SmcNet, tmp_path: Path) -> None:
    [hp] = net.hosts
    assert hp.proc is not None

    with pytest.raises(SmcError) as wrong:
        await Module.open(hp.socket, pin=PIN, card=WRONG)
    assert wrong.value.reason == "no_card", repr(wrong.value)
    assert str(wrong.value) == (
        f"cannot open the module card: the host at {hp.socket} did not let this program use card {WRONG.hex()}: no "
        f"card of domain {WRONG.hex()} on this host (it has {hp.domain.hex()})"
    ), str(wrong.value)
    assert wrong.value.hint is not None and "--card DOMAIN" in wrong.value.hint, wrong.value.hint

    with disk_full(hp.proc.pid), pytest.raises(SmcError) as full:  # the card cannot write its store: no port
        await Module.open(hp.socket, pin=PIN, card=hp.domain)
    assert full.value.reason == "store_failed", repr(full.value)
    assert full.value.hint is not None and "free space" in full.value.hint, full.value.hint
    assert str(full.value).startswith("cannot open the module card: the host at "), str(full.value)

    with pytest.raises(SmcError) as gone:  # (as before: no host at all)
        await Module.open(str(tmp_path / "no-host.sock"), pin=PIN, card=hp.domain)
    assert gone.value.reason == "no_host", repr(gone.value)

    module = await Module.open(hp.socket, pin=PIN, card=hp.domain)  # the right card, the disk mended: it opens
    await module.close()
    assert hp.running
