"""`cardnet authority run` with a CA its authority card does not trust, and with a config that has no authority
card: refused in words before `ready`. Before, it started; its card refused every blocklist it signed, and it
signed a new epoch at every poll forever, logged at INFO only. The signer itself reports a blocklist its card
refuses as an error and waits longer each time before it signs again.

Real processes: `cardnet authority run` as a person starts it, and the authority's host (`cardnet host run`)
with the signer driven from this test, as `cardnet authority run` runs it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from waiting import wait_for

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.host.client import AppClient
from cardnet.services.authority import BlocklistRefused, BlocklistSigner

WAIT_S = 60.0  # a bound far above what must happen; nothing is measured


def _authority_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARDNET_PIN": PIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardnet.cli.main", "authority", "run", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"`cardnet authority run {' '.join(args)}` did not stop: it ran on\n{out}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_authority_run_with_a_ca_its_card_does_not_trust_is_refused_in_words(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",))
    other = pki.CertificateAuthority.create("another CA", now=datetime.now(UTC))
    other.save(tmp_path / "other.cnca")
    auth = net.hosts["auth"]
    r = _authority_run("--config", str(auth.config), "--ca", str(tmp_path / "other.cnca"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "ready" not in r.stdout, r.stdout
    words = " ".join(r.stderr.split())
    assert "CN=another CA" in words and "CN=trn CA" in words, words  # the CA given, and the one the card trusts
    assert str(net.uids["authority"]) in words, words
    assert "give --ca the CA file of the CA that issued the authority card" in words, words
    assert "Traceback" not in r.stderr, r.stderr
    r = _authority_run("--config", str(auth.config), "--ca", str(tmp_path / "other.cnca"), "--json")
    assert r.returncode == 2 and '"wrong_ca"' in r.stdout + r.stderr, (r.stdout, r.stderr)


def test_authority_run_on_a_host_without_an_authority_card_says_what_to_do(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",))
    config = net.hosts["a"].config  # a wallet's host: its card runs `trn`, not `authority`
    assert all("authority" not in c.get("applets", []) for c in tomllib.loads(config.read_text())["cards"])
    r = _authority_run("--config", str(config), "--ca", str(tmp_path / "ca.cnca"), "--json")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert '"no_authority_card"' in r.stdout + r.stderr, (r.stdout, r.stderr)
    r = _authority_run("--config", str(config), "--ca", str(tmp_path / "ca.cnca"))
    words = " ".join(r.stderr.split())
    assert f"{config} has no authority card" in words, words
    assert "found 0" not in words, words
    assert "`cardnet host run`" in words and "give --config the authority host's config" in words, words


def test_a_blocklist_the_card_refuses_is_an_error_and_the_signer_waits_longer_each_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    net = TrnNet(tmp_path, wallets=("a",))
    net.hosts["auth"].command = ("host", "run")  # the authority's host alone: its signer runs in this test
    with net:
        asyncio.run(_refused(net, tmp_path, caplog))


async def _refused(net: TrnNet, tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = net.hosts["auth"]
    other = pki.CertificateAuthority.create("another CA", now=datetime.now(UTC))
    domain = net.uids["authority"].domain
    # (nobody is blocked: --refresh has the signer sign its first epoch all the same, as it does for cards with a
    # maximum blocklist age)
    signer = BlocklistSigner(other, auth.socket, PIN, card=domain, every_s=0.01, refresh_s=3600)
    app = await AppClient.connect(auth.socket, card=domain)
    try:
        await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=PIN)
        assert (await app.recv_type(cm.PIN_RESULT))["ok"]
        assert await signer.once(app) is not None  # epoch 1 signed (the card holds none) and handed
        with pytest.raises(BlocklistRefused) as refused:  # the next poll learns the card refused it
            await signer.once(app)
        assert refused.value.reason == "blocklist_refused", repr(refused.value)
        assert "refused blocklist epoch 1 (bad_blocklist" in str(refused.value), str(refused.value)
        assert "--ca the CA that issued the authority card" in str(refused.value), str(refused.value)
    finally:
        await app.aclose()

    caplog.set_level(logging.INFO, logger="cardnet.authority")
    stop = asyncio.Event()
    task = asyncio.create_task(signer.run(stop))

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "cardnet.authority" and r.levelno >= logging.ERROR]

    async def refused_twice() -> bool:
        assert not task.done(), task
        return len(errors()) >= 2

    try:
        await wait_for("the signer to report two refused blocklists", refused_twice, WAIT_S)
    finally:
        stop.set()
        await task
    first, second = errors()[:2]
    assert "the authority card refused blocklist epoch" in first and first.endswith("trying again in 0.02 s"), first
    assert second.endswith("trying again in 0.04 s"), second  # the wait doubles: no tight loop
