"""`cardnet card create` and `cardnet wallet init` on a disk that cannot take the store: a clear error that says
what to do, and nothing half-made (the same command succeeds on the same path once the disk has room).

The fault is the kernel's: the command runs as a process whose soft ``RLIMIT_FSIZE`` is a few KiB, so its writes past
that size fail (``EFBIG``) as SQLite's writes to a full disk do. With 1 byte the store's set-up (its schema) fails;
with more, the personalisation's commit does. Before, the set-up's failure was reported as SQLite's "cannot rollback
- no transaction is active (is it a cardnet store?)": its own rollback after SQLite had rolled back already.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cardnet.cli.main import run

PIN = "2468"


def _create(ca: Path, store: Path, fsize: int | None) -> subprocess.CompletedProcess[str]:
    return _cardnet(["card", "create", "--ca", str(ca), "--store", f"sqlite:///{store}", "--name", "dana"], fsize)


def _cardnet(args: list[str], fsize: int | None) -> subprocess.CompletedProcess[str]:
    """``cardnet ARGS --json`` as a process whose files cannot grow past ``fsize`` bytes (None: no limit)."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args, "--json"],
        preexec_fn=limit, capture_output=True, text=True, env={**os.environ, "CARDNET_PIN": PIN}, timeout=120,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("fsize", [1, 24 * 1024])
def test_card_create_on_a_full_disk_says_what_to_do_and_leaves_nothing_half_made(tmp_path: Path, fsize: int) -> None:
    ca = tmp_path / "ca.cnca"
    assert run(["ca", "create", str(ca), "--name", "disk CA"]) == 0
    store = tmp_path / "dana.card.db"
    full = _create(ca, store, fsize)
    assert full.returncode == 2, full.stdout
    error = json.loads(full.stdout)["error"]
    assert error["reason"] == "io" and "rollback" not in error["message"], error
    assert "free space" in (error["hint"] or ""), error
    assert "Traceback" not in full.stderr, full.stderr
    made = _create(ca, store, None)  # the disk has room again: the same command, the same path
    assert made.returncode == 0, (made.stdout, made.stderr)
    uid = json.loads(made.stdout)["uid"]
    shown = subprocess.run([sys.executable, "-m", "cardnet.cli.main", "card", "show", "--store", f"sqlite:///{store}",
                            "--json"], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert shown.returncode == 0 and json.loads(shown.stdout)["uid"] == uid, shown.stdout


def test_wallet_init_on_a_full_disk_makes_nothing_and_the_next_init_makes_the_wallet(tmp_path: Path) -> None:
    """The card's personalisation cannot be committed: before, init left its card.db behind, and every later init
    refused the folder as 'a wallet is already made there'."""
    ca = tmp_path / "ca.cnca"
    assert run(["ca", "create", str(ca), "--name", "disk CA"]) == 0
    config = tmp_path / "zed" / "wallet.toml"
    init = ["wallet", "init", "--config", str(config), "--ca", str(ca), "--name", "zed"]
    full = _cardnet(init, 24 * 1024)
    assert full.returncode == 2, full.stdout
    error = json.loads(full.stdout)["error"]
    assert error["reason"] == "io" and "free space" in (error["hint"] or ""), error
    assert list(config.parent.iterdir()) == []
    made = _cardnet(init, None)
    assert made.returncode == 0, (made.stdout, made.stderr)
    assert {p.name for p in config.parent.iterdir()} >= {"card.db", "host.toml", "wallet.toml"}


def test_service_inits_on_a_full_disk_make_nothing_and_the_next_init_makes_the_service(tmp_path: Path) -> None:
    """`speed broker init` (the broker's store and its SAM card) and `millicent vendor init`,
    with their files' growth stopped at several sizes, so that they fail at different points (the stores' set-up, the
    SAM's personalisation, its first orders): each failure says what to do and leaves no file behind, and the same
    command then makes the service. Before, a broker whose SAM was personalised when its store's write failed was
    refused ever after as 'the card in sam.db is personalised already'."""
    ca = tmp_path / "ca.cnca"
    assert run(["ca", "create", str(ca), "--name", "disk CA"]) == 0
    failed: dict[str, list[int]] = {}
    for fsize in (8 * 1024, 24 * 1024, 32 * 1024, 40 * 1024, 48 * 1024, 56 * 1024):
        for what in ("speed broker", "millicent vendor"):
            d = tmp_path / f"{what.replace(' ', '-')}-{fsize}"
            d.mkdir()
            args = {
                "speed broker": ["speed", "broker", "init", "--store", str(d / "broker.db"), "--ca", str(ca),
                                 "--sam-store", str(d / "sam.db")],
                "millicent vendor": ["millicent", "vendor", "init", "--store", str(d / "mv.db"), "--id",
                                     "00000000000000a1"],
            }[what]  # fmt: skip
            done = _cardnet(args, fsize)
            if done.returncode == 0:
                continue  # it fitted
            error = json.loads(done.stdout)["error"]
            assert "free space" in (error["hint"] or ""), (what, fsize, error)
            assert list(d.iterdir()) == [], (what, fsize, list(d.iterdir()))
            failed.setdefault(what, []).append(fsize)
            again = _cardnet(args, None)
            assert again.returncode == 0, (what, fsize, again.stdout)
    assert len(failed.get("speed broker", [])) >= 3, failed  # at different points of the init
    assert failed.get("millicent vendor"), failed
