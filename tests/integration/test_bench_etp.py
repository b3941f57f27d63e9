"""``cardnet bench etp --json``: two host processes, card to card over TCP; the JSON has every figure.

Only the shape and sanity of the figures is checked, never the speed: other
processes share the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

FIGURES = ("msgs_per_s", "rtt_per_s", "tcp_bound_rtt_per_s")


def test_bench_etp_json_has_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "bench", "etp", "--json", "--seconds", "0.3", "--window", "64"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)  # one JSON object, nothing else on stdout
    assert r["header_bytes"] == 34
    for figure in FIGURES:
        assert isinstance(r[figure], int) and r[figure] > 0, figure
        assert len(r["samples"][figure]) == r["rounds"] >= 1
        assert all(x > 0 for x in r["samples"][figure])
    assert r["window"] == 64 and r["host_max_group"] >= 1
    # bench.ping / bench.pong are the 34-byte header plus a small CBOR map
    assert r["ping_bytes"] > 34 and r["pong_bytes"] > 34 and r["stream_bytes"] > 34
    assert r["frame_prefix_bytes"] == 4
    assert r["rtt_vs_tcp_bound"] == round(r["rtt_per_s"] / r["tcp_bound_rtt_per_s"], 3)
    assert set(r["targets"]) == {"header_bytes == 34", "rtt_per_s >= 0.5 x tcp_bound_rtt_per_s"}
    assert r["targets"]["header_bytes == 34"] is True
    assert all(isinstance(ok, bool) for ok in r["targets"].values())
