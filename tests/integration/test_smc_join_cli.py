"""`cardnet smc join` says what is wrong before it waits: a run file whose first round has passed (the join
deadline) is refused at once (`too_late`, the deadline printed, with what to do), without reaching any host.
docs/smc-walkthrough.md shows the rest (the first line a join prints, the parties that joined, why a module has no
result)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

UIDS = ("a11ce0a11ce0a11ce0a11ce0:00000000", "b0b000b0b000b0b000b0b000:00000000")


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


def plan(tmp_path: Path, round_ms: str) -> Path:
    """A run file whose first round is now (``--start-in 0``): any join after this is past the deadline."""
    run = tmp_path / "run.toml"
    planned = cardnet("smc", "plan", "-f", "median", "-m", UIDS[0], "-m", UIDS[1], "--start-in", "0",
                      "--round-ms", round_ms, "--out", str(run))  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    return run


def test_a_run_that_started_is_refused_at_once_with_what_to_do(tmp_path: Path) -> None:
    run = plan(tmp_path, "1")
    nowhere = str(tmp_path / "no-host.sock")  # never reached: the run file alone says it is too late
    r = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5", "--json")
    err = json.loads(r.stdout)["error"]
    assert r.returncode != 0 and err["reason"] == "too_late", r
    assert "before the first round" in err["message"] and "cardnet smc plan" in err["hint"], err
    words = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5")
    assert "Traceback" not in words.stderr and "what to do: the run's first round had passed" in words.stderr


def test_a_join_after_the_deadline_is_refused_even_while_the_rounds_still_run(tmp_path: Path) -> None:
    """The deadline is the first round (the one `join` announces), not the end of the run: with rounds of ten
    minutes the run is still going, yet a join now could only be cut off (the other modules began without it), so
    it is refused `too_late` at once, naming when the run began, instead of trying."""
    run = plan(tmp_path, "600000")
    start_at = float(tomllib.loads(run.read_text())["start_at"])
    began = datetime.fromtimestamp(start_at, UTC).strftime("%H:%M:%S UTC")
    nowhere = str(tmp_path / "no-host.sock")  # never reached
    r = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5", "--json")
    err = json.loads(r.stdout)["error"]
    assert r.returncode != 0 and err["reason"] == "too_late", r
    assert f"began at {began}" in err["message"] and "every member had to join by then" in err["message"], err


def test_every_plan_option_says_what_it_is() -> None:
    text = cardnet("smc", "plan", "--help").stdout
    assert "--rho-max" in text and "Fake rounds are 0..rho-max" in " ".join(text.split())


def test_every_reason_join_fails_for_says_what_to_do() -> None:
    from cardnet.cli.smc import JOIN_HINTS

    assert set(JOIN_HINTS) >= {"no_host", "wrong_pin", "not_a_member", "restarted", "too_late", "terms_differ"}
