"""Entry point of the ``cardnet`` command."""

from __future__ import annotations

import logging

import click

from cardnet import __version__
from cardnet.cli.admin import ca, card
from cardnet.cli.authority import authority
from cardnet.cli.bench import bench
from cardnet.cli.demo import demo
from cardnet.cli.host import host
from cardnet.cli.millicent import bench_millicent, millicent
from cardnet.cli.sim import sim
from cardnet.cli.trn import trn
from cardnet.errors import CardnetError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cardnet")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """cardnet: smartcards and security modules that hold and move value on untrusted hosts.

    \b
    Start here:
      cardnet demo              personalise cards under a CA and watch them talk
      cardnet bench card        durable card steps against this disk's limits
      cardnet sim -p echo       a protocol under seeded faults, invariants checked

    Every command has --help; commands that print results accept --json.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


cli.add_command(demo)
cli.add_command(bench)
cli.add_command(sim)
cli.add_command(ca)
cli.add_command(card)
cli.add_command(host)
cli.add_command(millicent)
bench.add_command(bench_millicent)
cli.add_command(trn)
cli.add_command(authority)


def main() -> None:
    try:
        cli()
    except CardnetError as exc:
        from cardnet.cli.output import fail

        fail(str(exc), reason=exc.reason)


if __name__ == "__main__":
    main()
