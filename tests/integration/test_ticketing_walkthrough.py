"""docs/walkthrough-ticketing.md, run for real (issue 14's "Done when"): every command in order, in an empty folder,
with real processes: the authority, the SPEED broker, the ticketing server, the gate and the wallets' hosts.

The page is parsed, not copied (the conventions: tests/integration/walkthrough.py). Each command's output as the
page shows it is checked (the purchase, the transfer, the swap, the admission, the gate's refusal of the clone in
the holder's words and on the gate's screen, the trace's branch); then the trace's SVG is read with an XML parser:
the clone's second movement is a red ``BRANCH`` edge from Bob's card, which is drawn blocked.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from forkhost import forker
from speedprocs import MODULES as SPEED_MODULES
from walkthrough import run_page

from cardnet.protocols import trace_view as tv
from cardnet.wire import Uid

DOC = Path(__file__).resolve().parents[2] / "docs" / "walkthrough-ticketing.md"
READS = (" wallet list ", " authority trace ")
SVG = "{http://www.w3.org/2000/svg}"
BOB = "b0b000b0b000b0b000b0b000:00000000"
ALICE = "a11ce0a11ce0a11ce0a11ce0:00000000"
# what the page's commands import, for the forker most of them are forks of (walkthrough.run_page)
MODULES = (*SPEED_MODULES, "cardnet.cli.gate", "cardnet.cli.ticketing", "cardnet.cli.wallet_buy",
           "cardnet.cli.wallet_exchange", "cardnet.cli.wallet_gate")  # fmt: skip


def test_the_ticketing_walkthrough_runs_as_written(tmp_path: Path) -> None:
    with forker(MODULES) as f:  # (most commands forked: see walkthrough.run_page)
        ran = run_page(DOC, tmp_path, reads=READS, forker=f, min_commands=40)
    refused = next(r for r in ran if " wallet enter " in r.command and "mallory.sock" in r.command)
    assert refused.returncode != 0 and "already used at this gate" in refused.printed, refused
    groups = {}
    for g in ET.parse(tmp_path / "trace.svg").getroot().iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        groups[g.get("id", "")] = (set(g.get("class", "").split()), None if title is None else title.text, g)
    (branch,) = [v for k, v in groups.items() if k.startswith("br-")]
    classes, title, g = branch
    assert classes >= {"edge", "branch", "refused"}, classes
    assert title is not None and title.replace("&#45;", "-").split("->") == [node(BOB), node(ALICE)], title
    strokes = {e.get("stroke") for e in g.iter() if e.get("stroke") not in (None, "none")}
    assert strokes and all(red(c) for c in strokes), strokes
    assert any("BRANCH" in (t.text or "") for t in g.iter(f"{SVG}text"))
    blocked = groups[node(BOB)]
    assert "blocked" in blocked[0] and any("BLOCKED" in (t.text or "") for t in blocked[2].iter(f"{SVG}text"))
    assert "blocked" not in groups[node(ALICE)][0]


def red(color: str | None) -> bool:
    """An SVG colour that reads red: ``red``, or ``#rrggbb`` with red well above green and blue."""
    if color == "red":
        return True
    if color is None or not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
        return False
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return r >= 0x99 and r > 2 * max(g, b)


def node(uid: str) -> str:
    return str(tv.node_id(Uid.parse(uid)))
