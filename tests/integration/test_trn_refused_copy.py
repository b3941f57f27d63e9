"""A cloned ticket's copy, refused by the authority, is shown as what it is: `cardnet trn list` on the card that got
it from the clone says the authority refused it, that it is not usable, and what its owner may do. Before, the
copy (which stays `trustless`: docs/trn.md section 4) was shown as "arrived: waiting for the authority's trace"
forever.

Real host processes (:class:`~cardnet.bench.trnnet.TrnNet`); the clone is real (a copy of a's card store run by a
host of its own) and spends the token a second time, to c; `cardnet trn list` runs as a person runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_trn_kill import OID, after_a_clone_spent_twice
from waiting import wait_for

from cardnet.applets.trn import LIST, TOKENS
from cardnet.bench.trnnet import PIN, TrnNet

WAIT_S = 60.0  # a bound far above what must happen; nothing is measured


def test_a_copy_the_authority_refused_is_said_to_be_refused_and_unusable(tmp_path: Path) -> None:
    after_a_clone_spent_twice(TrnNet(tmp_path, wallets=("a", "b", "c")), _then, WAIT_S)


async def _then(net: TrnNet) -> None:
    async def c_heard_the_refusal() -> bool:  # (the authority's answer to c's trace travels back to c)
        got = await net.ask("c", LIST, TOKENS)
        return any(t["oid"] == OID and t.get("refused") for t in got["tokens"])

    await wait_for("c's card to hear the authority refuse its copy", c_heard_the_refusal, WAIT_S)
    env = {**os.environ, "CARDNET_PIN": PIN, "COLUMNS": "400"}
    socket = net.hosts["c"].socket
    r = subprocess.run([sys.executable, "-m", "cardnet.cli.main", "trn", "list", "--socket", socket, "--json"],
                       capture_output=True, text=True, env=env, timeout=WAIT_S, check=False)  # fmt: skip
    assert r.returncode == 0, (r.stdout, r.stderr)
    [row] = [t for t in json.loads(r.stdout)["tokens"] if t["oid"] == OID.hex()]
    # (by design it stays trustless) refused as a branch, or, when c's trace came after the authority blocked a
    # (c asks again at each recovery), because its sender is blocked
    assert row["status"] == "trustless", row
    why = {
        "branch": "a second copy of a token that had already left its sender",
        f"blocked device {net.uids['a']}": "the sender's card (or this one) is blocked by the authority",
    }
    assert row["refused"] in why, row
    assert row["state"].startswith(f"refused by the authority ({why[row['refused']]}"), row
    assert "this copy is not usable" in row["state"] and "waiting" not in row["state"], row
    assert "will never become usable" in row["hint"] and str(net.uids["a"]) in row["hint"], row
    r = subprocess.run([sys.executable, "-m", "cardnet.cli.main", "trn", "list", "--socket", socket],
                       capture_output=True, text=True, env=env, timeout=WAIT_S, check=False)  # fmt: skip
    said = " ".join(r.stdout.split())
    assert "refused by the authority" in said and f"{OID.hex()}: this copy will never become usable" in said, said
    assert "waiting for the authority's trace" not in said, said
