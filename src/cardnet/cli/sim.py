"""``cardnet sim``: run a protocol through the deterministic fault-injecting simulator."""

from __future__ import annotations

import os

import click
from rich.markup import escape
from rich.progress import Progress

from cardnet.cli.output import (
    console,
    emit_json,
    err_console,
    fail,
    json_option,
    print_table,
    real_console,
    table,
)


@click.command()
@click.option("--protocol", "-p", default="echo", show_default=True, help="Scenario to run (see --list).")
@click.option(
    "--seeds", "-n", default=1000, show_default=True, help="How many seeds to run (seeds 0..N-1 from --start)."
)
@click.option("--start", default=0, show_default=True, help="First seed.")
@click.option("--seed", type=int, default=None, help="Replay this one seed and print its full trace.")
@json_option
@click.option("--list", "list_protocols", is_flag=True, help="List the registered scenarios and exit.")
@click.option(
    "--jobs",
    "-j",
    default=1,
    show_default=True,
    help="Worker processes (0: one per CPU). Seeds are independent: the result is the same, only sooner.",
)
def sim(
    protocol: str, seeds: int, start: int, seed: int | None, as_json: bool, list_protocols: bool, jobs: int
) -> None:
    """Run a protocol among simulated hosts and cards under seeded faults, then check its invariants.

    Each seed draws its own fault plan (drops, duplicates, delays that reorder,
    partitions, card tears at commits, host crashes), runs a safety phase under
    faults, heals, and checks that the protocol's invariants held and that it
    finished. A failing seed is printed with its trace; `--seed N` replays it
    identically.

    \b
    Examples:
      cardnet sim --protocol echo --seeds 10000 --json
      cardnet sim --protocol echo-broken --seeds 1000     # a deliberately broken variant: caught
      cardnet sim --protocol echo --seed 42               # replay one seed with its trace
      cardnet sim --protocol trn --seeds 20000 -j 0       # every CPU
    """
    from cardnet.sim.runner import run_many, run_seed
    from cardnet.sim.scenarios import SCENARIOS, resolve

    if list_protocols:
        if as_json:
            emit_json({"protocols": sorted(SCENARIOS)})
        else:
            for name in sorted(SCENARIOS):
                console.print(name, markup=False)
        return
    if resolve(protocol) != protocol:  # an old name: it runs, and says the new one (one line, on stderr)
        err_console.print(f"note: --protocol {protocol} is deprecated: it is now {resolve(protocol)} (TRN's scenarios "
                          "are named trn in every layer)", markup=False, highlight=False)  # fmt: skip
        protocol = resolve(protocol)
    if protocol not in SCENARIOS:
        fail(f"unknown protocol {protocol!r}", hint=f"choose one of: {', '.join(sorted(SCENARIOS))}")
    if seed is not None:
        result = run_seed(protocol, seed, trace=True)
        if as_json:
            emit_json(
                {
                    "seed": seed,
                    "violations": result.violations,
                    "faults": dict(result.faults),
                    "exercised": dict(result.exercised),
                    "trace": result.trace,
                }
            )
        else:
            for line in result.trace or []:
                console.print(line, markup=False, highlight=False)
            verdict = (
                "[red]VIOLATED[/]: " + escape("; ".join(result.violations)) if result.violations else "[green]ok[/]"
            )
            console.print(f"seed {seed}: {verdict}")
        raise SystemExit(1 if result.violations else 0)
    if seeds < 1:
        fail("--seeds must be at least 1")
    if jobs < 0:
        fail(f"--jobs must be 0 (one per CPU) or more, got {jobs}")
    jobs = jobs or os.cpu_count() or 1
    seed_range = range(start, start + seeds)
    if as_json:
        summary = run_many(protocol, seed_range, jobs=jobs)
        emit_json(summary.as_dict())
    else:
        with Progress(console=real_console(console), transient=True) as progress:
            task = progress.add_task(f"simulating {protocol}", total=seeds)
            summary = run_many(protocol, seed_range, progress=lambda n: progress.advance(task, n), jobs=jobs)
        d = summary.as_dict()
        t = table("figure", "value", title=f"cardnet sim --protocol {protocol}")
        t.columns[1].justify = "right"
        t.add_row("runs", str(d["runs"]))
        t.add_row("violations", str(d["violations"]))
        t.add_row("seeds_per_s", str(d["seeds_per_s"]))
        for kind, n in d["faults_injected"].items():
            t.add_row(f"faults: {kind}", str(n))
        for what, n in d["exercised"].items():
            t.add_row(f"exercised: {what}", str(n))
        print_table(t)
    if summary.first_failure is not None:
        ff = summary.first_failure
        err = console if not as_json else None
        if err is not None:
            console.print(f"[red]seed {ff.seed} violated:[/] {escape('; '.join(ff.violations))}")
            for line in (ff.trace or [])[-40:]:
                console.print("  " + line, markup=False, highlight=False)
            console.print(f"reproduce with: cardnet sim --protocol {protocol} --seed {ff.seed}")
        raise SystemExit(1)
