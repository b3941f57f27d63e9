"""Every service started on a store it cannot serve, with real processes (docs/store.md, "One running service per
store"): `authority run`, `ttp run`, `gate run`, `host run` (a card's store), `speed broker run` (its store and its
SAM card's), `speed vendor run`, `millicent broker run`, `millicent vendor run` and `ticketing run` (its store), each
given a store that is a directory, one this user may not read, one in a folder it may not write (new and existing),
one in a folder it may not enter, one whose claim file is another user's, a read-only one, one of random bytes, a
FIFO and one whose pages after the first are random bytes. Each exits 2 at once with the store's error in words (its
reason, what was wrong, what to do), never a traceback and never serving.

Before: a store damaged past its header stopped the hosts and the SPEED broker's SAM with "unexpected internal error:
DatabaseError" (exit 1), a read-only one stopped `ticketing run` so ("OperationalError") and let `ttp run`, `host run`
and the authority's agent card serve on a store they could not write; a directory or an unreadable file said "unable
to open database file (is it a cardnet store?)", a FIFO "disk I/O error" with a hint to free space on the disk, and
another user's claim file was to be mended by making the folder writable, a folder it may not enter "may not read
and write it".

The folder and file modes are a process's limits only when it is not root: as root the commands run in a user
namespace of their own (``unshare -U``), where root's files are out of its reach as another user's would be.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hostprocs import cardnet

from cardnet.bench.ticketnet import TicketNet
from cardnet.bench.trnnet import PIN, TrnNet

# case: (reason, words of the message, words of the hint)
EXPECTED = {
    "directory": ("io", "it is a directory, not a store file", "give a file's path"),
    "unreadable": ("io", "this user may not read and write it (Permission denied), and a running service writes",
                   "writable by the user this runs as"),
    "read-only folder, new": ("io", "-owner: Permission denied", "make {folder} writable by the user this runs as"),
    "read-only folder": ("io", "-owner: Permission denied", "make {folder} writable by the user this runs as"),
    "folder it may not enter": ("io", "this user may not enter its folder", "searchable by the user this runs as"),
    "another user's claim file": ("io", "-owner: Permission denied", "is another user's (a service ran on"),
    "read-only file": ("io", "this user may not read and write it (Permission denied)", "writable by the user"),
    "random bytes": ("io", "file is not a database (is it a cardnet store?)", None),
    "a FIFO": ("io", "it is not a regular file (a FIFO, a device or a socket)", "give the path of a store file"),
    "damaged pages": ("damaged", "is damaged (database disk image is malformed): restore it from a backup", None),
}  # fmt: skip


def as_another_user() -> list[str]:
    """The prefix that runs a command where file modes bind it: none but for root (``unshare -U``)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-U", "true"], check=False).returncode != 0:
        reason = "running as root without `unshare -U`: a file mode does not bind root, so the cases cannot be made"
        print(reason)
        if os.environ.get("CI") == "true":  # CI's machine has it (util-linux): there a missing one is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    return ["unshare", "-U"]


def broken(tmp: Path, label: str, good: Path) -> dict[str, Path]:
    """A store for each case, from the good store ``good``."""
    made: dict[str, Path] = {}
    made["directory"] = tmp / f"{label}.dir"
    made["directory"].mkdir()
    made["unreadable"] = shutil.copy(good, tmp / f"{label}.unreadable.db")
    made["unreadable"].chmod(0)
    for case, old in (("read-only folder, new", None), ("read-only folder", good)):
        folder = tmp / f"{label}.ro{'' if old else '-new'}"
        folder.mkdir()
        made[case] = folder / "store.db"
        if old:
            shutil.copy(old, made[case])
        folder.chmod(0o555)
    folder = tmp / f"{label}.closed"
    folder.mkdir()
    made["folder it may not enter"] = shutil.copy(good, folder / "store.db")
    folder.chmod(0)
    made["another user's claim file"] = shutil.copy(good, tmp / f"{label}.claimed.db")
    claim = tmp / f"{label}.claimed.db-owner"  # (left by a service run as another user: this one may not open it)
    claim.write_text("{}")
    claim.chmod(0)
    made["read-only file"] = shutil.copy(good, tmp / f"{label}.readonly.db")
    made["read-only file"].chmod(0o444)
    made["random bytes"] = tmp / f"{label}.random.db"
    made["random bytes"].write_bytes(os.urandom(8192))
    made["a FIFO"] = tmp / f"{label}.fifo.db"
    os.mkfifo(made["a FIFO"])
    made["damaged pages"] = shutil.copy(good, tmp / f"{label}.damaged.db")
    with open(made["damaged pages"], "r+b") as f:  # the header page stays: SQLite opens it, reading it fails
        f.seek(4096)
        f.write(os.urandom(good.stat().st_size - 4096))
    return made


@pytest.mark.slow
def test_every_service_on_a_store_it_cannot_serve_says_why_and_exits(tmp_path: Path) -> None:
    prefix = as_another_user()
    runs: list[tuple[str, str, list[str], Path, Path]] = []  # (service, case, command, cwd, store)

    def by_config(label: str, cmd: list[str], config: Path, old: str, good: Path) -> None:
        text = re.sub(r'listen = "127\.0\.0\.1:\d+"', 'listen = "127.0.0.1:0"', config.read_text())
        text = re.sub(r'app_socket = "([^"]+)"', r'app_socket = "bad-\1"', text)
        for case, store in broken(tmp_path / "bad", label, good).items():
            new = config.with_name(f"bad-{label}-{len(runs)}.toml")
            new.write_text(text.replace(old, f'"sqlite:///{store}"' if "sqlite" in old else f'"{store}"'))
            runs.append((label, case, [*cmd, "--config", str(new)], config.parent, store))

    def by_option(label: str, cmd: list[str], good: Path) -> None:
        for case, store in broken(tmp_path / "bad", label, good).items():
            runs.append((label, case, [a.replace("@STORE@", str(store)) for a in cmd], tmp_path, store))

    (tmp_path / "bad").mkdir()
    trn = tmp_path / "trn"
    trn.mkdir()
    TrnNet(trn, (), ttp=True, ttp_host=True, gates=("gate",), exclusive=False)  # (its files only: nothing runs)
    by_config("authority", ["authority", "run", "--ca", str(trn / "ca.cnca")], trn / "auth.toml",
              '"sqlite:///authority.card.db"', trn / "authority.card.db")  # fmt: skip
    by_config("agent", ["authority", "run", "--ca", str(trn / "ca.cnca")], trn / "auth.toml",
              '"sqlite:///agent.card.db"', trn / "agent.card.db")  # fmt: skip
    by_config("ttp", ["ttp", "run"], trn / "ttp.toml", '"sqlite:///ttp.card.db"', trn / "ttp.card.db")
    by_config("gate", ["gate", "run"], trn / "gate.toml", '"sqlite:///gate.card.db"', trn / "gate.card.db")
    by_config("host", ["host", "run"], trn / "ttp.toml", '"sqlite:///ttp.card.db"', trn / "ttp.card.db")
    tk = tmp_path / "tk"
    tk.mkdir()
    TicketNet(tk, (), ["A1"], gates=())
    by_config("ticketing", ["ticketing", "run"], tk / "tickets.toml", '"tickets.db"', tk / "tickets.db")
    t = str(tmp_path)
    cardnet("speed", "broker", "init", "--store", f"{t}/sb.db", "--ca", str(trn / "ca.cnca"), "--sam-store",
            f"{t}/sam.db", "--pin", PIN)  # fmt: skip
    (tmp_path / "broker.pem").write_text(cardnet("speed", "broker", "cert", "--store", f"{t}/sb.db").stdout)
    cardnet("speed", "vendor", "init", "--store", f"{t}/sv.db", "--ca", str(trn / "ca.cnca"), "--account", "V-1",
            "--broker-cert", f"{t}/broker.pem")  # fmt: skip
    cardnet("millicent", "vendor", "init", "--store", f"{t}/mv.db", "--id", "00000000000000a1")
    cardnet("millicent", "vendor", "licence", "--store", f"{t}/mv.db", "--broker", "bob", "--out", f"{t}/lic.json")
    cardnet("millicent", "broker", "add-licence", "--store", f"{t}/mb.db", "--file", f"{t}/lic.json")
    listen = ["--listen", "127.0.0.1:0"]
    by_option("speed broker", ["speed", "broker", "run", "--store", "@STORE@", "--sam-store", f"{t}/sam.db", *listen],
              tmp_path / "sb.db")  # fmt: skip
    by_option("speed SAM", ["speed", "broker", "run", "--store", f"{t}/sb.db", "--sam-store", "@STORE@", *listen],
              tmp_path / "sam.db")  # fmt: skip
    by_option("speed vendor", ["speed", "vendor", "run", "--store", "@STORE@", *listen], tmp_path / "sv.db")
    by_option("millicent broker", ["millicent", "broker", "run", "--store", "@STORE@", *listen], tmp_path / "mb.db")
    by_option("millicent vendor", ["millicent", "vendor", "run", "--store", "@STORE@", *listen], tmp_path / "mv.db")

    def run(cmd: list[str], cwd: Path) -> tuple[int | str, str]:
        try:
            r = subprocess.run([*prefix, sys.executable, "-m", "cardnet.cli.main", *cmd], cwd=cwd, capture_output=True,
                               text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
                               env={**os.environ, "CARDNET_PIN": PIN})  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            return "none after 30 s (it served, or hung; killed)", str(exc.stdout or "")
        return r.returncode, r.stderr

    # Runs that share a store or an app socket (the other card of a host, the broker's other store) one at a time:
    # else one would be refused in_use by the other's claim.
    together = {"agent": "authority", "host": "ttp", "speed SAM": "speed broker"}
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(together.get(r[0], r[0]), []).append(i)
    done: dict[int, tuple[int | str, str]] = {}

    def one_by_one(group: list[int]) -> None:
        for i in group:
            done[i] = run(runs[i][2], runs[i][3])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one_by_one, groups.values()))
    wrong = []
    for i, (service, case, _, _, store) in enumerate(runs):
        code, stderr = done[i]
        reason, words, hint = EXPECTED[case]
        hint = hint and hint.format(folder=store.parent)
        said = " ".join(stderr.split())  # (the words as a person reads them, however the lines were wrapped)
        if code != 2 or "Traceback" in said or f"(reason: {reason})" not in said or words not in said \
                or (hint and hint not in said.partition("what to do: ")[2]):  # fmt: skip
            wrong.append(f"{service}, {case}: exit {code}: {said}")
    assert not wrong, f"{len(wrong)} of {len(runs)}:\n" + "\n".join(wrong)


def test_a_command_reading_a_store_in_a_folder_it_may_not_enter_says_so(tmp_path: Path) -> None:
    """Not "there is no store": whether it is there is hidden from this user, and the folder is what to mend."""
    prefix = as_another_user()
    folder = tmp_path / "closed"
    folder.mkdir()
    cardnet("millicent", "vendor", "init", "--store", str(folder / "v.db"), "--id", "00000000000000a1")
    folder.chmod(0)
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "cardnet.cli.main", "millicent", "vendor", "status",
                            "--store", str(folder / "v.db")], capture_output=True, text=True, timeout=60,
                           check=False)  # fmt: skip
    finally:
        folder.chmod(0o700)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and "Traceback" not in said, said
    assert f"cannot open store {folder / 'v.db'}: this user may not enter its folder {folder} (Permission denied) " \
        f"(reason: io) what to do: make {folder} searchable by the user this runs as" in said, said  # fmt: skip
