"""``cardnet bench fairx --json``: real exchanges between host processes; the JSON has every figure and bound.

Only the shape and the consistency of the figures are checked, never the speed."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_fairx_json_is_complete_and_consistent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "bench", "fairx", "--json", "--in-flight", "3", "--rounds", "1",
         "--idle", "2"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    for figure in (
        "exchanges_per_s",
        "p50_ms",
        "p99_ms",
        "crypto_bound_exchanges_per_s",
        "serial_bound_exchanges_per_s",
    ):
        assert r[figure] > 0, figure
    assert r["p50_ms"] <= r["p99_ms"] and r["serial_bound_exchanges_per_s"] <= r["crypto_bound_exchanges_per_s"]
    assert r["paper_exchange_ms"] == 1788 and r["in_flight"] == 3 and r["idle_samples"] == 2
    ops = r["ops_per_exchange"]  # counted on a real exchange: the protocol's own signatures and seals at least
    assert ops["sign"] >= 5 and ops["hpke_seal"] == 2 and ops["hpke_open"] == 2 and ops["commit"] >= 6, ops
    assert set(r["targets"]) == {"p50_ms <= 5", "exchanges_per_s >= 0.4 x crypto_bound_exchanges_per_s"}
