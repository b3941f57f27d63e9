"""The wallet remembers its own admissions at gates (docs/wallet.md, "Walk through a gate"), with real processes on
127.0.0.1: ``cardnet gate run`` beside ``cardnet authority run`` and a wallet host, and ``cardnet wallet`` processes
on a wallet config beside which the record is written (``admissions.json``, 0600).

Presented a second time, a ticket the gate took is no longer on the card: ``wallet enter`` says when and at which
gate it was admitted (not just "this card does not hold it"), and ``wallet show OID`` and ``wallet list`` say so too.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from test_gate_processes import Screen, event, give
from waiting import wait_for

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.cli import wallet_config

T1 = bytes([0x61]) * 16
WAIT_S = 30.0


def wallet(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """``cardnet wallet ARGS --config CONFIG --json`` as a process of its own: exit code and its JSON."""
    r = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "wallet", *args, "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "CARDNET_PIN": PIN}, check=False,
    )  # fmt: skip
    assert "Traceback" not in r.stderr, (r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout)


def assert_admitted(got: dict[str, Any], gate: str) -> None:
    """The success of `wallet enter` and `trn send --gate` under --json, whole: what was done, in fields of its own
    (``reason`` is the error objects' word); the verdict as the wallet's record words it (whether the gate's
    acknowledgement had come, which depends on timing)."""
    verdict = got.get("verdict")
    assert verdict in ("admitted", "admitted_unacknowledged"), got
    message = f"admitted: the gate {gate} took ticket {T1.hex()} (it is used up now: walk in)"
    assert got == {"oid": T1.hex(), "gate": gate, "admitted": True, "verdict": verdict, "recorded": True,
                   "record_note": None, "message": message}, got  # fmt: skip


def _alice_holds_t1(net: TrnNet, tmp_path: Path, content: bytes) -> tuple[str, Path]:
    """Once ``net`` runs: its trace and gate set up, a's card given ticket ``T1`` (``content``); the gate's name and
    a's wallet config (written in ``tmp_path``/alice)."""
    gate = str(net.uids["g"])
    config = tmp_path / "alice" / "wallet.toml"
    config.parent.mkdir()
    wallet_config.save(config, {"socket": net.hosts["a"].socket, "card": net.uids["a"].domain.hex()})

    async def go() -> None:
        await net.setup_trace()
        await net.setup_gates()
        await give(net, T1, "a", content)

    asyncio.run(go())
    return gate, config


def test_a_ticket_entered_again_is_said_admitted_at_its_gate_and_time(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",), gate_refresh_s=0.5)
    with net:
        screen = Screen(net.hosts["g"])
        gate, config = _alice_holds_t1(net, tmp_path, b"Final, seat 4")
        before = datetime.now(UTC).replace(microsecond=0)
        code, got = wallet(config, "enter", T1.hex(), "--gate", gate, "--wait", str(WAIT_S))
        assert code == 0, got
        assert_admitted(got, gate)
        after = datetime.now(UTC)
        asyncio.run(screen.wait("T1 admitted", event("verdict", T1, verdict="admitted")))

        async def gone() -> bool:  # the gate's acknowledgement reached the card: T1 is no longer on it
            return T1 not in await net.tokens("a")

        asyncio.run(wait_for("the card to drop T1", gone))

        record = config.parent / "admissions.json"  # beside the wallet config, the owner's alone
        assert stat.S_IMODE(record.stat().st_mode) == 0o600, oct(record.stat().st_mode)

        # the holder tries again: told where and when it went in, not only that the card lacks it
        code, got = wallet(config, "enter", T1.hex(), "--gate", gate, "--wait", str(WAIT_S))
        error = got["error"]
        assert code != 0 and error["reason"] == "not_held", got
        assert f"ticket {T1.hex()} was admitted at gate {gate} at " in error["message"], error
        admission = error["admission"]
        assert admission["gate"] == gate, admission
        assert admission["verdict"] in ("admitted", "admitted_unacknowledged"), admission
        at = datetime.strptime(admission["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert before <= at <= after, (before, at, after)
        assert admission["at"] in error["message"], error

        code, shown = wallet(config, "show", T1.hex())
        assert code == 0 and shown == {"admission": {"oid": T1.hex(), **admission}}, shown
        code, listed = wallet(config, "list")
        assert code == 0 and listed["tickets"] == [], listed
        assert listed["admissions"] == [{"oid": T1.hex(), **admission}], listed
        code, overview = wallet(config, "show")  # the whole wallet: its admissions too
        assert code == 0 and overview["tickets"] == [], overview
        assert overview["admissions"] == [{"oid": T1.hex(), **admission}], overview
        for args in (("show", T1.hex()), ("list",), ("show",)):  # and in words for a person
            r = subprocess.run(
                [sys.executable, "-m", "cardnet.cli.main", "wallet", *args, "--config", str(config)],
                capture_output=True, text=True, timeout=120, env={**os.environ, "CARDNET_PIN": PIN}, check=False,
            )  # fmt: skip
            assert r.returncode == 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
            assert T1.hex() in r.stdout and admission["at"] in r.stdout, r.stdout
            assert args[0] != "show" or len(args) > 1 or "used at gates" in r.stdout, r.stdout


def test_the_memory_keeps_the_last_admissions_and_one_per_ticket(tmp_path: Path) -> None:
    from cardnet.services.admissions import FILE, AdmissionMemory

    memory = AdmissionMemory(tmp_path / FILE, keep=3)
    card, other = bytes(12), bytes([1]) * 12
    start = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
    for n in range(5):
        memory.record(card, bytes([n]) * 16, f"gate-{n}", "admitted", at=start + timedelta(minutes=n))
    memory.record(card, bytes([4]) * 16, "gate-9", "admitted_unacknowledged", at=start + timedelta(hours=1))
    kept = [(a.oid[:2], a.gate) for a in memory.of_card(card)]
    assert kept == [("02", "gate-2"), ("03", "gate-3"), ("04", "gate-9")], kept
    assert memory.find(card, bytes([0]) * 16) is None  # forgotten, oldest first
    found = memory.find(card, bytes([3]) * 16)
    assert found is not None and found.at == "2026-12-07T20:03:00Z", found
    assert memory.find(other, bytes([3]) * 16) is None  # another card's ticket is not this card's
    assert stat.S_IMODE((tmp_path / FILE).stat().st_mode) == 0o600


def test_a_ticket_sent_to_a_gate_with_trn_send_gate_is_remembered_too(tmp_path: Path) -> None:
    """`cardnet trn send --to GATE --gate` presents the ticket as `wallet enter` does and writes the admission to
    the wallet's own record (the wallet config named by $CARDNET_WALLET_CONFIG, beside which it lives): `wallet
    show` and `wallet list` then name the gate, and a second send is said admitted there. (A card cannot tell a
    gate from another card, so the person says it with --gate.)"""
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",), gate_refresh_s=0.5)
    with net:
        gate, config = _alice_holds_t1(net, tmp_path, b"Final, seat 9")
        env = {**os.environ, "CARDNET_PIN": PIN, "CARDNET_WALLET_CONFIG": str(config)}
        send = [sys.executable, "-m", "cardnet.cli.main", "trn", "send", "--socket", net.hosts["a"].socket,
                "--card", net.uids["a"].domain.hex(), "--oid", T1.hex(), "--to", gate, "--gate", "--timeout",
                str(WAIT_S), "--json"]  # fmt: skip
        r = subprocess.run(send, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
        assert_admitted(json.loads(r.stdout), gate)

        record = json.loads((config.parent / "admissions.json").read_text())["admissions"]
        assert [(a["oid"], a["gate"], a["card"]) for a in record] == [(T1.hex(), gate, net.uids["a"].domain.hex())]
        code, overview = wallet(config, "show")
        assert code == 0 and [a["oid"] for a in overview["admissions"]] == [T1.hex()], overview
        again = subprocess.run(send, capture_output=True, text=True, timeout=120, env=env, check=False)
        error = json.loads(again.stdout)["error"]
        assert again.returncode != 0 and error["reason"] == "not_held", error
        assert f"ticket {T1.hex()} was admitted at gate {gate} at " in error["message"], error


T2 = bytes([0x62]) * 16


def test_enter_says_whether_the_admission_was_recorded_in_json_as_in_words(tmp_path: Path) -> None:
    """An admission the wallet's record could not take (its admissions.json unreadable), or a wallet that keeps no
    record (run with --socket and no wallet config): the admission stands (exit 0, admitted), and `--json` says
    ``recorded: false`` with the note a person reads on stderr (``record_note``)."""
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",), gate_refresh_s=0.5)
    with net:
        gate, config = _alice_holds_t1(net, tmp_path, b"Final, seat 5")
        asyncio.run(give(net, T2, "a", b"Final, seat 6"))
        (config.parent / "admissions.json").mkdir()  # the record cannot be read, so not written either
        code, got = wallet(config, "enter", T1.hex(), "--gate", gate, "--wait", str(WAIT_S))
        assert code == 0 and got["admitted"] is True and got["recorded"] is False, got
        note = got["record_note"]
        assert note.startswith("this admission is not in your wallet's record: cannot read "), got
        assert "admissions.json" in note, got

        # no wallet config (--socket alone): admitted, in words, with a note that nothing was recorded
        socket, card = net.hosts["a"].socket, net.uids["a"].domain.hex()
        env = {**os.environ, "CARDNET_PIN": PIN, "CARDNET_WALLET_CONFIG": str(tmp_path / "none.toml")}
        r = subprocess.run(
            [sys.executable, "-m", "cardnet.cli.main", "wallet", "enter", T2.hex(), "--gate", gate, "--socket",
             socket, "--card", card, "--wait", str(WAIT_S)],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        assert r.returncode == 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
        assert f"admitted: the gate {gate} took ticket {T2.hex()}" in r.stdout, r.stdout
        words = " ".join(r.stderr.split())
        assert "note: this wallet keeps no record of its admissions (no wallet config: `cardnet wallet init`" in words
        assert not (tmp_path / "none.toml").exists()
