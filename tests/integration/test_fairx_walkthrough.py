"""docs/fairx-walkthrough.md, run for real: every command in order, in an empty folder, with real host processes
(the authority's host with the TTP and the agent, two wallet hosts).

The page is parsed, not copied (the conventions: tests/integration/walkthrough.py). Read commands (``trn list``,
``exchange list``, ``exchange status``) are repeated for a while until their output shows, since the swap and
the traces take a moment. Ports 7401-7403 are replaced by free ones; the exchange ids are learnt from ``offer``.
"""

from __future__ import annotations

import re
from pathlib import Path

from forkhost import CLI_MODULES, forker
from walkthrough import run_page

DOC = Path(__file__).resolve().parents[2] / "docs" / "fairx-walkthrough.md"
READS = (" trn list ", " exchange list ", " exchange status ")


def test_the_fairx_walkthrough_runs_as_written(tmp_path: Path) -> None:
    with forker(CLI_MODULES) as f:  # (most commands forked: see walkthrough.run_page)
        ran = run_page(DOC, tmp_path, reads=READS, forker=f, min_commands=30)
    swap, rejected = [r for r in ran if " exchange offer " in r.command]
    assert swap.shell != rejected.shell and swap.printed != rejected.printed  # two exchanges, two ids
    accepted = next(r for r in ran if " exchange accept " in r.command and r.returncode == 0)
    learnt = re.search(r"^exchange ([0-9a-f]{32}): ", swap.printed, re.M)
    assert learnt is not None and learnt.group(1) in accepted.shell, (swap.printed, accepted.shell)
