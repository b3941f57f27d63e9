"""docs/millicent-walkthrough.md, run for real: every command in order, in an empty folder, with a real broker and
vendor process (licence mode) and a customer's wallet.

The page is parsed, not copied (the conventions: tests/integration/walkthrough.py). Read commands (``millicent
list``, the status commands) are repeated for a while until their output shows. Ports 7401-7402 are replaced by
free ones; the customer id is learnt from ``open``. Beyond the page: both refused spends left the wallet as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from forkhost import CLI_MODULES, forker
from walkthrough import run_page

DOC = Path(__file__).resolve().parents[2] / "docs" / "millicent-walkthrough.md"
READS = (" millicent list ", " broker status ", " vendor status ")


def test_the_millicent_walkthrough_runs_as_written(tmp_path: Path) -> None:
    with forker(CLI_MODULES) as f:  # (most commands forked: see walkthrough.run_page)
        ran = run_page(DOC, tmp_path, reads=READS, forker=f, min_commands=18)
    refused = [r for r in ran if " spend " in r.command and r.returncode != 0]
    assert len(refused) == 2 and all("Traceback" not in r.printed for r in refused), refused
    held = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "millicent", "list", "--wallet", "alice.wallet.db", "--json"],
        cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    got = json.loads(held.stdout)
    assert [s["value"] for s in got["scrip"]] == [97] and got["pending"] == [], got
