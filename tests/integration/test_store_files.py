"""Store files as the command line makes and opens them: kinds, read commands, file modes.

Real CLI processes on real files: a vendor store is refused as a broker store,
read commands at a mistyped path fail and create nothing, and every store that
holds secrets (card, vendor, broker, wallet, with their -wal/-shm files) is
created 0600 whatever the umask.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import cardnet

from cardnet.card import Card
from cardnet.store import SqliteStore, StoreError, open_store


def one_error_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for n in needles:
        assert n in lines[0], r.stderr


def test_a_vendor_store_is_refused_as_a_broker_store(tmp_path: Path) -> None:
    v = tmp_path / "v.db"
    assert cardnet("millicent", "vendor", "init", "--store", str(v), "--id", "00000000000000a1").returncode == 0
    before = v.read_bytes()
    for args in (("broker", "status"), ("broker", "deposit", "--customer", "00" * 8, "--amount", "5")):
        r = cardnet("millicent", *args, "--store", str(v))
        one_error_line(r, str(v), "is a millicent-vendor store, not a millicent-broker store", "(reason: foreign)")
    assert v.read_bytes() == before
    with pytest.raises(StoreError) as ei:
        open_store(f"sqlite:///{v}", kind="card")
    assert ei.value.reason == "foreign"
    with pytest.raises(StoreError) as ei:  # nor does a card start in it
        Card(SqliteStore(str(v)))
    assert ei.value.reason == "foreign"
    assert cardnet("millicent", "vendor", "status", "--store", str(v)).returncode == 0


def test_a_store_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    open_store(f"sqlite:///{path}", kind="millicent-wallet", version=2).close()
    with pytest.raises(StoreError) as ei:
        open_store(f"sqlite:///{path}", kind="millicent-wallet")
    assert ei.value.reason == "unknown_version" and "version 2" in str(ei.value)


@pytest.mark.parametrize(
    "args",
    [
        ("card", "show", "--store", "sqlite:///{p}"),
        ("card", "show", "--cert", "--store", "sqlite:///{p}"),
        ("millicent", "list", "--wallet", "{p}"),
        ("millicent", "vendor", "status", "--store", "{p}"),
        ("millicent", "broker", "status", "--store", "{p}"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_read_commands_at_a_mistyped_path_fail_and_create_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    typo = tmp_path / "walet.db"
    r = cardnet(*(a.format(p=typo) for a in args))
    one_error_line(r, f"there is no store {typo}", "(reason: missing)")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # the most permissive umask: the modes must come from cardnet, not from it
    try:
        yield
    finally:
        os.umask(old)


def modes(*paths: Path) -> dict[str, str]:
    return {p.name: oct(p.stat().st_mode & 0o777) for p in paths}


def test_secret_stores_made_through_the_cli_are_0600(tmp_path: Path, open_umask: None) -> None:
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    card = tmp_path / "c.db"
    r = cardnet("card", "create", "--ca", str(ca), "--store", f"sqlite:///{card}", "--pin", "1234")
    assert r.returncode == 0, r.stderr
    v, b, lic = tmp_path / "v.db", tmp_path / "b.db", tmp_path / "lic.json"
    assert cardnet("millicent", "vendor", "init", "--store", str(v), "--id", "00000000000000a1").returncode == 0
    assert (
        cardnet("millicent", "vendor", "licence", "--store", str(v), "--broker", "bob", "--out", str(lic)).returncode
        == 0
    )
    r = cardnet("millicent", "broker", "add-licence", "--store", str(b), "--file", str(lic))
    assert r.returncode == 0, r.stderr
    files = [p for p in tmp_path.iterdir() if p.name.startswith(("c.db", "v.db", "b.db"))]
    assert {p.name for p in files} >= {"c.db", "v.db", "b.db"}
    assert set(modes(*files).values()) == {"0o600"}, modes(*files)


def test_secret_stores_made_through_the_library_are_0600_with_their_wal_and_shm(
    tmp_path: Path, open_umask: None
) -> None:
    card = Card.open(f"sqlite:///{tmp_path / 'c.db'}")  # exclusive: no -shm file
    shared = Card(SqliteStore(str(tmp_path / "d.db")))  # shared: -wal and -shm on disk
    wallet = open_store(f"sqlite:///{tmp_path / 'w.db'}", kind="millicent-wallet")
    try:
        with wallet.transaction() as t:
            t.put("x", b"k", b"v")
        files = list(tmp_path.iterdir())
        assert {p.name for p in files} >= {"c.db", "c.db-wal", "d.db", "d.db-wal", "d.db-shm", "w.db", "w.db-wal"}
        assert set(modes(*files).values()) == {"0o600"}, modes(*files)
    finally:
        card.close()
        shared.close()
        wallet.close()
