"""The next step `cardnet wallet` names carries the options the person gave: `cardnet wallet init --config
alice/wallet.toml` ends with "then `cardnet wallet show --config alice/wallet.toml`", and that command, typed as
shown (in the same folder), shows Alice's wallet. Before, the hint said `cardnet wallet show`: typed as shown it
read the default wallet config, and failed no_wallet.

Real processes: `cardnet wallet init`, `cardnet host run` on the host config it wrote, and the command of the hint.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from cardnet.crypto import pki

PIN = "4321"
WAIT_S = 60.0  # a bound far above what must happen; nothing is measured


def _cardnet(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=WAIT_S, check=False)  # fmt: skip


def test_wallet_init_names_the_next_command_with_its_own_config(tmp_path: Path) -> None:
    pki.CertificateAuthority.create("net CA", now=datetime.now(UTC)).save(tmp_path / "ca.cnca")
    home = tmp_path / "home"  # the default wallet config (none there): a hint without --config would read it
    home.mkdir()
    env = {**os.environ, "CARDNET_PIN": PIN, "CARDNET_HOME": str(home), "HOME": str(home)}
    env.pop("CARDNET_WALLET_CONFIG", None)
    r = _cardnet(["wallet", "init", "--config", "alice/wallet.toml", "--ca", "ca.cnca"], tmp_path, env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    text = " ".join(r.stdout.split())
    m = re.search(r"next: start your host with `([^`]*)`, then `([^`]*)`", text)
    assert m is not None, text
    start, show = shlex.split(m.group(1)), shlex.split(m.group(2))
    assert show == ["cardnet", "wallet", "show", "--config", "alice/wallet.toml"], show
    host = subprocess.Popen([sys.executable, "-m", "cardnet.cli.main", *start[1:]], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert host.stdout is not None
        line = host.stdout.readline()  # (blocks until the host prints its ready line, or exits)
        assert line.startswith("ready"), (line, host.poll())
        r = _cardnet(show[1:], tmp_path, env)  # the next step, typed as shown
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "your wallet" in r.stdout and "no tickets or vouchers on this card" in r.stdout, r.stdout
        oid, to = "11" * 16, "ab" * 12 + ":00000000"  # a ticket this card does not hold: the hint names `list`
        r = _cardnet(["wallet", "send", oid, "--to", to, "--config", "alice/wallet.toml"], tmp_path, env)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "`cardnet wallet list --config alice/wallet.toml` shows the tickets" in " ".join(r.stderr.split()), (
            r.stderr
        )
    finally:
        host.terminate()
        host.communicate(timeout=WAIT_S)
