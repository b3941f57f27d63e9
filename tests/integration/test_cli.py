"""The command line as a person or a script uses it: real processes, real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def cardnet(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_demo_json_tells_the_whole_story() -> None:
    r = cardnet("demo", "--json")
    assert r.returncode == 0, r.stderr
    events: list[dict[str, Any]] = json.loads(r.stdout)["events"]
    kinds = [e.get("kind") for e in events]
    assert kinds.count("card") == 3
    refusals = {e["reason"] for e in events if e.get("kind") == "refused"}
    assert refusals == {"bad_signature", "privileged"}
    assert [e["ok"] for e in events if e.get("kind") == "pin"] == [False, True]
    assert [e["count"] for e in events if e.get("kind") == "reemit"] == [1]
    notes = sorted(e["note"] for e in events if e.get("kind") == "note")
    assert notes == ["Meet me at gate 3 at noon.", "Your ticket is in the post."]


def test_demo_keeps_its_stores_when_asked(tmp_path: Path) -> None:
    r = cardnet("demo", "--dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "d").glob("*.card.db")) == [
        "alice.card.db",
        "bob.card.db",
        "carol.card.db",
    ]
    again = cardnet("demo", "--dir", str(tmp_path / "d"))
    assert again.returncode != 0 and "already holds cards" in again.stderr and "Traceback" not in again.stderr


def test_bench_card_json_has_every_figure_beside_its_bound() -> None:
    r = cardnet("bench", "card", "--json", "--seconds", "0.5")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in (
        "steps_per_s",
        "grouped_steps_per_s",
        "sqlite_commit_per_s",
        "sqlite_commit_exclusive_per_s",
        "fsync_per_s",
    ):
        assert isinstance(d[key], int) and d[key] > 0, key
    assert d["group"] == 32
    assert set(d["targets"]) == {
        "steps_per_s >= 0.8 x sqlite_commit_per_s",
        "grouped_steps_per_s >= 10 x steps_per_s",
    }


def test_ca_and_card_create_then_show(tmp_path: Path) -> None:
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    assert oct(ca.stat().st_mode & 0o777) == "0o600"
    r = cardnet(
        "card",
        "create",
        "--ca",
        str(ca),
        "--store",
        f"sqlite:///{tmp_path / 'c.db'}",
        "--json",
        env={"CARDNET_PIN": "4321"},
    )
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    shown = json.loads(cardnet("card", "show", "--store", f"sqlite:///{tmp_path / 'c.db'}", "--json").stdout)
    assert shown["uid"] == made["uid"] and shown["outbox"] == 0
    cert = cardnet("ca", "cert", str(ca))
    assert cert.stdout.startswith("-----BEGIN CERTIFICATE-----")
    twice = cardnet("ca", "create", str(ca))
    assert twice.returncode != 0 and "already exists" in twice.stderr and "Traceback" not in twice.stderr


def test_bad_input_gets_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    r = cardnet("card", "show", "--store", "mysql://nowhere")
    assert r.returncode != 0 and "store URL" in r.stderr and "Traceback" not in r.stderr
    r = cardnet("card", "create", "--ca", str(tmp_path / "missing"), "--store", "sqlite:///x.db", "--pin", "1")
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = cardnet("bench", "card", "--group", "1")
    assert r.returncode != 0 and "--group" in r.stderr and "Traceback" not in r.stderr


def test_card_show_is_a_table_that_never_cuts_what_a_person_copies(tmp_path: Path) -> None:
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    deep = tmp_path / ("a-folder-with-a-long-name-" * 3)
    deep.mkdir()
    store = f"sqlite:///{deep / 'wallet.card.db'}"
    made = cardnet("card", "create", "--ca", str(ca), "--store", store, "--json", env={"CARDNET_PIN": "1"})
    uid = json.loads(made.stdout)["uid"]
    for columns in ("60", "30"):
        r = cardnet("card", "show", "--store", store, env={"COLUMNS": columns})
        assert r.returncode == 0, r.stderr
        rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in r.stdout.splitlines() if "│" in line}
        assert rows["store"] == store and rows["uid"] == uid and rows["domain"] == uid.split(":")[0]
        assert rows["outbox"] == "empty" and rows["memory used"].endswith(" bytes")
