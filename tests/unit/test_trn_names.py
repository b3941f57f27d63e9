"""TRN is ``trn`` in every layer (protocols/trn/, sim/trn.py, bench/trn.py, ``cardnet trn``): ``cardnet sim`` names its
scenarios ``trn`` and ``trn-*-broken`` (the old names, ``transfer`` and ``transfer-*-broken``, still run the same
scenario and say the new name in one line on stderr), and ``cardnet bench trn`` is its benchmark (``cardnet bench
transfer``, the issues' name, still runs it). Run as the command's own processes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from cardnet.sim.scenarios import ALIASES, SCENARIOS, resolve


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=300, check=False
    )


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return cardnet("sim", *args)


def test_trns_scenarios_are_listed_as_trn_and_every_old_name_runs_its_new_one() -> None:
    listed = sim("--list", "--json")
    assert listed.returncode == 0, listed.stderr
    names = json.loads(listed.stdout)["protocols"]
    assert "trn" in names and "trn-broken" in names and "trn-ack-early-broken" in names, names
    assert not [n for n in names if n.startswith("transfer")], names
    assert set(ALIASES) == {"transfer", *(n.replace("trn", "transfer", 1) for n in names if n.startswith("trn-"))}
    assert all(resolve(old) in SCENARIOS for old in ALIASES) and resolve("fairx") == "fairx"


def test_the_old_name_runs_the_same_seed_and_says_the_new_name_on_stderr() -> None:
    new, old = sim("--protocol", "trn", "--seed", "3", "--json"), sim("--protocol", "transfer", "--seed", "3", "--json")
    assert new.returncode == 0 and new.stderr == "", new.stderr
    assert old.returncode == 0, old.stderr
    got: dict[str, Any] = json.loads(old.stdout)  # stdout stays the one JSON object
    assert got == json.loads(new.stdout) and got["trace"], got.keys()
    (note,) = old.stderr.splitlines()
    assert "--protocol transfer is deprecated" in note and "it is now trn" in note, note
    broken = sim("--protocol", "transfer-broken", "--seeds", "10", "--json")
    assert broken.returncode == 1 and json.loads(broken.stdout)["protocol"] == "trn-broken", broken.stdout
    assert "it is now trn-broken" in broken.stderr, broken.stderr


def test_the_benchmark_is_bench_trn_and_bench_transfer_still_runs_it() -> None:
    listed = cardnet("bench", "--help")
    commands = [line.split()[0] for line in listed.stdout.partition("Commands:")[2].splitlines() if line.strip()]
    assert listed.returncode == 0 and "trn" in commands and "transfer" not in commands, listed.stdout
    for name in ("trn", "transfer"):
        got = cardnet("bench", name, "--help")
        assert got.returncode == 0 and "Durable TRN token transfers" in got.stdout and "--in-flight" in got.stdout, got
        bad = cardnet("bench", name, "--in-flight", "3", "--json")  # checked before anything starts: the same check
        assert bad.returncode != 0 and "--in-flight an even number" in bad.stdout + bad.stderr, bad


def test_trns_message_types_name_trn_as_their_protocol() -> None:
    """The registry names each mtype's protocol: TRN's (``trn.*``, and the authority's ``auth.*``: the trace registry
    in protocols/trn/trace.py) say ``trn``, not the old ``transfer`` and ``trace``."""
    import cardnet.applets.authority
    import cardnet.applets.trn  # noqa: F401  (register TRN's mtypes)
    from cardnet.wire.mtypes import all_mtypes

    trn = {mt.name: mt.protocol for mt in all_mtypes() if mt.name.split(".")[0] in ("trn", "auth")}
    assert len(trn) >= 24 and set(trn.values()) == {"trn"}, trn
    assert not [mt.name for mt in all_mtypes() if mt.protocol in ("transfer", "trace")]
