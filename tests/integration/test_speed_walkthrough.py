"""docs/speed-walkthrough.md, run for real: every command in order, in an empty folder, with real processes (the
broker with its SAM card, the vendor, the customer's host).

The page is parsed, not copied (the conventions: tests/integration/walkthrough.py). Ports 7450-7452 are replaced
by free ones. Besides what the page shows: each product alice bought is, byte for byte, the file the vendor sells,
each beside its receipt, and the three refusals are the ones the page explains.
"""

from __future__ import annotations

from pathlib import Path

from forkhost import forker
from speedprocs import MODULES
from walkthrough import run_page

DOC = Path(__file__).resolve().parents[2] / "docs" / "speed-walkthrough.md"


def test_the_speed_walkthrough_runs_as_written(tmp_path: Path) -> None:
    with forker(MODULES) as f:  # (most commands forked: see walkthrough.run_page)
        ran = run_page(DOC, tmp_path, reads=(), forker=f, min_commands=30)
    bought = tmp_path / "bought"
    got = sorted(p.read_bytes() for p in bought.glob("*-0.bin"))
    assert got == sorted((tmp_path / f).read_bytes() for f in ("song.txt", "news.txt", "film.txt")), got
    assert {p.name[:-6] for p in bought.glob("*-0.bin")} == {p.name[:-8] for p in bought.glob("*.receipt")}
    refused = [r for r in ran if " speed buy " in r.command and r.returncode != 0]
    assert [r.printed.rsplit("(reason: ", 1)[1].split(")")[0] for r in refused] == [
        "no_agreement",
        "over_limit",
        "insufficient",
    ]
