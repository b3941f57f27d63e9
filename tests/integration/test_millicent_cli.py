"""``cardnet sim --protocol millicent`` and ``cardnet bench millicent`` as a person (or a script) runs them."""

from __future__ import annotations

import json
import subprocess
import sys


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_sim_millicent_json() -> None:
    r = cardnet("sim", "--protocol", "millicent", "--seeds", "20", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["runs"] == 20 and out["violations"] == 0
    broken = cardnet("sim", "--protocol", "millicent-broken", "--seeds", "20", "--json")
    assert broken.returncode == 1 and json.loads(broken.stdout)["violations"] > 0


def test_bench_millicent_json_prints_every_figure_beside_its_bound() -> None:
    r = cardnet("bench", "millicent", "--json", "--seconds", "0.5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in (
        "hmac_bound_per_s",
        "validations_per_s",
        "validations_binding_per_s",
        "tcp_bound_rtt_per_s",
        "purchases_per_s",
    ):
        assert out[key] > 0, key
    assert out["scrip_bytes"] == 54 and out["request_bytes"] == 138
    assert set(out["targets"]) == {
        "validations_per_s >= 0.25 x hmac_bound_per_s",
        "purchases_per_s >= 0.3 x tcp_bound_rtt_per_s",
    }
