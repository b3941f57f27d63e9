"""`cardnet smc join` says what is wrong before it waits: a run file whose rounds are over is refused at once
(`too_late`, with what to do), without reaching any host. docs/smc-walkthrough.md shows the rest (the first line a
join prints, the parties that joined, why a module has no result)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UIDS = ("a11ce0a11ce0a11ce0a11ce0:00000000", "b0b000b0b000b0b000b0b000:00000000")


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_run_that_started_is_refused_at_once_with_what_to_do(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    planned = cardnet(
        "smc",
        "plan",
        "-f",
        "median",
        "-m",
        UIDS[0],
        "-m",
        UIDS[1],
        "--start-in",
        "0",
        "--round-ms",
        "1",
        "--out",
        str(run),
    )
    assert planned.returncode == 0, planned.stderr
    nowhere = str(tmp_path / "no-host.sock")  # never reached: the run file alone says it is too late
    r = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5", "--json")
    err = json.loads(r.stdout)["error"]
    assert r.returncode != 0 and err["reason"] == "too_late", r
    assert (
        "rounds are over" in err["message"]
        and "before the first round" in err["message"]
        and "cardnet smc plan" in err["hint"]
    )
    words = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5")
    assert "Traceback" not in words.stderr and "what to do: ask for a new run file" in words.stderr


def test_every_plan_option_says_what_it_is() -> None:
    text = cardnet("smc", "plan", "--help").stdout
    assert "--rho-max" in text and "Fake rounds are 0..rho-max" in " ".join(text.split())


def test_every_reason_join_fails_for_says_what_to_do() -> None:
    from cardnet.cli.smc import JOIN_HINTS

    assert set(JOIN_HINTS) >= {"no_host", "wrong_pin", "not_a_member", "restarted", "too_late", "terms_differ"}
