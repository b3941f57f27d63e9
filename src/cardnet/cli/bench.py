"""``cardnet bench``: benchmarks that print each figure beside its bound."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import click

from cardnet.cli.output import FiniteRange, console, emit_json, json_option, print_table, table

Row = tuple[str, str, str]  # figure, value, meaning
AS_JSON = json_option
STORE_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Directory (disk) for the stores measured; default: the system temp directory.",
)


def _report(
    title: str, rows: list[Row], targets: dict[str, bool], notes: tuple[str, ...] = (), value: str = "value"
) -> None:
    """A benchmark's figures as a table for people, then its notes and whether each target was met."""
    t = table("figure", value, "meaning", title=title)
    t.columns[1].justify = "right"
    for row in rows:
        t.add_row(*row)
    print_table(t)
    for note in notes:
        console.print(note)
    for target, ok in targets.items():
        console.print(f"{'[green]met[/]' if ok else '[red]missed[/]'}  {target}")


def _measured(as_json: bool, run: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """A benchmark's ``run(*args, **kwargs)``: with --json its figures printed as JSON (None returned, nothing more to
    print), else its figures, measured under a status line that shows its progress."""
    if as_json:
        emit_json(run(*args, **kwargs))
        return None
    with console.status("starting…") as status:
        return run(*args, **kwargs, progress=status.update)


@click.group()
def bench() -> None:
    """Measure cardnet against this machine's own limits.

    Every figure is printed beside its bound (the fsync rate, the SQLite
    commit rate, the crypto or socket rate it depends on), all measured in
    the same run. Use --json for scripts.
    """


@bench.command("card")
@AS_JSON
@click.option(
    "--seconds",
    type=FiniteRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="How long to measure each figure.",
)
@click.option("--group", default=32, show_default=True, help="Messages per transaction for grouped_steps_per_s.")
@STORE_DIR
def bench_card(as_json: bool, seconds: float, group: int, directory: str | None) -> None:
    """Durable card steps vs. the disk: steps_per_s, grouped_steps_per_s, sqlite_commit_per_s, fsync_per_s."""
    from cardnet.bench import card

    if seconds <= 0 or group < 2:
        raise click.BadParameter("--seconds must be > 0 and --group at least 2")
    if as_json:
        emit_json(card.run(seconds, group, directory))
        return
    with console.status("measuring fsync, SQLite commits and card steps…"):
        r = card.run(seconds, group, directory)
    rows: list[Row] = [
        ("fsync_per_s", f"{r['fsync_per_s']:,}", "raw write+fsync on this disk (bound)"),
        ("sqlite_commit_per_s", f"{r['sqlite_commit_per_s']:,}", "bare one-row durable commit (bound)"),
        (
            "sqlite_commit_exclusive_per_s",
            f"{r['sqlite_commit_exclusive_per_s']:,}",
            "the same, exclusive locking (as cards are held)",
        ),
        ("steps_per_s", f"{r['steps_per_s']:,}", "durable card steps, one transaction each"),
        ("grouped_steps_per_s", f"{r['grouped_steps_per_s']:,}", f"group commit, {group} a transaction"),
    ]
    _report("cardnet bench card", rows, r["targets"], value="per second")


@bench.command("etp")
@AS_JSON
@click.option(
    "--seconds",
    type=FiniteRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="How long to measure each figure (over all rounds).",
)
@click.option(
    "--window",
    type=int,
    default=None,
    help="Round trips in flight, card to card and in the bound. Default: two host groups (512).",
)
@STORE_DIR
def bench_etp(as_json: bool, seconds: float, window: int | None, directory: str | None) -> None:
    """eTP card to card over TCP between two host processes: msgs_per_s, rtt_per_s vs tcp_bound_rtt_per_s."""
    from cardnet.bench import etp

    if window is None:
        window = etp.DEFAULT_WINDOW
    if seconds <= 0 or not 1 <= window <= etp.MAX_WINDOW:
        raise click.BadParameter(f"--seconds must be > 0 and --window 1..{etp.MAX_WINDOW}")
    r = _measured(as_json, etp.run, seconds, window, directory=directory)
    if r is None:
        return
    rows: list[Row] = [
        ("header_bytes", str(r["header_bytes"]), "eTP header: src 16 + dst 16 + mtype 2"),
        ("msgs_per_s", f"{r['msgs_per_s']:,}", "one-way card A -> card B, durable steps on both"),
        ("rtt_per_s", f"{r['rtt_per_s']:,}", f"round trips card A -> B -> A, {window} in flight"),
        (
            "tcp_bound_rtt_per_s",
            f"{r['tcp_bound_rtt_per_s']:,}",
            "plain asyncio ping-pong, same sizes and window (bound)",
        ),
        ("rtt_vs_tcp_bound", f"{r['rtt_vs_tcp_bound']:.3f}", "rtt_per_s / tcp_bound_rtt_per_s"),
    ]
    note = (
        f"messages: ping {r['ping_bytes']} B, pong {r['pong_bytes']} B, stream {r['stream_bytes']} B "
        f"(+{r['frame_prefix_bytes']} B frame prefix); medians of {r['rounds']} interleaved rounds"
    )
    _report("cardnet bench etp", rows, r["targets"], (note,))


@bench.command("trn")
@AS_JSON
@click.option(
    "--seconds",
    type=FiniteRange(min=0, min_open=True),
    default=6.0,
    show_default=True,
    help="How long to measure each figure (over all rounds).",
)
@click.option(
    "--in-flight",
    "in_flight",
    type=int,
    default=None,
    help="Tokens moving at once (an even number; half start at each wallet). Default: 32.",
)
@STORE_DIR
def bench_trn(as_json: bool, seconds: float, in_flight: int | None, directory: str | None) -> None:
    """Durable TRN token transfers between host processes: transfers_per_s vs bound_transfers_per_s.

    `cardnet bench transfer` (the name the issues give it) runs the same benchmark."""
    from cardnet.bench import trn as transfer

    if in_flight is None:
        in_flight = transfer.DEFAULT_IN_FLIGHT
    if seconds <= 0 or not 2 <= in_flight <= transfer.MAX_IN_FLIGHT or in_flight % 2:
        raise click.BadParameter(f"--seconds must be > 0 and --in-flight an even number 2..{transfer.MAX_IN_FLIGHT}")
    r = _measured(as_json, transfer.run, seconds, in_flight, directory=directory)
    if r is None:
        return
    rows: list[Row] = [
        ("transfers_per_s", f"{r['transfers_per_s']:,}", f"traced transfers a <-> b, {in_flight} in flight, durable"),
        ("untraced_transfers_per_s", f"{r['untraced_transfers_per_s']:,}", "the same, traceable=false"),
        (
            "bound_transfers_per_s",
            f"{r['bound_transfers_per_s']:,}",
            "1 / serial cost of one traced transfer's commits and crypto (bound)",
        ),
        ("transfers_vs_bound", f"{r['transfers_vs_bound']:.3f}", "transfers_per_s / bound_transfers_per_s"),
        ("p50_ms / p99_ms", f"{r['p50_ms']} / {r['p99_ms']}", "trn.send -> enabled at the receiver"),
        ("sqlite_commit_per_s", f"{r['sqlite_commit_per_s']:,}", "durable one-row commit, same disk"),
        ("ecdsa_verify_per_s", f"{r['ecdsa_verify_per_s']:,}", "P-256 verify of a token signature"),
        ("aead_seal_per_s / open", f"{r['aead_seal_per_s']:,} / {r['aead_open_per_s']:,}", "AES-256-GCM records"),
        ("copy_overhead_bytes", str(r["copy_overhead_bytes"]), "copy record above the token object"),
        ("ack_bytes", str(r["ack_bytes"]), "copied / committed record (each)"),
    ]
    ops = " + ".join(f"{n} {op}" for op, n in r["traced_ops_per_transfer"].items())
    note = f"one traced transfer = {ops} (no group commit assumed); medians of {r['rounds']} rounds"
    _report("cardnet bench trn", rows, r["targets"], (note,))


# ``cardnet bench transfer``: the issues' name for ``bench trn`` (the protocol's name in every layer), kept working,
# without a note (scripts and docs/benchmarks.md's history name it), and left out of ``cardnet bench --help``
_bench_transfer = copy.copy(bench_trn)
_bench_transfer.hidden = True
bench.add_command(_bench_transfer, "transfer")


@bench.command("fairx")
@AS_JSON
@click.option(
    "--in-flight",
    "in_flight",
    type=int,
    default=16,
    show_default=True,
    help="Exchanges at once (1..32: a card holds at most 32 offers for its owner).",
)
@click.option("--rounds", type=int, default=3, show_default=True, help="One-second windows measured (median).")
@click.option("--idle", type=int, default=20, show_default=True, help="Single exchanges timed on an idle system.")
def bench_fairx(as_json: bool, in_flight: int, rounds: int, idle: int) -> None:
    """Fair exchanges between wallet host processes: exchanges_per_s and p50/p99 vs the crypto and serial bounds."""
    from cardnet.bench import fairx

    if not 1 <= in_flight <= fairx.MAX_IN_FLIGHT or rounds < 1 or idle < 1:
        raise click.BadParameter(
            f"--in-flight must be 1..{fairx.MAX_IN_FLIGHT} (a wallet card holds at most {fairx.MAX_IN_FLIGHT} offers"
            " for its owner and refuses more as busy), --rounds >= 1, --idle >= 1"
        )
    r = _measured(as_json, fairx.run, in_flight=in_flight, rounds=rounds, idle=idle)
    if r is None:
        return
    rows: list[Row] = [
        ("exchanges_per_s", f"{r['exchanges_per_s']:,}", f"complete exchanges a <-> b, {in_flight} always under way"),
        ("p50_ms / p99_ms", f"{r['p50_ms']} / {r['p99_ms']}", "one exchange on an idle system, offer to complete"),
        (
            "crypto_bound_exchanges_per_s",
            f"{r['crypto_bound_exchanges_per_s']:,}",
            f"CPU of one exchange's crypto, over {r['cpus']} cores (bound)",
        ),
        (
            "serial_bound_exchanges_per_s",
            f"{r['serial_bound_exchanges_per_s']:,}",
            "the same on one core, plus one durable commit per card step",
        ),
        ("paper_exchange_ms", str(r["paper_exchange_ms"]), "TENeT Table 2, for the record"),
    ]
    ops = " + ".join(f"{n} {op}" for op, n in r["ops_per_exchange"].items())
    _report("cardnet bench fairx", rows, r["targets"], (f"one exchange (counted in process) = {ops}",))


@bench.command("speed")
@AS_JSON
@click.option("--customers", type=click.IntRange(5, 256), default=64, show_default=True,
              help="Customers buying at once in the busy round (the paper's 5 is always measured too).")  # fmt: skip
@click.option("--seconds", type=FiniteRange(0.5), default=3.0, show_default=True, help="Seconds per round.")
@click.option("--idle", type=click.IntRange(1), default=30, show_default=True, help="Purchases timed one at a time.")
def bench_speed(as_json: bool, customers: int, seconds: float, idle: int) -> None:
    """SPEED purchases: purchases_per_s, p50, delivery MB/s vs the crypto bound and the AES-GCM rate."""
    from cardnet.bench import speed

    r = _measured(as_json, speed.run, seconds=seconds, customers=customers, idle=idle)
    if r is None:
        return
    rows: list[Row] = [
        ("purchases_per_s", f"{r['purchases_per_s']:,}", "complete purchases, normal mode, the better of 5 and "
         f"{customers} customers"),
        ("  normal 5 / " + str(customers),
         f"{r['purchases_per_s_normal_5']} / {r[f'purchases_per_s_normal_{customers}']}",
         "16-byte product, purse payment"),
        ("  aggressive 5 / " + str(customers),
         f"{r['purchases_per_s_aggressive_5']} / {r[f'purchases_per_s_aggressive_{customers}']}", "no negotiation"),
        ("p50_ms / p99_ms", f"{r['p50_ms']} / {r['p99_ms']}", "one purchase on an idle system"),
        ("crypto_bound_purchases_per_s", f"{r['crypto_bound_purchases_per_s']:,}",
         f"CPU of one purchase's crypto over {r['cpus']} cores (bound)"),
        ("serial_bound_purchases_per_s", f"{r['serial_bound_purchases_per_s']:,}",
         "the same on one core, plus one durable commit per write"),
        ("delivery_mb_per_s", ", ".join(f"{k} {v}" for k, v in r["delivery_mb_per_s"].items()),
         f"against AES-GCM {r['aes_gcm_mb_per_s']} MB/s on one core"),
        ("paper_purchases_per_s", str(r["paper_purchases_per_s"]), "SPEED section 6.1, for the record"),
    ]  # fmt: skip
    ops = " + ".join(f"{n} {op}" for op, n in r["ops_per_purchase"].items())
    _report("cardnet bench speed", rows, r["targets"], (f"one purchase (counted in process) = {ops}",))


@bench.command("ticketing")
@AS_JSON
@click.option("--buyers", type=click.IntRange(1, 64), default=32, show_default=True,
              help="Buyers buying at once (each a host process of its own), then holders at the gate.")  # fmt: skip
@click.option("--seconds", type=FiniteRange(1.0), default=15.0, show_default=True,
              help="Seconds of the busy sale round, and of the busy gate round.")  # fmt: skip
@click.option("--idle", type=click.IntRange(1), default=20, show_default=True, help="Purchases timed one at a time.")
def bench_ticketing(as_json: bool, buyers: int, seconds: float, idle: int) -> None:
    """Tickets sold end to end by a ticketing server process, and admitted at a gate, vs their crypto bounds."""
    from cardnet.bench import ticketing

    r = _measured(as_json, ticketing.run, buyers=buyers, seconds=seconds, idle=idle)
    if r is None:
        return
    rows: list[Row] = [
        ("tickets_per_s", f"{r['tickets_per_s']:,}", f"sold end to end, {buyers} buyers at once, enabled on the card"),
        ("  crypto_bound_tickets_per_s", f"{r['crypto_bound_tickets_per_s']:,}",
         f"CPU of one sale's crypto over {r['cpus']} cores (bound); ratio {r['tickets_vs_crypto_bound']}"),
        ("  serial_bound_tickets_per_s", f"{r['serial_bound_tickets_per_s']:,}",
         "the same on one core, plus one durable commit per counted commit"),
        ("p50_ms / p99_ms", f"{r['p50_ms']} / {r['p99_ms']}", "one purchase on an idle system, page to enabled"),
        ("  crypto_bound_ticket_ms", str(r["crypto_bound_ticket_ms"]), "one sale's crypto on one core (bound)"),
        ("admissions_per_s", f"{r['admissions_per_s']:,}", f"verdicts at one gate, {buyers} holders presenting"),
        ("  crypto_bound_admissions_per_s", f"{r['crypto_bound_admissions_per_s']:,}",
         f"CPU of one admission's crypto over {r['cpus']} cores (bound); ratio {r['admissions_vs_crypto_bound']}"),
        ("  serial_bound_admissions_per_s", f"{r['serial_bound_admissions_per_s']:,}",
         "the same on one core, plus one durable commit per counted commit"),
    ]  # fmt: skip
    sale = " + ".join(f"{n} {op}" for op, n in r["ops_per_ticket"].items())
    adm = " + ".join(f"{n} {op}" for op, n in r["ops_per_admission"].items())
    cpu_t = ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_ticket"].items())
    cpu_a = ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_admission"].items())
    notes = (
        f"one sale (counted in process) = {sale}",
        f"one admission (counted in process) = {adm}",
        f"CPU ms per ticket: {cpu_t}",
        f"CPU ms per admission: {cpu_a}",
        f"books: {r['tickets_bought']} bought, {r['sales_recorded']} sales recorded, {r['tickets_delivered']} "
        f"delivered, {r['tickets_on_cards']} on the cards ({r['tickets_on_two_cards']} on two); gate admitted "
        f"{r['gate_admitted']}, refused {r['gate_refused']}",
        f"load average (1 min) before / after: {r['load_avg_1min'][0]} / {r['load_avg_1min'][1]} on {r['cpus']} cores",
    )
    _report("cardnet bench ticketing", rows, r["targets"], notes)


@bench.command("smc")
@AS_JSON
@click.option("--n", "ns", type=click.IntRange(3, 16), multiple=True, help="Parties (repeat; default: 3, 5 and 7).")
@click.option(
    "--reps",
    type=click.IntRange(1, 100),
    default=7,
    show_default=True,
    help="Repetitions of each function at each n, after one warm-up (medians and p90 reported).",
)
@click.option(
    "--round-ms",
    type=FiniteRange(1.0, 10_000.0),
    default=50.0,
    show_default=True,
    help="The Clock's round deadline (without faults the frames pace the rounds, not the deadline).",
)
@click.option("--seed", type=int, default=None, help="The inputs drawn, repeatably.")
def bench_smc(as_json: bool, ns: tuple[int, ...], reps: int, round_ms: float, seed: int | None) -> None:
    """TrustedPals SMC among n module host processes (median, auction at n = 3, 5, 7) vs MPyC's parties.

    Needs MPyC: pip install 'cardnet[bench]'.
    """
    from cardnet.bench import smc

    ns = tuple(dict.fromkeys(ns)) or smc.DEFAULT_NS
    r = _measured(as_json, smc.run, ns=ns, reps=reps, round_ms=round_ms, seed=seed)
    if r is None:
        return
    t = table("function", "n", "t", "rounds x deadline", "join_ms", "smc_ms (p90)", "mpyc_ms (p90)", "smc / mpyc",
              title="cardnet bench smc")  # fmt: skip
    for column in t.columns[1:]:
        column.justify = "right"
    for f in r["figures"]:
        t.add_row(f["function"], str(f["n"]), str(f["t"]), f"{f['rounds']} x {f['round_ms']:g} ms",
                  f"{f['join_ms']:.1f}", f"{f['smc_ms']:.1f} ({f['smc_p90_ms']:.1f})",
                  f"{f['mpyc_ms']:.1f} ({f['mpyc_p90_ms']:.1f})", f"{f['smc_vs_mpyc']:.3f}")  # fmt: skip
    print_table(t)
    setups = ", ".join(
        f"n={s['n']}: hosts {s['hosts_start_ms']:.0f} ms, first join {s['first_join_ms']:.0f} ms, "
        f"MPyC parties {s['mpyc_setup_ms']:.0f} ms"
        for s in r["setup"]
    )
    m, p = r["mpyc"], r["paper"]
    notes = (
        f"smc_ms: inputs given to every module -> every result pushed back; join_ms (before the inputs) not in it. "
        f"mpyc_ms: inputs written to every MPyC party -> every result read (MPyC {m['version']}, "
        f"{m['bit_length']}-bit secint, gmpy2 {'on' if m['gmpy2'] else 'off'}). Medians of {r['reps']} repetitions.",
        f"set-up, not in the figures: {setups}",
        f"the paper: rounds of {p['round_ms']} ms, {p['rounds']} rounds, {p['smc_ms']} ms an SMC",
        f"load average (1 min) before / after: {r['load_avg_1min'][0]} / {r['load_avg_1min'][1]} on {r['cpus']} cores",
    )
    for note in notes:
        console.print(note, markup=False)
    for target, ok in r["targets"].items():
        console.print(f"{'[green]met[/]' if ok else '[red]missed[/]'}  {target}")


def _add_protocol_benches() -> None:
    """Benchmarks whose commands live with their protocol's CLI."""
    from cardnet.cli.millicent import bench_millicent

    bench.add_command(bench_millicent)


_add_protocol_benches()
