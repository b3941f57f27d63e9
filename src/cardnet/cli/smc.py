"""``cardnet smc``: secure multiparty computation by security modules (TrustedPals).

``cardnet smc run`` makes ``n`` security module cards under a fresh CA, starts one host process per module on
127.0.0.1 (each with the Controller and Clock of :mod:`cardnet.services.smc.controller` in this process),
gives each module its party's input, and prints the result every module computed, the rounds and the time.
``--adversary`` makes up to ``t`` hosts drop their modules' frames (TrustedPals' Adversary).
``cardnet smc functions`` lists what can be computed and the input each function takes.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from cardnet.applets.smc import MAX_RUNS as SMC_MAX_RUNS
from cardnet.cli.output import (
    FiniteRange,
    console,
    emit_json,
    fail,
    fail_os,
    json_option,
    print_rows,
    print_table,
    table,
)
from cardnet.errors import CardnetError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.functions import REGISTRY
from cardnet.protocols.smc.run import DEFAULT_RHO_MAX, MAX_RHO, join_wait_s

# Round deadlines (ms). Without faults a round ends as soon as its frames are in, so a deadline costs time only when
# a joined member's frames are lost; too short a one halts a module whose host or Clock a busy machine held back for
# a moment (a frame later than one round is an omission). `smc run`: every host on this machine; `smc plan`: hosts
# of their own, whose clocks must agree to well within a round (TrustedPals ran 1 s rounds).
RUN_ROUND_MS = 500.0
PLAN_ROUND_MS = 1000.0


@click.group()
def smc() -> None:
    """Secure multiparty computation by security modules (TrustedPals): n parties compute a function of their
    private inputs (a median, an auction, a vote, a fair exchange) as a trusted third party would, because each
    party's card does the work and the hosts can only drop messages.

    \b
    Start here:
      cardnet smc functions                          what can be computed, and each function's input
      cardnet smc run -f median -i 52 -i 61 -i 47     three parties' median, computed by three modules
    """


@smc.command("functions")
@json_option
def smc_functions(as_json: bool) -> None:
    """The functions modules can compute, each with its input bound and code hash (every module of a run must
    have the same)."""
    rows = [
        {"function": f.name, "summary": f.summary, "max_input_bytes": f.max_input_bytes, "code_hash": f.code_hash.hex()}
        for f in REGISTRY
    ]
    if as_json:
        emit_json({"functions": rows})
        return
    print_rows(rows, ("function", "summary", "max_input_bytes"), title="SMC functions", empty="none")


def _pick_faulty(n: int, t: int, faulty: int | None, rng: random.Random) -> list[int]:
    k = t if faulty is None else faulty
    if not 0 <= k <= n:
        fail(f"--faulty {k} is not a number of hosts from 0 to {n}", reason="usage")
    return sorted(rng.sample(range(n), k))


@smc.command("run")
@click.option("-f", "--function", "function", required=True, help="What to compute: see `cardnet smc functions`.")
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    help="One party's input, once per party in order (e.g. -i 52 -i 61 -i 47; JSON for `exchange`).",
)
@click.option(
    "-n",
    "--n",
    "parties",
    type=click.IntRange(2, 64),
    default=None,
    help="Parties (default: one per -i; without -i, each party's input is asked for).",
)
@click.option("-t", "t", type=int, default=None, help="Faulty hosts tolerated (default and at most: (n-1)/2).")
@click.option(
    "--round-ms",
    type=FiniteRange(min=0, min_open=True),
    default=RUN_ROUND_MS,
    show_default=True,
    help="The Clock's round deadline (without faults a round ends as soon as its frames are in).",
)
@click.option(
    "--rho-max",
    type=click.IntRange(0, MAX_RHO),
    default=DEFAULT_RHO_MAX,
    show_default=True,
    help="Fake rounds are 0..rho-max (drawn by the modules, hidden from the hosts).",
)
@click.option(
    "--adversary",
    type=FiniteRange(0.0, 1.0),
    default=None,
    help="Faulty hosts drop each of their modules' frames, in and out, with this probability (1: all).",
)
@click.option("--faulty", type=int, default=None, help="How many hosts the adversary controls (default: t).")
@click.option(
    "--stop-round",
    type=click.IntRange(1),
    default=None,
    help="With --adversary: the faulty hosts also stop their modules at this round (drop everything after).",
)
@click.option("--seed", type=int, default=None, help="Which hosts are faulty, and their drops, repeatably.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the CA, cards, host configs and logs here (default: a temporary directory, removed).",
)
@json_option
def smc_run(
    function: str,
    inputs: tuple[str, ...],
    parties: int | None,
    t: int | None,
    round_ms: float,
    rho_max: int,
    adversary: float | None,
    faulty: int | None,
    stop_round: int | None,
    seed: int | None,
    directory: str | None,
    as_json: bool,
) -> None:
    """Compute FUNCTION of the parties' inputs with one security module per party, each on a host process of
    its own on 127.0.0.1, and print what every module computed.

    The modules first agree on the terms (function and code hash, n, t, input bound), then take the inputs,
    run rho fake rounds and t+1 rounds of Uniform Interactive Consistency, all in fixed-size encrypted frames,
    and compute FUNCTION on the agreed vector: every module that decides has the same result, and an input
    that did not arrive (a faulty host) counts as missing.
    """
    try:
        fn = REGISTRY.get(function)
    except ProtocolError as exc:
        fail(str(exc), reason=exc.reason, hint="`cardnet smc functions` lists them")
    if parties is not None and not inputs:
        if as_json:
            fail("with --json, give every party's input with -i", reason="usage")
        inputs = tuple(str(click.prompt(f"party {i}'s input", hide_input=True)) for i in range(parties))
    n = len(inputs)
    if parties is not None and parties != n:
        fail(f"--n {parties} parties but {n} inputs given with -i", reason="usage", hint="give one -i per party")
    if n < 2:
        fail(
            f"give every party's input with -i, once per party (got {n})",
            reason="usage",
            hint=f"e.g. cardnet smc run -f {function} -i 52 -i 61 -i 47, or --n 5 to be asked for each",
        )
    t = (n - 1) // 2 if t is None else t
    try:
        terms = REGISTRY.terms(function, n=n, t=t)
        raws = [fn.encode_input(v, max_input_bytes=terms.max_input_bytes) for v in inputs]
    except ProtocolError as exc:
        fail(str(exc), reason=exc.reason, hint=INPUT_HINT)
    if round_ms <= 0:
        fail("--round-ms must be positive", reason="usage")
    rng = random.Random(seed)
    if stop_round is not None and adversary is None:
        fail("--stop-round needs --adversary (the faulty hosts stop their modules)", reason="usage")
    bad = _pick_faulty(n, t, faulty, rng) if adversary is not None else []
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        report = _run(Path(directory), fn, terms, raws, round_ms, rho_max, adversary, stop_round, bad, rng, as_json)
    else:
        with tempfile.TemporaryDirectory(prefix="cardnet-smc-") as tmp:
            report = _run(Path(tmp), fn, terms, raws, round_ms, rho_max, adversary, stop_round, bad, rng, as_json)
    if report["result"] is not None or not as_json:  # (under --json a run without a result is one error object)
        _print(report, fn, as_json)
    if report["result"] is None:
        message, hint = _no_decision(report, len(bad), t)
        fail(message, reason="no_decision", hint=hint)


def _no_decision(report: dict[str, Any], faulty: int, t: int) -> tuple[str, str]:
    """Why a run ended without any module deciding, and what to do: ``(message, hint)``."""
    statuses = [m["status"] for m in report["modules"]]
    n, out, halted = len(statuses), statuses.count("out"), statuses.count("halted")
    counts = ", ".join(f"{k} {w}" for k, w in ((halted, "halted (cut off)"), (out, "took no part (out)")) if k)
    message = f"no module decided, so there is no result: of {n} modules, {counts}"
    if faulty > t:
        return (
            message,
            f"the adversary controlled {faulty} hosts, more than the t = {t} a run tolerates: give "
            f"--faulty {t} or fewer",
        )
    if out == n:
        return message, f"fewer than n - t = {n - t} modules joined in time: check the host logs (--dir keeps them)"
    return message, f"the rounds may be too short for these hosts: raise --round-ms (it was {report['round_ms']:g})"


def _run(
    tmp: Path,
    fn: Any,
    terms: Any,
    raws: list[bytes],
    round_ms: float,
    rho_max: int,
    adversary: float | None,
    stop_round: int | None,
    bad: list[int],
    rng: random.Random,
    as_json: bool,
) -> dict[str, Any]:
    from cardnet.bench.smcnet import SmcNet
    from cardnet.host.adversary import AdversaryConfig
    from cardnet.services.smc.controller import run_parties

    n = len(raws)
    p = adversary or 0.0
    drops = {i: AdversaryConfig(p, p, seed=rng.randrange(1 << 30), stop_round=stop_round) for i in bad}
    status = None if as_json else console.status(f"starting {n} module hosts…")
    if status is not None:
        status.start()
    try:
        t0 = time.perf_counter()
        net = SmcNet(tmp, n, adversary=drops)
        with net:
            started = time.perf_counter() - t0

            async def go() -> tuple[list[Any], float]:
                modules = await net.modules()
                try:
                    spec = net.spec(terms, rho_max=rho_max)
                    if status is not None:
                        status.update(f"{n} modules: joining, then {spec.rounds} rounds of at most {round_ms:g} ms…")
                    t1 = time.perf_counter()
                    outcomes = await run_parties(net.parties(modules, spec), list(raws), round_s=round_ms / 1000)
                    return outcomes, time.perf_counter() - t1
                finally:
                    for m in modules:
                        await m.close()

            outcomes, took = asyncio.run(go())
    finally:
        if status is not None:
            status.stop()
    results = {o.result for o in outcomes if o.result is not None}
    if len(results) > 1:  # uniform agreement makes this impossible: say so loudly if it ever happens
        fail("modules decided different results", reason="disagreement", hint=f"the host logs are in {tmp}")
    result = next(iter(results), None)
    return {
        "function": fn.name,
        "n": n,
        "t": terms.t,
        "rounds": outcomes[0].rounds,
        "round_ms": round_ms,
        "faulty_hosts": bad,
        "adversary": adversary,
        "modules": [{"module": i, "status": o.status} for i, o in enumerate(outcomes)],
        "result": None if result is None else fn.to_json(result),
        "result_text": None if result is None else fn.render(result),
        "hosts_started_s": round(started, 3),
        "smc_ms": round(took * 1000, 1),
    }


def _print(report: dict[str, Any], fn: Any, as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    t = table("module", "host", "status", title=f"cardnet smc run: {fn.name}, n={report['n']}, t={report['t']}")
    for m in report["modules"]:
        host = "faulty (adversary)" if m["module"] in report["faulty_hosts"] else "correct"
        t.add_row(str(m["module"]), host, m["status"])
    print_table(t)
    if report["result"] is not None:  # (without one the command fails next, saying why)
        console.print(f"result: {report['result_text']}", markup=False)
    console.print(
        f"{report['rounds']} rounds (deadline {report['round_ms']:g} ms each) in {report['smc_ms']:.1f} ms "
        f"from joined to result; hosts started in {report['hosts_started_s']:.2f} s",
        markup=False,
    )


# --- parties on hosts of their own: a run file, then one `join` per party ----------------------------------

RUN_FIELDS = ("run", "function", "code_hash", "t", "max_input_bytes", "rho_max", "round_ms", "start_at", "members")


def _read_run(path: str) -> tuple[Any, float, float]:
    """(spec, round_s, start_at) from a run file written by `cardnet smc plan`; a bad file fails by field."""
    import tomllib

    from cardnet.protocols.smc.registry import Agreement
    from cardnet.protocols.smc.run import RunSpec
    from cardnet.wire import DecodeError, Uid

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        hint = "check the path and its permissions"
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            hint = ("check --run: it is the file `cardnet smc plan --out FILE` wrote (whoever planned the run gives "
                    "each member a copy); for a new run, plan one")  # fmt: skip
        fail(f"cannot read the run file {path}: {exc.strerror or exc}", reason="no_file", hint=hint)
    except tomllib.TOMLDecodeError as exc:
        fail(f"the run file {path} is not TOML: {exc}", reason="bad_run", hint="write it with `cardnet smc plan`")
    missing = [k for k in RUN_FIELDS if k not in data]
    if missing:
        fail(
            f"the run file {path} lacks {', '.join(missing)}", reason="bad_run", hint="write it with `cardnet smc plan`"
        )
    try:
        members = tuple(Uid.parse(m) for m in data["members"])
        terms = Agreement(
            function=data["function"],
            code_hash=bytes.fromhex(data["code_hash"]),
            n=len(members),
            t=data["t"],
            max_input_bytes=data["max_input_bytes"],
        )
        spec = RunSpec(bytes.fromhex(data["run"]), members, terms, data["rho_max"])
        round_s, start_at = float(data["round_ms"]) / 1000, float(data["start_at"])
    except (ValueError, TypeError, DecodeError, ProtocolError) as exc:
        fail(f"the run file {path} is not valid: {exc}", reason="bad_run", hint="write it with `cardnet smc plan`")
    if round_s <= 0:
        fail(f"the run file {path}: round_ms must be positive", reason="bad_run")
    return spec, round_s, start_at


@smc.command("plan")
@click.option("-f", "--function", "function", required=True, help="What to compute: see `cardnet smc functions`.")
@click.option(
    "-m", "--member", "members", multiple=True, required=True, help="A module card's Uid, once per party, in order."
)
@click.option("-t", "t", type=int, default=None, help="Faulty hosts tolerated (default and at most: (n-1)/2).")
@click.option(
    "--round-ms",
    type=FiniteRange(min=0, min_open=True),
    default=PLAN_ROUND_MS,
    show_default=True,
    help="The round deadline (without faults a round ends as soon as its frames are in).",
)
@click.option(
    "--rho-max",
    type=click.IntRange(0, MAX_RHO),
    default=DEFAULT_RHO_MAX,
    show_default=True,
    help="Fake rounds are 0..rho-max (drawn by the modules, hidden from the hosts).",
)
@click.option(
    "--start-in",
    type=FiniteRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds from now to the first round: every party must have joined by then (clocks in sync).",
)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The run file to write.")
@json_option
def smc_plan(
    function: str,
    members: tuple[str, ...],
    t: int | None,
    round_ms: float,
    rho_max: int,
    start_in: float,
    out: str,
    as_json: bool,
) -> None:
    """Write a run file for parties on hosts of their own: give it to every party, each then runs
    `cardnet smc join --run FILE` against its own host. The hosts must route to each other's module cards
    ([routes] in their configs) and their clocks must agree to well within a round."""
    import os

    from cardnet.cli.trn import parse_uid

    uids = [parse_uid(m) for m in members]
    for u in uids:
        if not u.is_card:
            raise click.BadParameter(f"{u} is an application's Uid: give the module card's, DOMAIN:00000000",
                                     param_hint="-m/--member")  # fmt: skip
    twice = sorted({str(u) for u in uids if uids.count(u) > 1})
    if twice:
        fail(f"{', '.join(twice)} given more than once with -m: each party is a module card of its own, on a host of "
             "its own", reason="usage",
             hint="give each party's module card once, in order: a card takes part in a run once, so its "
             "second place would be a party that never joins (counted among the faulty hosts the run tolerates, "
             "-t)")  # fmt: skip
    n = len(uids)
    t = (n - 1) // 2 if t is None else t
    try:
        terms = REGISTRY.terms(function, n=n, t=t)
    except ProtocolError as exc:
        fail(str(exc), reason=exc.reason, hint="`cardnet smc functions` lists the functions")
    run = os.urandom(16)
    start_at = time.time() + start_in
    text = (
        f'run = "{run.hex()}"\nfunction = "{function}"\ncode_hash = "{terms.code_hash.hex()}"\nt = {t}\n'
        f"max_input_bytes = {terms.max_input_bytes}\nrho_max = {rho_max}\nround_ms = {round_ms}\n"
        f"start_at = {start_at:.3f}  # unix time of the first round\n"
        f"members = [{', '.join(repr(str(u)).replace(chr(39), chr(34)) for u in uids)}]\n"
    )
    try:
        with open(out, "x") as f:
            f.write(text)
    except FileExistsError:
        fail(f"{out} exists: a run file is written once (each run has its own id)", reason="exists")
    except OSError as exc:
        fail_os(exc, "write the run file", out)
    report = {"run": run.hex(), "file": out, "n": n, "t": t, "start_at": round(start_at, 3)}
    if as_json:
        emit_json(report)
    else:
        console.print(f"run {run.hex()} ({function}, n={n}, t={t}) starts in {start_in:g} s: written to {out}")


INPUT_HINT = (  # an input the function cannot take (smc run -i, smc join -i): what to give instead
    "give -i as the function takes it (the message says what it expects); `cardnet smc functions` lists each "
    "function, what it computes and its input bound"
)
JOIN_HINTS = {  # what to do when `smc join` fails, by reason
    "no_host": "is `cardnet host run` running with that app_socket?",
    "wrong_pin": "check the PIN; at 0 tries the card locks",
    "not_a_member": "this card is not in the run file's members (use --card if the host runs several cards)",
    "restarted": "this module restarted during the run: it takes no further part; plan a new run",
    "made_room": f"plan a new run and join it; a module keeps {SMC_MAX_RUNS} runs at once (a finished one makes "
    f"room first, else the oldest): have no more than {SMC_MAX_RUNS} runs on it until this one ends",
    "too_late": "the run's first round had passed: join before it (ask for a new run file: `cardnet smc plan ... "
    "--start-in 30`)",
    "terms_differ": "every party must join with the same run file, and have the same function (`cardnet smc "
    "functions --json` shows its code hash)",
}


@smc.command("join")
@click.option("--run", "run_file", required=True, type=click.Path(dir_okay=False), help="The run file (`smc plan`).")
@click.option("--socket", required=True, help="Your host's application socket (app_socket in its config).")
@click.option("--pin", default=None, help="Your module card's PIN (default: $CARDNET_PIN, else asked for).")
@click.option("--card", "card", default=None, help="Your module card's domain, if the host runs several cards.")
@click.option("-i", "--input", "value", required=True, help="Your input (e.g. 52; JSON for `exchange`).")
@json_option
def smc_join(run_file: str, socket: str, pin: str | None, card: str | None, value: str, as_json: bool) -> None:
    """Take part in a planned run with your module card: join (until the run starts), give your input, drive
    the rounds, and print the result every module that decided computed. After the first round, a join gives no
    input: it follows your module to its result if an earlier join put it in the run (e.g. one stopped with
    Ctrl-C), else it is refused."""
    from cardnet.cli.trn import OPENING_HINTS, card_pin, parse_domain
    from cardnet.services.smc.controller import Module, Party, SmcError

    spec, round_s, start_at = _read_run(run_file)
    late: SmcError | None = None
    try:  # past the first round, a join only follows a module already in the run (_follow)
        _join_wait_s(spec, start_at)
    except SmcError as exc:
        late = exc
    fn = REGISTRY.get(spec.terms.function)
    try:
        raw = fn.encode_input(value, max_input_bytes=spec.terms.max_input_bytes)
    except ProtocolError as exc:
        fail(str(exc), reason=exc.reason, hint=INPUT_HINT)
    domain = parse_domain(card)
    try:  # the host first: a PIN typed for a host that is not there (or a run already lost) is typed for nothing
        held, uid = asyncio.run(_reach(socket, domain, spec.run))
    except SmcError as exc:
        if late is not None and exc.reason == "no_host":  # (the run file alone says the join came too late)
            fail(str(late), reason=late.reason, hint=JOIN_HINTS.get(late.reason))
        hint = JOIN_HINTS.get(exc.reason) or OPENING_HINTS.get(exc.reason) or exc.hint
        fail(str(exc), reason=exc.reason, hint=hint)
    if uid not in spec.members:  # (said before the PIN too)
        fail(f"the card {uid} is not a member of run {spec.run.hex()}", reason="not_a_member",
             hint=JOIN_HINTS["not_a_member"])  # fmt: skip
    if late is not None and held in LATE_HELD:  # a late join follows a module in the run: this one is not
        why, reason = LATE_HELD[held]
        reason = reason or late.reason
        fail(f"{late}; module {spec.members.index(uid)} {why}", reason=reason, hint=JOIN_HINTS.get(reason))
    key = card_pin(pin)

    async def go() -> tuple[Any, float]:
        try:
            module = await Module.open(socket, pin=key, card=domain)
        except SmcError as exc:
            if late is not None and exc.reason == "no_host":  # (the run file alone says the join came too late)
                raise late from None
            raise
        try:
            if module.card not in spec.members:
                raise SmcError("not_a_member", f"the card {module.card} is not a member of run {spec.run.hex()}")
            if late is not None:
                t0 = time.perf_counter()
                return await _follow(Party(module, spec), late, start_at, round_s, as_json), time.perf_counter() - t0
            if not as_json:  # the first line: what this party is waiting for (the rounds start for all at once)
                console.print(
                    f"joining run {spec.run.hex()} as module {spec.members.index(module.card)} of {spec.n} "
                    f"({fn.name}, t={spec.terms.t}): the rounds start at {_clock(start_at)}, in "
                    f"{max(0.0, start_at - time.time()):.0f} s; every member must join by then",
                    markup=False,
                )
            party = Party(module, spec)
            ready = await party.prepare(_join_wait_s(spec, start_at))  # (until the deadline itself: docs/smc.md)
            joined, least = int(party.state.get("joined", 0)), spec.n - spec.terms.t
            if not ready and not as_json and party.agreed:
                console.print(
                    f"{joined} of {spec.n} members joined by the start: the run goes on without the others "
                    f"(at least n - t = {least} must join), whose inputs count as missing"
                )
            elif not ready and not as_json:
                console.print(
                    f"only {joined} of {spec.n} members joined by the start, fewer than n - t = {least}: this "
                    "module takes no input and no part in the run"
                )
            if party.agreed and party.state.get("has_input"):  # an earlier join of this run (interrupted) gave it
                if not as_json:
                    console.print(
                        "this module has its input for this run already (an earlier join gave it, and a module takes "
                        "one input): the run goes on with that one",
                        markup=False,
                    )
            elif party.agreed:
                await party.give_input(raw)
            t0 = time.perf_counter()
            outcome = await party.run_rounds(start_at, round_s)
            return outcome, time.perf_counter() - t0
        finally:
            await module.close()

    status = None if as_json else console.status(f"joining run {spec.run.hex()}, then {spec.rounds} rounds…")
    if status is not None:
        status.start()
    try:
        outcome, took = asyncio.run(go())
    except SmcError as exc:
        fail(str(exc), reason=exc.reason, hint=JOIN_HINTS.get(exc.reason) or exc.hint)
    finally:
        if status is not None:
            status.stop()
    result = None if outcome.result is None else fn.to_json(outcome.result)
    report: dict[str, Any] = {
        "run": spec.run.hex(),
        "module": outcome.me,
        "status": outcome.status,
        "result": result,
        "rounds": outcome.rounds,
        "smc_ms": round(took * 1000, 1),
        "followed": late is not None,  # (a join after the first round follows the module's run; no input given)
    }
    received = _my_items(fn.name, outcome.result, outcome.me, raw)
    if received is not None:
        report["received"] = received
    if outcome.result is None:  # (under --json too: one error object, no report)
        message, hint = _no_result(outcome, spec)
        fail(message, reason="no_decision", hint=hint)
    if as_json:
        emit_json(report)
    else:
        console.print(f"module {outcome.me}: {fn.render(outcome.result)}", markup=False)
        for item in received or []:
            console.print(f"received from party {item['from']}: {item['item']}", markup=False)


async def _reach(socket: str, card: bytes | None, run: bytes) -> tuple[str | None, Any]:
    """Checked before the PIN is asked for: the module's host answers at ``socket`` and has the card (else
    ``SmcError`` ``no_host``, or the host's reason for not letting this program use the card), and whether the
    module holds ``run`` (``smc.known``: ``live``, ``made_room``, ``restarted``, ``no_run``; None if the card does not
    say), with the card's Uid."""
    from cardnet.applets.smc import KNOWN, KNOWN_IS
    from cardnet.card import mtypes as cm
    from cardnet.host import mtypes as hm
    from cardnet.host.client import AppClient
    from cardnet.host.errors import HostError
    from cardnet.services.smc.controller import SmcError, card_refused

    try:
        app = await AppClient.connect(socket, card=card)
    except OSError as exc:
        raise SmcError("no_host", f"cannot reach the module's host at {socket}: {exc.strerror or exc}") from None
    except HostError as exc:
        raise card_refused(exc) from None
    try:
        await app.send(app.uid.card_uid(), KNOWN, run=run)
        async with asyncio.timeout(KNOWN_WAIT_S):
            while True:
                msg = await app.recv()
                if msg.mtype == KNOWN_IS.code:
                    return str(KNOWN_IS.parse(msg)["held"]), app.uid.card_uid()
                if msg.mtype in (cm.REFUSED.code, hm.UNDELIVERABLE.code):  # (a card made before smc.known, or
                    return None, app.uid.card_uid()  # one its host could not give it: the PIN, then smc.state)
    except (TimeoutError, OSError, CardnetError):  # (the join asks again once logged in, and says why it fails)
        return None, app.uid.card_uid()
    finally:
        await app.aclose()


KNOWN_WAIT_S = 10.0
LATE_HELD = {  # a late join whose module is not in the run: why, in words, and the reason (before the PIN)
    "no_run": ("never joined it (no earlier join reached it)", None),
    "made_room": ("dropped it since, to make room for newer runs: it takes no further part in it", "made_room"),
    "restarted": ("restarted since: it takes no further part in it", "restarted"),
}


def _no_result(outcome: Any, spec: Any) -> tuple[str, str]:
    """Why this party's module ended its run without a result (``halted``, ``out``), and what to do: ``(message,
    hint)``. Like `smc run` without a decision, `join` then fails (reason ``no_decision``)."""
    least = spec.n - spec.terms.t
    why = {
        "halted": "it found itself cut off from the others (its host, or more than t hosts, dropped its frames), so "
        "it decided nothing rather than something different",
        "out": f"it took no part: fewer than n - t = {least} of the {spec.n} members had joined when the rounds "
        "began, so it took no input",
    }
    todo = {
        "halted": "check that this host reaches the other members' hosts ([routes] in its config) and their logs, "
        "then plan a new run (`cardnet smc plan`; a larger --round-ms if the hosts are slow) and join it",
        "out": f"plan a new run (`cardnet smc plan ... --start-in 30`) and have at least {least} members join it "
        "before its first round",
    }
    message = f"module {outcome.me} of run {spec.run.hex()} ended {outcome.status} with no result"
    if outcome.status in why:
        message += f": {why[outcome.status]}"
    hint = todo.get(outcome.status, "the host's log says what its module did; plan a new run and join it")
    return message, hint


async def _follow(party: Any, late: Any, start_at: float, round_s: float, as_json: bool) -> Any:
    """A join after the run's first round: if an earlier join of this card (stopped, e.g. Ctrl-C) put its module in
    the run with its input, the module still takes part (it ends a round by itself once the others' frames are in,
    and its frames travel through the host without the CLI); this join follows it to its result, giving no input,
    and is its Clock again from the round it reached (a late tick ends the rounds before it, as for a slow host).
    Otherwise ``late`` (``too_late``), saying what the module did."""
    from cardnet.services.smc.controller import SmcError

    spec = party.spec
    me = spec.members.index(party.module.card)
    try:
        state = await party.status()
    except SmcError as exc:
        if exc.reason != "no_run":
            raise  # restarted, made_room: the module takes no further part in the run
        raise SmcError(late.reason, f"{late}; module {me} never joined it (no earlier join reached it)") from None
    if not state.get("has_input"):
        raise SmcError(
            late.reason,
            f"{late}; module {me} joined it but was given no input before the first round (its join stopped before "
            "that), so it takes no part in it",
        )
    if not as_json:
        console.print(
            f"run {spec.run.hex()} began at {_clock(start_at)}: module {me} of {spec.n} is in it with the input an "
            f"earlier join gave it, at tick {state['ticks']} of {spec.rounds + 1}; following it to its result (this "
            "-i is not given: a module takes one input, before the first round)",
            markup=False,
        )
    return await party.run_rounds(start_at, round_s)


def _join_wait_s(spec: Any, start_at: float) -> float:
    """How long this party waits for the other members' joins (until the run's first round); ``too_late`` (the
    deadline printed) once it has passed."""
    from cardnet.services.smc.controller import SmcError

    now = time.time()
    try:
        return join_wait_s(now, start_at)
    except ProtocolError as exc:
        raise SmcError(
            exc.reason,
            f"run {spec.run.hex()} began at {_clock(start_at)}, {now - start_at:.1f} s ago: every member had to join "
            "by then (a module joins and takes its input before the first round), so this one can no longer take part",
        ) from None


def _clock(at: float) -> str:
    """A unix time as the wall clock, e.g. ``14:33:05 UTC``."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S UTC")


def _my_items(function: str, result: bytes | None, me: int, my_input: bytes) -> list[dict[str, Any]] | None:
    """For an exchange, the items this party received, opened with the key in its own input (others see them
    only sealed); None for other functions or without a result."""
    if function != "exchange" or result is None:
        return None
    from cardnet.protocols.smc.functions import open_exchange

    try:
        mine = open_exchange(result, me=me, my_input=my_input)
    except ProtocolError as exc:
        fail(str(exc), reason=exc.reason)
    return [
        {"from": source, "item": item.decode("utf-8", "replace"), "item_hex": item.hex()} for source, item in mine.items
    ]
