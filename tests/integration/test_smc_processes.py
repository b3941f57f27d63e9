"""TrustedPals across real processes: five security module hosts on loopback compute and agree, even when the
adversary on two hosts drops every frame of their modules (general omission, t = 2 of n = 5)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import forkhost
import pytest

from cardnet.bench.smcnet import PIN, SmcNet
from cardnet.host.adversary import AdversaryConfig
from cardnet.protocols.smc.functions import AUCTION, AUCTION2, MEDIAN, REGISTRY
from cardnet.protocols.smc.registry import FunctionSpec
from cardnet.services.smc.controller import Outcome, run_parties

FAULTY = (1, 3)
JOIN = ("smc", "join")  # (forked: see join_all)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[SmcNet]:
    with SmcNet(tmp_path, 5, adversary={i: AdversaryConfig(1.0, 1.0, seed=i) for i in FAULTY}) as n:
        yield n


@pytest.fixture
def clean_net(tmp_path: Path) -> Iterator[SmcNet]:
    with SmcNet(tmp_path, 5) as n:
        yield n


def compute(net: SmcNet, fn: FunctionSpec, values: list[int], *, round_s: float = 0.25) -> list[Outcome]:
    async def go() -> list[Outcome]:
        modules = await net.modules()
        try:
            spec = net.spec(REGISTRY.terms(fn.name, n=5, t=2))
            return await run_parties(net.parties(modules, spec), [fn.encode_input(v) for v in values], round_s=round_s)
        finally:
            for m in modules:
                await m.close()

    return asyncio.run(go())


def test_five_processes_compute_the_median_and_an_auction_despite_two_faulty_hosts(net: SmcNet) -> None:
    for fn, values, check in (
        (MEDIAN, [40, 10, 30, 50, 20], lambda r: r["median"] == 30 and r["missing"] == list(FAULTY)),
        (AUCTION, [5, 99, 7, 98, 6], lambda r: r["winner"] == 2 and r["price"] == 7),
        (AUCTION2, [5, 99, 7, 98, 6], lambda r: r["winner"] == 2 and r["price"] == 6),
    ):
        outcomes = compute(net, fn, values)
        correct = [o for i, o in enumerate(outcomes) if i not in FAULTY]
        assert [o.status for o in correct] == ["decided"] * 3, (fn.name, outcomes, net.logs())
        assert all(outcomes[i].status == "halted" for i in FAULTY), outcomes  # cut off: they stay silent
        (result,) = {o.result for o in correct}
        assert result is not None and check(fn.to_json(result)), (fn.name, fn.to_json(result))
    assert "adversary on" in net.hosts[FAULTY[0]].log()


def test_without_faults_every_module_decides_the_same_and_the_run_outpaces_its_deadlines(clean_net: SmcNet) -> None:
    outcomes = compute(clean_net, MEDIAN, [3, 1, 4, 1, 5], round_s=5.0)  # deadlines far away: the frames pace it
    assert {o.status for o in outcomes} == {"decided"}
    (result,) = {o.result for o in outcomes}
    assert result is not None and MEDIAN.to_json(result)["median"] == 3
    assert all(o.ticks == o.rounds + 1 for o in outcomes)


def test_a_member_whose_host_is_down_is_not_waited_for_round_by_round(tmp_path: Path) -> None:
    """Three module hosts, and only two parties join (docs/smc-walkthrough.md section 6: carol's host is down):
    the two decide as fast as their frames travel, not one deadline per round (5 s here). Before, each round waited
    for the absent member's frame until its deadline, and under load a frame later than one round (100 ms by
    default) halted both modules: with n - t joined there is no slack."""
    import time

    with SmcNet(tmp_path, 3) as net:

        async def go() -> tuple[list[Outcome], float]:
            modules = await net.modules()
            try:
                spec = net.spec(REGISTRY.terms(AUCTION2.name, n=3, t=1))
                parties = net.parties(modules, spec)[:2]  # (carol's module is never given the run)
                t0 = time.perf_counter()
                raws: list[bytes | None] = [AUCTION2.encode_input(v) for v in (120, 95)]
                out = await run_parties(parties, raws, round_s=5.0, join_timeout_s=1.0)
                return out, time.perf_counter() - t0
            finally:
                for m in modules:
                    await m.close()

        outcomes, took = asyncio.run(go())
    assert [o.status for o in outcomes] == ["decided", "decided"], outcomes
    (result,) = {o.result for o in outcomes}
    assert result is not None
    got = AUCTION2.to_json(result)
    assert (got["winner"], got["price"], got["missing"]) == (0, 95, [2]), got
    assert took < 1.0 + 5.0, f"{took:.1f} s: the rounds waited for the absent member's deadlines"


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], check=False, capture_output=True, text=True, timeout=120
    )


def test_cardnet_smc_run_prints_the_result_and_refuses_bad_input_cleanly(tmp_path: Path) -> None:
    cmd = ["smc", "run", "-f", "median", "--json"]
    faults = ("--adversary", "1", "--faulty", "1", "--seed", "4", "--round-ms", "250", "--dir", str(tmp_path))
    r = cardnet(*cmd, "-i", "7", "-i", "2", "-i", "9", *faults)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["n"] == 3 and report["t"] == 1 and len(report["faulty_hosts"]) == 1
    statuses = [m["status"] for m in report["modules"]]
    assert statuses.count("decided") == 2 and report["result"]["count"] == 2
    bad = cardnet(*cmd, "-i", "7", "-i", "seven")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    err = json.loads(bad.stdout)["error"]
    assert err["reason"] == "bad_input" and "seven" in err["message"]
    few = cardnet(*cmd, "-i", "7")
    assert json.loads(few.stdout)["error"]["reason"] == "usage"


def test_cardnet_smc_run_fails_when_no_module_decided(tmp_path: Path) -> None:
    """Every host faulty: every module is cut off and none decides. The command says so and exits non-zero (one JSON
    error under --json), with what to do, instead of printing a table and exiting 0 as if the run had worked."""
    cmd = ["smc", "run", "-f", "median", "-i", "7", "-i", "2", "-i", "9", "--adversary", "1", "--faulty", "3"]
    r = cardnet(*cmd, "--seed", "1", "--json")
    assert r.returncode != 0, r.stdout
    err = json.loads(r.stdout)["error"]  # (one object: the error, not the report then the error)
    assert err["reason"] == "no_decision" and "3 halted" in err["message"], err
    assert "--faulty 1" in err["hint"], err
    words = cardnet(*cmd, "--seed", "1")
    assert words.returncode != 0 and "Traceback" not in words.stderr, words
    assert "│ halted │" in words.stdout and "error: no module decided" in words.stderr, words


def join_all(net: SmcNet, tmp_path: Path, function: str, inputs: list[str]) -> list[dict[str, Any]]:
    """`cardnet smc plan`, then one `cardnet smc join` process per party against its own host; their reports.

    The joins are forks of a forker that imported cardnet (tests/integration/forkhost.py: the same arguments through
    the same entry point, each its own process), so that they start in a fraction of a second each instead of five
    Python processes importing cardnet at once, and the run is planned 5 s ahead instead of 12: a join after the
    first round is refused (too_late) and fails the test."""
    plan = tmp_path / f"{function}.toml"
    members = [a for u in net.uids for a in ("-m", str(u))]
    with forkhost.forker((*forkhost.CLI_MODULES, "cardnet.cli.smc")) as f:
        r = cardnet("smc", "plan", "-f", function, *members, "--round-ms", "300", "--start-in", "5", "--out", str(plan))
        assert r.returncode == 0, r.stderr
        env = {**os.environ, "CARDNET_PIN": PIN}
        args = [
            [*JOIN, "--run", str(plan), "--socket", hp.socket, "--card", hp.domain.hex(), "-i", v, "--json"]
            for hp, v in zip(net.hosts, inputs, strict=True)
        ]
        with ThreadPoolExecutor(len(args)) as pool:
            ran = list(pool.map(lambda a: f.run(a, env, str(tmp_path), 120.0), args))
    reports = []
    for code, out, err in ran:
        assert code == 0, err
        reports.append(json.loads(out))
    again = cardnet("smc", "plan", "-f", function, *members, "--out", str(plan))
    assert again.returncode != 0 and "exists" in again.stderr
    return reports


def test_parties_on_hosts_of_their_own_join_a_planned_run(clean_net: SmcNet, tmp_path: Path) -> None:
    """`cardnet smc plan` writes a run file; each party runs `cardnet smc join` against its own host in a
    process of its own; they all print the same result."""
    reports = join_all(clean_net, tmp_path, "median", ["8", "6", "7", "5", "3"])
    assert [rep["module"] for rep in reports] == [0, 1, 2, 3, 4]
    assert {rep["status"] for rep in reports} == {"decided"}
    assert [rep["result"]["median"] for rep in reports] == [6] * 5


def test_five_parties_exchange_items_in_a_ring_each_opening_only_its_own(clean_net: SmcNet, tmp_path: Path) -> None:
    items = [f"item of party {i}" for i in range(5)]
    digests = [hashlib.sha256(x.encode()).hexdigest() for x in items]
    inputs = [
        json.dumps(
            {"item": items[i], "to": [(i + 1) % 5], "expect": {str((i - 1) % 5): digests[(i - 1) % 5]}, "key": k}
        )
        for i, k in enumerate(os.urandom(32).hex() for _ in range(5))
    ]
    reports = join_all(clean_net, tmp_path, "exchange", inputs)
    assert {rep["status"] for rep in reports} == {"decided"}
    assert all(rep["result"]["ok"] for rep in reports)
    for i, rep in enumerate(reports):
        assert rep["received"] == [
            {"from": (i - 1) % 5, "item": items[(i - 1) % 5], "item_hex": items[(i - 1) % 5].encode().hex()}
        ]
        assert all(items[j] not in json.dumps(rep["result"]) for j in range(5))  # the others see them sealed


def test_cardnet_smc_run_asks_each_party_for_its_input_when_given_n() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "smc", "run", "--function", "median", "--n", "3"],
        input="5\n1\n9\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "median = 5 of 3 inputs" in r.stdout and "5\n1\n9" not in r.stdout  # (the inputs are not echoed)
    mismatch = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "smc", "run", "-f", "median", "--n", "4", "-i", "1", "-i", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert mismatch.returncode != 0 and "4 parties but 2 inputs" in mismatch.stderr
