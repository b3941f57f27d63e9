"""``cardnet bench transfer --json``: real host processes move TRN tokens; the JSON has every figure.

Only the shape and the consistency of the figures are checked, never the speed:
other processes share the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

FIGURES = ("transfers_per_s", "untraced_transfers_per_s", "bound_transfers_per_s")
RATES = (
    "sqlite_commit_per_s", "fsync_per_s", "ecdsa_verify_per_s", "ecdsa_sign_per_s", "aead_seal_per_s", "aead_open_per_s"
)  # fmt: skip
IN_FLIGHT = 8


def test_bench_transfer_json_is_complete_and_consistent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "bench", "transfer", "--json", "--seconds", "0.9",
         "--in-flight", str(IN_FLIGHT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)  # one JSON object, nothing else on stdout
    for figure in (*FIGURES, *RATES):
        assert isinstance(r[figure], int) and r[figure] > 0, figure
    for figure in ("transfers_per_s", "untraced_transfers_per_s", *RATES):  # measured each round
        assert len(r["samples"][figure]) == r["rounds"] >= 1
        assert all(x > 0 for x in r["samples"][figure]), figure

    # Transfers really completed, and the cards and the authority agree with the benchmark's count:
    # every token is enabled on exactly one wallet, and the traced tokens' chains at the authority hold one
    # movement per traced transfer the benchmark saw complete (plus the agent's issue, not counted).
    assert r["in_flight"] == IN_FLIGHT and r["tokens"] >= 2 * IN_FLIGHT
    assert r["tokens_enabled_at_end"] == r["tokens"]
    assert r["chain_movements"] == r["traced_transfers_done"] > 0
    assert r["untraced_transfers_done"] > 0
    assert 0 < r["latency_samples"] <= r["traced_transfers_done"]
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["untraced_p50_ms"] > 0
    for kind in ("host_cpu_ms_per_transfer", "untraced_host_cpu_ms_per_transfer"):
        assert set(r[kind]) == {"auth", "a", "b", "driver"}

    # The bound is 1 / (sum of count / rate) over the counted operations of one transfer.
    ops = r["traced_ops_per_transfer"]
    # (the sender signs its movement statement; the authority verifies it besides the token's signature)
    assert ops == {"sqlite_commit": 7, "aead_seal": 6, "aead_open": 6, "ecdsa_verify": 4, "ecdsa_sign": 1}
    assert r["untraced_ops_per_transfer"]["sqlite_commit"] == 5
    assert r["group_commit_in_bound"] is False
    serial_s = sum(n / r[f"{op}_per_s"] for op, n in ops.items())
    assert abs(r["bound_transfers_per_s"] * serial_s - 1) < 0.01
    assert r["untraced_bound_transfers_per_s"] > r["bound_transfers_per_s"]
    assert r["transfers_vs_bound"] == round(r["transfers_per_s"] / r["bound_transfers_per_s"], 3)

    # Sizes above the 34-byte eTP header, as docs/trn.md's table (a 64-byte body: a 171-byte token object).
    assert r["header_bytes"] == 34 and r["body_bytes"] == 64 and r["token_bytes"] == 171
    assert r["copy_overhead_bytes"] == r["copy_bytes"] - r["token_bytes"] == 35
    assert r["ack_bytes"] == 32 and r["commit_bytes"] == 115

    assert set(r["targets"]) == {"transfers_per_s >= 0.5 x bound_transfers_per_s"}
    assert all(isinstance(ok, bool) for ok in r["targets"].values())
