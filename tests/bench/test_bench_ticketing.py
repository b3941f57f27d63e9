"""``cardnet bench ticketing --json``: real buyers' hosts buy tickets from a ticketing server process and present
them at a gate process; the JSON has every figure beside its bound, and its books balance.

Only the shape and the consistency of the figures are checked, never the speed: other processes share the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

BUYERS, IDLE = 3, 2
PROCESSES = {"auth", "broker", "buyer_hosts", "driver", "gate", "tickets", "total"}


def test_bench_ticketing_json_is_complete_and_consistent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "bench", "ticketing", "--json", "--buyers", str(BUYERS),
         "--seconds", "2", "--idle", str(IDLE)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)  # one JSON object, nothing else on stdout

    # every figure beside its two bounds, and the ratio the target is judged on
    for unit in ("tickets", "admissions"):
        figure, crypto, serial = r[f"{unit}_per_s"], r[f"crypto_bound_{unit}_per_s"], r[f"serial_bound_{unit}_per_s"]
        assert figure > 0 and crypto > 0 and serial > 0, unit
        assert serial < crypto, unit  # one core and a commit per counted write, against every core and no commit
        assert abs(r[f"{unit}_vs_crypto_bound"] - figure / crypto) < 0.002, unit
        assert r["targets"][f"{unit}_per_s >= 0.4 x crypto_bound_{unit}_per_s"] == (figure >= 0.4 * crypto), unit
    assert len(r["targets"]) == 2
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["idle_samples"] == IDLE
    assert abs(r["crypto_bound_ticket_ms"] - 1e3 * r["cpus"] / r["crypto_bound_tickets_per_s"]) < 0.05

    # counted on a real sale and a real admission (the second of each, sessions open): SPEED seals the product
    # key and the receipt, the broker and the device sign, the vendor's store records the sale's steps
    sale, admission = r["ops_per_ticket"], r["ops_per_admission"]
    assert sale["hpke_seal"] >= 2 and sale["hpke_open"] >= 2 and sale["sign"] >= 3, sale
    assert sale["commit"] >= 8 and sale["service_commit"] >= 5 and sale["aead_seal"] >= 4, sale
    assert admission["sign"] >= 1 and admission["commit"] >= 4 and "hpke_seal" not in admission, admission
    assert set(r["op_rates_per_s"]) >= {op for op in (*sale, *admission) if not op.endswith("commit")}
    assert r["sqlite_commit_per_s"] > 0

    # the books: every ticket bought was recorded by the server (one sale a seat), delivered, and is on exactly
    # one card; every ticket presented was admitted by the gate and left its holder's card
    bought = r["tickets_bought"]
    assert bought == BUYERS + IDLE + r["tickets_sold_busy"] and r["tickets_sold_busy"] > 0
    assert r["sales_recorded"] == bought and r["tickets_delivered"] == bought and r["tickets_on_cards"] == bought
    assert r["tickets_on_two_cards"] == 0
    assert r["tickets_presented"] == BUYERS + r["admissions_busy"] and r["admissions_busy"] > 0
    assert sum(r["verdicts_busy"].values()) == r["admissions_busy"]
    assert r["gate_admitted"] == r["tickets_presented"] and r["gate_refused"] == 0
    assert r["tickets_left_on_cards"] == bought - r["tickets_presented"]

    # where the time goes: every process's CPU per unit, this one's (the buyers' programs) included
    for unit in ("ticket", "admission"):
        cpu = r[f"cpu_ms_per_{unit}"]
        assert set(cpu) == PROCESSES and cpu["total"] > 0 and cpu["driver"] > 0, cpu
    assert r["cpu_ms_per_ticket"]["tickets"] > 0 and r["cpu_ms_per_admission"]["gate"] > 0
    assert r["buyers"] == BUYERS and len(r["load_avg_1min"]) == 2
