"""``cardnet bench smc``: one TrustedPals SMC among ``n`` module host processes, side by side with MPyC.

For each ``n`` (3, 5 and 7 by default; ``t = (n - 1) // 2``) one network of each kind is started and kept for
every function and repetition:

* cardnet: :class:`~cardnet.bench.smcnet.SmcNet`, ``n`` host processes (``cardnet host run``) on 127.0.0.1, each
  with one security module card (applet ``smc``, durable SQLite store); the Controllers and Clocks of
  :mod:`cardnet.services.smc.controller` run in this process, one logged-in application connection per host;
* MPyC: ``n`` party processes (``python -m cardnet.bench.mpyc_party``, :mod:`cardnet.bench.mpyc_party`) connected
  to each other over TCP on 127.0.0.1, each driven through its stdin and stdout from this process.

Then, ``reps`` times, for ``median`` and ``auction`` in turn, both compute the same function of the same fresh
inputs (one per party), interleaved: a cardnet run, then an MPyC run. Figures per function and ``n``:

* ``join_ms``: a cardnet run's join (every Controller's ``smc.prepare`` until every module holds every other
  member's join over the cards' TRN sessions): the agreement on the terms, before any input. Not in ``smc_ms``.
* ``smc_ms``: from giving the inputs (``smc.input`` to every module, at once) to every party's result in this
  process (each module pushes ``smc.finished`` when its run ends): the ``t + 1`` rounds of the UIC on rho, rho
  fake rounds, ``t + 1`` UIC rounds on the inputs and the padded tail (``rounds = 2 (t + 1) + rho_max``), every
  frame encrypted, padded and carried host to host, every card step durable, and ``F`` computed on every card.
  Round deadlines ``round_ms`` apart; without faults the modules end each round as soon as its frames are in,
  so a run takes far less than ``rounds x round_ms``.
* ``mpyc_ms``: from writing every party's input to its stdin to every party's result read from its stdout:
  secret sharing of the inputs, the secure computation, and the opening of the result to every party.
* ``mpyc_setup_ms`` / ``hosts_start_ms`` (per ``n``): starting the processes until they are connected and
  ready; MPyC's ``mpc.start()`` alone is ``mpyc_start_ms`` (the slowest party's). Not in the figures above.

A pause of :data:`SETTLE_S` comes before each timed part, of either kind (and between the join and the inputs).
Every module must decide and every party of both kinds must get the result ``F`` gives on the inputs, or the
benchmark stops with :class:`BenchError`. Medians and 90th percentiles (nearest rank) of the repetitions; the
first run of each function at each ``n`` warms both kinds up and is not counted.

Targets: ``smc_ms < mpyc_ms`` for every function and ``n`` measured; the median at ``n = 5`` in under 100 ms
(the paper's runs took 4 to 10 rounds of 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from cardnet.bench.procs import free_port
from cardnet.bench.smcnet import SmcNet
from cardnet.errors import CardnetError
from cardnet.protocols.smc.functions import REGISTRY
from cardnet.protocols.smc.registry import FunctionSpec
from cardnet.protocols.smc.run import DEFAULT_RHO_MAX
from cardnet.services.smc.controller import Module, Outcome

FUNCTIONS: Final = ("median", "auction")
DEFAULT_NS: Final = (3, 5, 7)
DEFAULT_REPS: Final = 7
DEFAULT_ROUND_MS: Final = 50.0
MAX_N: Final = 16
MPYC_VERSION: Final = "0.11"
MPYC_PREFIX: Final = "cardnet-mpyc"
MPYC_START_TIMEOUT_S: Final = 60.0
COMPUTE_TIMEOUT_S: Final = 120.0  # one computation, either kind (MPyC at n = 7 takes seconds on a busy machine)
SETTLE_S: Final = 0.05  # a pause before each timed computation: what the last one left running (a host's
# late ticks, acks and outbox clean-up; a party's last sends) is not charged to the next one, of either kind
INPUT_BITS: Final = 40  # inputs drawn well inside both sides' 64-bit range
PAPER: Final = {
    "round_ms": 1000,
    "rounds": "4-10",
    "smc_ms": "4000-10000",
    "source": "TrustedPals section 6: about 600 ms of host-card communication a round, so rounds of 1 s; "
    "4 to 10 rounds by the level of security; workload: the fair exchange of Avoine et al.",
}
MEDIAN_N5_TARGET_MS: Final = 100.0
Progress = Callable[[str], None]


class BenchError(CardnetError):
    """The benchmark could not finish: a process did not start, a module did not decide, or results differ."""


def mpyc_available() -> bool:
    return importlib.util.find_spec("mpyc") is not None


def p90(samples: Sequence[float]) -> float:
    """The 90th percentile by nearest rank (of 7 samples, the largest)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def expected(function: str, values: Sequence[int]) -> dict[str, int]:
    """What both sides must output: the lower median, or the first-price winner (lowest index) and price."""
    if function == "median":
        return {"median": sorted(values)[(len(values) - 1) // 2]}
    price = max(values)
    return {"winner": values.index(price), "price": price}


def _draw(rng: random.Random, function: str, n: int) -> list[int]:
    lo = -(1 << INPUT_BITS) if function == "median" else 0
    return [rng.randrange(lo, 1 << INPUT_BITS) for _ in range(n)]


# -- MPyC parties --------------------------------------------------------------------------------------------


class MpycNet:
    """``n`` MPyC party processes on 127.0.0.1 (:mod:`cardnet.bench.mpyc_party`), stderr logged in ``tmp``."""

    def __init__(self, tmp: Path, n: int) -> None:
        self.tmp = tmp
        self.n = n
        self.procs: list[asyncio.subprocess.Process] = []
        self.ready: list[dict[str, Any]] = []

    def log_path(self, i: int) -> Path:
        return self.tmp / f"mpyc{i}.log"

    def logs(self, chars: int = 1500) -> str:
        out = []
        for i in range(self.n):
            with contextlib.suppress(OSError):
                out.append(f"--- MPyC party {i}'s log:\n{self.log_path(i).read_text()[-chars:]}")
        return "\n".join(out)

    async def start(self) -> float:
        """Start every party; milliseconds until all are connected and ready."""
        addresses = [a for _ in range(self.n) for a in ("-P", f"127.0.0.1:{free_port()}")]
        t0 = time.perf_counter()
        for i in range(self.n):
            with open(self.log_path(i), "ab") as log:  # the child keeps its own descriptor
                self.procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "cardnet.bench.mpyc_party", "-M", str(self.n), "-I", str(i),
                        *addresses, "--no-log", "--no-uvloop",
                        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                    )
                )  # fmt: skip
        self.ready = await self._lines("ready", MPYC_START_TIMEOUT_S)
        return 1e3 * (time.perf_counter() - t0)

    async def _line(self, i: int, kind: str) -> dict[str, Any]:
        stdout = self.procs[i].stdout
        assert stdout is not None
        while True:
            raw = await stdout.readline()
            if not raw:
                raise BenchError("mpyc_failed", f"MPyC party {i} exited; its log:\n{self.logs()}")
            words = raw.decode().split(maxsplit=2)
            if words[:2] == [MPYC_PREFIX, kind]:
                fields: dict[str, Any] = json.loads(words[2])
                return fields

    async def _lines(self, kind: str, timeout_s: float) -> list[dict[str, Any]]:
        try:
            async with asyncio.timeout(timeout_s):
                return list(await asyncio.gather(*(self._line(i, kind) for i in range(self.n))))
        except TimeoutError:
            raise BenchError(
                "mpyc_failed", f"MPyC parties sent no '{kind}' within {timeout_s:g} s; logs:\n{self.logs()}"
            ) from None

    async def compute(self, function: str, values: Sequence[int]) -> tuple[float, list[dict[str, Any]]]:
        """Every party's input written, every party's result read: milliseconds, and the results."""
        t0 = time.perf_counter()
        for proc, value in zip(self.procs, values, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(f"{function} {value}\n".encode())
        results = await self._lines("result", COMPUTE_TIMEOUT_S)
        return 1e3 * (time.perf_counter() - t0), results

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                with contextlib.suppress(Exception):
                    proc.stdin.write(b"quit\n")
                    proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -- cardnet SMC ---------------------------------------------------------------------------------------------


async def smc_once(
    net: SmcNet, modules: list[Module], fn: FunctionSpec, values: Sequence[int], round_s: float
) -> tuple[float, float, list[Outcome]]:
    """One run among every module: (join_ms, smc_ms, outcomes)."""
    n = net.n
    spec = net.spec(REGISTRY.terms(fn.name, n=n, t=(n - 1) // 2))
    parties = net.parties(modules, spec)
    raws = [fn.encode_input(v) for v in values]
    t0 = time.perf_counter()
    joined = await asyncio.gather(*(p.prepare() for p in parties))
    join_ms = 1e3 * (time.perf_counter() - t0)
    if not all(joined):
        missing = [i for i, ok in enumerate(joined) if not ok]
        raise BenchError("not_joined", f"modules {missing} did not hear every join in time; logs:\n{net.logs()}")
    await asyncio.sleep(SETTLE_S)  # (the joins' last acks settle: the terms are agreed, the inputs not yet given)
    t1 = time.perf_counter()
    await asyncio.gather(*(p.give_input(raw) for p, raw in zip(parties, raws, strict=True)))
    start_at = time.time()  # the Clock starts now for all: round 1 at once, then the deadlines
    async with asyncio.timeout(COMPUTE_TIMEOUT_S):
        outcomes = list(await asyncio.gather(*(p.run_rounds(start_at, round_s) for p in parties)))
    return join_ms, 1e3 * (time.perf_counter() - t1), outcomes


def _check_smc(fn: FunctionSpec, values: Sequence[int], outcomes: list[Outcome], net: SmcNet) -> dict[str, Any]:
    undecided = [(o.me, o.status, o.problem) for o in outcomes if o.status != "decided"]
    if undecided:
        raise BenchError(
            "not_decided",
            f"{fn.name} at n={net.n}: modules did not decide {undecided} (a round's frames came after its deadline: "
            f"try a longer --round-ms); logs:\n{net.logs()}",
        )
    results = {o.result for o in outcomes}
    if len(results) != 1:
        raise BenchError("disagreement", f"{fn.name} at n={net.n}: the modules decided different results")
    (result,) = results
    assert result is not None
    want = fn.evaluate([fn.encode_input(v) for v in values])
    if result != want:
        raise BenchError("wrong_result", f"{fn.name} at n={net.n}: {fn.render(result)}, not {fn.render(want)}")
    got = fn.to_json(result)
    assert isinstance(got, dict)
    return got


def _check_mpyc(function: str, values: Sequence[int], results: list[dict[str, Any]], n: int) -> None:
    want = expected(function, values)
    wrong = [(i, r) for i, r in enumerate(results) if r != want]
    if wrong:
        raise BenchError("wrong_result", f"MPyC {function} at n={n}: parties {wrong} output other than {want}")


# -- the run -------------------------------------------------------------------------------------------------


async def _measure_n(
    net: SmcNet, tmp: Path, reps: int, round_s: float, rng: random.Random, say: Progress
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n = net.n
    fns = {name: REGISTRY.get(name) for name in FUNCTIONS}
    mp = MpycNet(tmp, n)
    say(f"n={n}: starting {n} MPyC parties")
    modules: list[Module] = []
    try:
        mpyc_setup_ms = await mp.start()
        modules = await net.modules()
        samples: dict[str, dict[str, list[float]]] = {f: {"join": [], "smc": [], "mpyc": []} for f in FUNCTIONS}
        first_join_ms = 0.0
        rounds: dict[str, int] = {}
        last: dict[str, dict[str, Any]] = {}
        for rep in range(reps + 1):  # repetition 0 warms both up (and opens the cards' sessions): not counted
            for name, fn in fns.items():
                say(f"n={n}: {name}, " + ("warm-up" if rep == 0 else f"repetition {rep}/{reps}"))
                values = _draw(rng, name, n)
                await asyncio.sleep(SETTLE_S)
                join_ms, smc_ms, outcomes = await smc_once(net, modules, fn, values, round_s)
                got = _check_smc(fn, values, outcomes, net)
                if any(got[k] != v for k, v in expected(name, values).items()):
                    raise BenchError("wrong_result", f"{name} at n={n}: {got} for inputs {values}")
                await asyncio.sleep(SETTLE_S)
                mpyc_ms, results = await mp.compute(name, values)
                _check_mpyc(name, values, results, n)
                rounds[name] = outcomes[0].rounds
                last[name] = {"inputs": values, "smc": got, "mpyc": results[0]}
                if rep == 0:
                    first_join_ms = first_join_ms or join_ms  # the first run's join opens the cards' sessions
                    continue
                samples[name]["join"].append(join_ms)
                samples[name]["smc"].append(smc_ms)
                samples[name]["mpyc"].append(mpyc_ms)
    finally:
        for m in modules:
            with contextlib.suppress(Exception):
                await m.close()
        await mp.stop()
    rows = []
    for name in FUNCTIONS:
        s = samples[name]
        smc_ms, mpyc_ms = statistics.median(s["smc"]), statistics.median(s["mpyc"])
        rows.append(
            {
                "function": name,
                "n": n,
                "t": (n - 1) // 2,
                "rounds": rounds[name],
                "round_ms": round(1e3 * round_s, 3),
                "deadline_ms": round(1e3 * round_s * rounds[name], 1),
                "smc_ms": round(smc_ms, 2),
                "smc_p90_ms": round(p90(s["smc"]), 2),
                "join_ms": round(statistics.median(s["join"]), 2),
                "mpyc_ms": round(mpyc_ms, 2),
                "mpyc_p90_ms": round(p90(s["mpyc"]), 2),
                "smc_vs_mpyc": round(smc_ms / mpyc_ms, 4),
                "agreed_runs": reps + 1,  # the warm-up too: every module decided, every result equal to F's
                "last": last[name],
                "samples": {f"{k}_ms": [round(x, 2) for x in v] for k, v in s.items()},
            }
        )
    setup = {
        "n": n,
        "first_join_ms": round(first_join_ms, 1),
        "mpyc_setup_ms": round(mpyc_setup_ms, 1),
        "mpyc_start_ms": round(max(r["start_ms"] for r in mp.ready), 1),
        "mpyc_gmpy2": all(r["gmpy2"] for r in mp.ready),
        "mpyc_bit_length": mp.ready[0]["bit_length"],
    }
    return rows, setup


def run(
    *,
    ns: Sequence[int] = DEFAULT_NS,
    reps: int = DEFAULT_REPS,
    round_ms: float = DEFAULT_ROUND_MS,
    seed: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure every function of :data:`FUNCTIONS` at every ``n`` of ``ns``, ``reps`` times each, both kinds."""
    if not mpyc_available():
        raise BenchError(
            "no_mpyc",
            f"MPyC is not installed: pip install 'cardnet[bench]' (or: pip install mpyc=={MPYC_VERSION})",
        )
    if reps < 1 or round_ms <= 0 or not ns or any(not 3 <= n <= MAX_N for n in ns):
        raise BenchError("usage", f"need reps >= 1, round_ms > 0 and every n in 3..{MAX_N}")
    say = progress or (lambda _: None)
    rng = random.Random(seed)
    load_before = os.getloadavg()[0]
    figures: list[dict[str, Any]] = []
    setups: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cardnet-bench-smc-") as d:
        for n in ns:
            tmp = Path(d) / f"n{n}"
            tmp.mkdir()
            say(f"n={n}: starting {n} module hosts")
            t0 = time.perf_counter()
            with SmcNet(tmp, n) as net:
                hosts_start_ms = 1e3 * (time.perf_counter() - t0)
                rows, setup = asyncio.run(_measure_n(net, tmp, reps, round_ms / 1e3, rng, say))
            figures += rows
            setups.append({"n": n, "hosts_start_ms": round(hosts_start_ms, 1), **setup})
    targets = {
        "smc_ms < mpyc_ms for every function and n": all(f["smc_ms"] < f["mpyc_ms"] for f in figures),
    }
    median5 = [f["smc_ms"] for f in figures if f["function"] == "median" and f["n"] == 5]
    if median5:
        targets[f"median n=5 smc_ms < {MEDIAN_N5_TARGET_MS:g}"] = median5[0] < MEDIAN_N5_TARGET_MS
    return {
        "figures": figures,
        "setup": setups,
        "reps": reps,
        "round_ms": round_ms,
        "rho_max": DEFAULT_RHO_MAX,
        "input_bits": INPUT_BITS,
        "mpyc": {
            "version": importlib.metadata.version("mpyc"),
            "bit_length": setups[0]["mpyc_bit_length"],
            "gmpy2": all(s["mpyc_gmpy2"] for s in setups),
            "event_loop": "asyncio (stdlib; --no-uvloop)",
            "threshold": "t = (n - 1) // 2",
            "median": "mpc.sorted, middle element opened",
            "auction": "mpc.argmax, winner and price opened",
        },
        "paper": PAPER,
        "cpus": os.cpu_count() or 1,
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "targets": targets,
    }
