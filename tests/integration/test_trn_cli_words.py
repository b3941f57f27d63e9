"""`cardnet trn` for a new user: arguments and the host are checked before the PIN is asked for; a malformed oid
names its option and says what an oid looks like; a card the host does not run is said in a person's words.

Real processes: the network's hosts (`cardnet authority run`, `cardnet host run`), and `cardnet` run on a real
terminal (a pty) where it asks for the PIN, as a person types it.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from cardnet.bench.trnnet import PIN, TrnNet

WAIT_S = 60.0  # a bound far above what must happen; nothing is measured
ABSENT = "ab" * 12  # a well-formed domain no host of the network runs


def _words(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).split())


def on_a_terminal(*args: str) -> tuple[str, bool]:
    """``cardnet ARGS`` on a terminal with no PIN given: what it wrote, and whether it asked for the PIN (then it
    is stopped there: nobody types one)."""
    env = {k: v for k, v in os.environ.items() if k != "CARDNET_PIN"} | {"COLUMNS": "400"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cardnet.cli.main", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)  # fmt: skip
    os.close(slave)
    out, asked = b"", False
    deadline = time.monotonic() + WAIT_S  # (a bound on a hung process, not a measurement)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the process ended and closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if b"PIN:" in out:
                    asked = True
                    break
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT_S)
        os.close(master)
    return _words(out.decode("utf-8", "replace")), asked


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARDNET_PIN": PIN, "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=WAIT_S, check=False)  # fmt: skip


def test_trn_commands_check_arguments_and_the_host_before_the_pin_and_say_what_is_wrong(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",))
    with net:
        socket = net.hosts["a"].socket

        # a malformed --card: a usage error naming it, before any PIN is asked for
        said, asked = on_a_terminal("trn", "list", "--socket", socket, "--card", "zz")
        assert not asked, said
        assert "Invalid value for '--card': 'zz'" in said and "24 hex digits" in said, said

        # a well-formed --card that the host does not run: the host says so, before any PIN is asked for
        said, asked = on_a_terminal("trn", "list", "--socket", socket, "--card", ABSENT)
        assert not asked, said
        assert f"the host at {socket} did not let this program use card {ABSENT}: no card of domain {ABSENT}" in (
            said
        ), said
        assert "--card DOMAIN" in said and "gave no port" not in said, said

        # all is well: then (and only then) the PIN is asked for
        said, asked = on_a_terminal("trn", "list", "--socket", socket)
        assert asked, said

        # a malformed oid names its option and says what an oid looks like
        to = f"{net.uids['a'].domain.hex()}:00000000"
        r = cardnet("trn", "send", "--socket", socket, "--oid", "0011", "--to", to)
        assert r.returncode == 2, (r.stdout, r.stderr)
        said = _words(r.stderr)
        assert "Invalid value for '--oid': '0011'" in said, said
        assert "an oid is 32 hex digits (16 bytes), e.g. 0123456789abcdef0123456789abcdef" in said, said
        r = cardnet("authority", "trace", "--socket", net.hosts["auth"].socket, "zz")
        assert "Invalid value for 'OID': 'zz'" in _words(r.stderr), r.stderr
        # a malformed Uid given to an option that repeats names its option too (before: "Invalid value: 'zz'")
        r = cardnet("trn", "policy", "--socket", socket, "--issuer", to, "--issuer", "zz")
        assert r.returncode == 2 and "Invalid value for '--issuer': 'zz' is not a Uid" in _words(r.stderr), r.stderr
        r = cardnet("smc", "plan", "-f", "median", "-m", to, "-m", "zz", "--out", str(tmp_path / "run.toml"))
        assert r.returncode == 2 and "Invalid value for '-m' / '--member': 'zz' is not a Uid" in _words(r.stderr)
        assert not (tmp_path / "run.toml").exists()

        # the PIN in the environment: the same words for a card the host does not run, after the PIN (the library's
        # path for trn, the application client's for authority)
        for args in (
            ("trn", "list", "--socket", socket),
            ("authority", "chain", "--socket", socket, "--oid", "00" * 16),
        ):
            r = cardnet(*args, "--card", ABSENT, "--json")
            assert r.returncode == 2, (r.stdout, r.stderr)
            assert '"reason": "no_card"' in r.stdout, r.stdout
            assert f"the host at {socket} did not let this program use card {ABSENT}: no card of domain" in r.stdout, (
                r.stdout
            )
            assert "gave no port" not in r.stdout and "the host refused" not in r.stdout, r.stdout


def test_a_socket_option_naming_a_folder_or_a_file_is_refused_before_the_pin(tmp_path: Path) -> None:
    """``--socket`` given a folder (or a plain file) says so at once; before, the PIN was asked for, and only then
    did the command fail to reach a host there."""
    plain = tmp_path / "not-a-socket"
    plain.write_text("x")
    for path, what in ((tmp_path, "a folder"), (plain, "a file")):
        said, asked = on_a_terminal("trn", "list", "--socket", str(path))
        assert not asked, said
        assert f"cannot reach the host at {path}: it is {what}, not a host's application socket" in said, said
        assert "app_socket" in said, said
