"""docs/trn-walkthrough.md, run for real: every command in order, in an empty folder, with real host processes.

The page is parsed, not copied (the conventions: tests/integration/walkthrough.py). Read commands (``trn list``,
``authority chain``) are repeated for a while until their output shows, since transfers and traces take a
moment. Ports 7401-7404 are replaced by free ones.
"""

from __future__ import annotations

from pathlib import Path

from forkhost import CLI_MODULES, forker
from walkthrough import run_page

DOC = Path(__file__).resolve().parents[2] / "docs" / "trn-walkthrough.md"
READS = (" trn list ", " authority chain ")


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    with forker(CLI_MODULES) as f:  # (most commands forked: see walkthrough.run_page)
        run_page(DOC, tmp_path, reads=READS, forker=f, min_commands=30)
