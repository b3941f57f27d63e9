"""A damaged card store is refused, never started: real bits flipped in the file, read back by the CLI.

Every record of a card's store carries an HMAC tag under a key only the card
holds (docs/card.md, "What the store protects against"). Before it, a flipped
bit in a token record started the card with another token body, one in the
Uid record gave a card whose Uid no longer matched its certificate, and one in
the key record ended in a traceback.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from trnworld import issue, standard

from cardnet.card import Card
from cardnet.card.errors import CardError
from cardnet.crypto import pki, profile
from cardnet.store import SqliteStore
from cardnet.wire import Uid

OID = bytes(range(16))
TAG = profile.RECORD_TAG_BYTES


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=120, check=False
    )


def stored(path: Path, key: bytes) -> bytes:
    """The raw stored value (tag || value) of one card record, read with plain SQLite."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT v FROM kv WHERE tbl='card' AND k=?", (key,)).fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    return bytes(rows[0][0])


def flip_bit_in_file(path: Path, needle: bytes, offset: int) -> None:
    """Flip one bit of the file where ``needle`` (found once) has its byte ``offset``: the disk's damage."""
    assert not Path(f"{path}-wal").exists(), "the card must be closed: everything in the main file"
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    data[at + offset] ^= 0x04
    path.write_bytes(bytes(data))


def assert_refused(store: Path, what: str) -> None:
    before = store.read_bytes()
    r = cardnet("card", "show", "--store", f"sqlite:///{store}")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # one clear line, no traceback
    assert str(store) in lines[0] and what in lines[0] and "restore it from a backup" in lines[0]
    assert "(reason: damaged)" in lines[0]
    assert store.read_bytes() == before  # a refused store is not written to
    with pytest.raises(CardError) as ei:
        Card(SqliteStore(str(store)))
    assert ei.value.reason == "damaged"


def test_a_flipped_bit_in_a_token_record_is_refused(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    issue(w, OID, "alice", body=b"seat 12A on the night train")
    assert w.tokens("alice")[OID]["body"] == b"seat 12A on the night train"
    for c in w.cards.values():
        c.close()
    path = tmp_path / "alice.db"
    conn = sqlite3.connect(path)
    try:
        [(raw,)] = conn.execute("SELECT v FROM kv WHERE tbl='card' AND instr(v, ?) > 0", (b"night train",)).fetchall()
    finally:
        conn.close()
    raw = bytes(raw)
    flip_bit_in_file(path, raw, raw.index(b"night train"))  # "night train" -> "nicht train"
    assert_refused(path, "fails its integrity check")


@pytest.fixture
def cli_card(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    store = tmp_path / "c.db"
    r = cardnet("card", "create", "--ca", str(ca), "--store", f"sqlite:///{store}", "--pin", "1234")
    assert r.returncode == 0, r.stderr
    return store


def test_a_flipped_bit_in_the_uid_record_is_refused(cli_card: Path) -> None:
    raw = stored(cli_card, b"sys\x00uid")
    flip_bit_in_file(cli_card, raw, TAG + 3)  # a bit of the Uid's domain
    assert_refused(cli_card, "its record sys/756964 fails its integrity check")


def test_a_flipped_bit_in_the_key_record_is_refused(cli_card: Path) -> None:
    raw = stored(cli_card, b"sys\x00key")
    flip_bit_in_file(cli_card, raw, TAG + 40)  # inside the private key's DER
    assert_refused(cli_card, "its record sys/6b6579 fails its integrity check")


def test_a_flipped_bit_in_a_records_tag_is_refused(cli_card: Path) -> None:
    raw = stored(cli_card, b"sys\x00cert")
    flip_bit_in_file(cli_card, raw, 5)
    assert_refused(cli_card, "fails its integrity check")


def test_a_uid_that_does_not_match_the_certificate_is_refused(cli_card: Path) -> None:
    """A host that reads the integrity key out of the file can re-tag an edited record (the tag is no
    tamper resistance); the Uid is still checked against the card's certificate."""
    mac = profile.RecordMac(stored(cli_card, b"sys\x00mac")[TAG:])
    uid = Uid.from_bytes(stored(cli_card, b"sys\x00uid")[TAG:])
    forged = bytes(Uid(bytes(12), uid.port))
    conn = sqlite3.connect(cli_card)
    try:
        conn.execute(
            "UPDATE kv SET v=? WHERE tbl='card' AND k=?", (mac.tag(b"sys\x00uid", forged) + forged, b"sys\x00uid")
        )
        conn.commit()
    finally:
        conn.close()
    assert_refused(cli_card, f"its Uid record {forged.hex()} does not match its certificate")


def test_a_store_truncated_to_zero_is_refused_and_never_personalised_again(cli_card: Path) -> None:
    os.truncate(cli_card, 0)
    ca = cli_card.parent / "ca.cnca"
    r = cardnet("card", "create", "--ca", str(ca), "--store", f"sqlite:///{cli_card}", "--pin", "1234")
    assert r.returncode != 0
    assert "is empty (0 bytes)" in r.stderr and str(cli_card) in r.stderr and "(reason: empty)" in r.stderr
    assert "Traceback" not in r.stderr
    assert cli_card.stat().st_size == 0  # nothing was written: no new key, no new identity
    r = cardnet("card", "show", "--store", f"sqlite:///{cli_card}")
    assert r.returncode != 0 and "(reason: empty)" in r.stderr
    assert cli_card.stat().st_size == 0
