"""docs/smc-walkthrough.md, run for real: every command in order, in an empty folder, with real host processes (one
per party) and one `cardnet smc join` process per party.

The page is parsed, not copied (the conventions: tests/integration/walkthrough.py). Ports 7461-7463 are replaced
by free ones; the run ids `cardnet smc plan` draws are learnt from its output. The page plans its runs 20 s ahead,
and so does the test: on a loaded machine (the suite under ``-n 2`` on two cores) each command takes seconds to
start, and the plan, carol's join and alice's and bob's took up to 11 s between them; planned 10 s ahead (as this
test once did, to wait less), a join came too late and the run went on without it. Besides what the page shows,
the run files are checked: each names the three members in order, and the join records the modules keep.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from walkthrough import run_page

DOC = Path(__file__).resolve().parents[2] / "docs" / "smc-walkthrough.md"
MEMBERS = [
    f"{d}:00000000" for d in ("a11ce0a11ce0a11ce0a11ce0", "b0b000b0b000b0b000b0b000", "ca201ca201ca201ca201ca20")
]


def test_the_smc_walkthrough_runs_as_written(tmp_path: Path) -> None:
    ran = run_page(DOC, tmp_path, reads=(), min_commands=18)
    for name, function in (("salaries.toml", "median"), ("auction.toml", "auction2")):
        run = tomllib.loads((tmp_path / name).read_text())
        assert run["function"] == function and run["members"] == MEMBERS and run["t"] == 1, run
    refused = [r for r in ran if " smc join " in r.command and r.returncode != 0]
    # (alice's join after the salaries run follows her module to its result; only carol's, host down, fails)
    assert [("salaries.toml" in r.command, "carol.sock" in r.command) for r in refused] == [(False, True)]
    assert all("Traceback" not in r.printed for r in ran)
