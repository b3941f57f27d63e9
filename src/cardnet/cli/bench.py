"""``cardnet bench``: benchmarks that print each figure beside its bound."""

from __future__ import annotations

import click
from rich.table import Table

from cardnet.cli.output import console, emit_json


@click.group()
def bench() -> None:
    """Measure cardnet against this machine's own limits.

    Every figure is printed beside its bound (the fsync rate, the SQLite
    commit rate, the crypto or socket rate it depends on), all measured in
    the same run. Use --json for scripts.
    """


@bench.command("card")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--seconds", default=2.0, show_default=True, help="How long to measure each figure.")
@click.option("--group", default=32, show_default=True, help="Messages per transaction for grouped_steps_per_s.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Directory (disk) to measure on; default: the system temp directory.",
)
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
    table = Table(title="cardnet bench card")
    table.add_column("figure")
    table.add_column("per second", justify="right")
    table.add_column("meaning")
    table.add_row("fsync_per_s", f"{r['fsync_per_s']:,}", "raw write+fsync on this disk (bound)")
    table.add_row("sqlite_commit_per_s", f"{r['sqlite_commit_per_s']:,}", "bare one-row durable commit (bound)")
    table.add_row(
        "sqlite_commit_exclusive_per_s",
        f"{r['sqlite_commit_exclusive_per_s']:,}",
        "the same, exclusive locking (as cards are held)",
    )
    table.add_row("steps_per_s", f"{r['steps_per_s']:,}", "durable card steps, one transaction each")
    table.add_row("grouped_steps_per_s", f"{r['grouped_steps_per_s']:,}", f"group commit, {group} a transaction")
    console.print(table)
    for target, ok in r["targets"].items():
        console.print(f"{'[green]met[/]' if ok else '[red]missed[/]'}  {target}")


@bench.command("etp")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--seconds", default=3.0, show_default=True, help="How long to measure each figure (over all rounds).")
@click.option(
    "--window",
    type=int,
    default=None,
    help="Round trips in flight, card to card and in the bound. Default: two host groups (512).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Directory (disk) for the cards' stores; default: the system temp directory.",
)
def bench_etp(as_json: bool, seconds: float, window: int | None, directory: str | None) -> None:
    """eTP card to card over TCP between two host processes: msgs_per_s, rtt_per_s vs tcp_bound_rtt_per_s."""
    from cardnet.bench import etp

    if window is None:
        window = etp.DEFAULT_WINDOW
    if seconds <= 0 or not 1 <= window <= etp.MAX_WINDOW:
        raise click.BadParameter(f"--seconds must be > 0 and --window 1..{etp.MAX_WINDOW}")
    if as_json:
        emit_json(etp.run(seconds, window, directory=directory))
        return
    with console.status("starting…") as status:
        r = etp.run(seconds, window, directory=directory, progress=status.update)
    table = Table(title="cardnet bench etp")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    table.add_row("header_bytes", str(r["header_bytes"]), "eTP header: src 16 + dst 16 + mtype 2")
    table.add_row("msgs_per_s", f"{r['msgs_per_s']:,}", "one-way card A -> card B, durable steps on both")
    table.add_row("rtt_per_s", f"{r['rtt_per_s']:,}", f"round trips card A -> B -> A, {window} in flight")
    table.add_row(
        "tcp_bound_rtt_per_s", f"{r['tcp_bound_rtt_per_s']:,}", "plain asyncio ping-pong, same sizes and window (bound)"
    )
    table.add_row("rtt_vs_tcp_bound", f"{r['rtt_vs_tcp_bound']:.3f}", "rtt_per_s / tcp_bound_rtt_per_s")
    console.print(table)
    console.print(
        f"messages: ping {r['ping_bytes']} B, pong {r['pong_bytes']} B, stream {r['stream_bytes']} B "
        f"(+{r['frame_prefix_bytes']} B frame prefix); medians of {r['rounds']} interleaved rounds"
    )
    for target, ok in r["targets"].items():
        console.print(f"{'[green]met[/]' if ok else '[red]missed[/]'}  {target}")
