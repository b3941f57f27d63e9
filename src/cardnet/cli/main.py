"""Entry point of the ``cardnet`` command."""

from __future__ import annotations

import logging
import re
import sys

import click

from cardnet import __version__
from cardnet.cli.admin import ca, card
from cardnet.cli.authority import authority
from cardnet.cli.bench import bench
from cardnet.cli.demo import demo
from cardnet.cli.fairx import exchange, ttp
from cardnet.cli.host import host
from cardnet.cli.millicent import bench_millicent, millicent
from cardnet.cli.sim import sim
from cardnet.cli.speed import speed
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
cli.add_command(exchange)
cli.add_command(ttp)
cli.add_command(speed)


def _flag_in_argv(args: list[str], *names: str) -> bool:
    """Whether a flag was given, for errors raised before click recorded it (e.g. an unknown option)."""
    words = args[: args.index("--")] if "--" in args else args
    return any(w in names for w in words)


def _verbosity(args: list[str]) -> int:
    words = args[: args.index("--")] if "--" in args else args
    n = 0
    for w in words:
        if w == "--verbose":
            n += 1
        elif re.fullmatch(r"-v+", w):
            n += len(w) - 1
    return n


def run(args: list[str]) -> int:
    """Run ``cardnet ARGS`` and return its exit code; every error becomes one clean report.

    A :class:`CardnetError`, a usage error, an ``OSError`` (a user's path) or any unexpected
    exception is reported as one error (a JSON object on stdout when the command was given
    ``--json``, else prose on stderr) with a non-zero exit code. A traceback is printed only
    with ``-v``.
    """
    from cardnet.cli.output import JSON_KEY, err_console, os_reason, report_error

    meta: dict[str, object] = {}
    verbose = _verbosity(args)

    def as_json() -> bool:
        return bool(meta.get(JSON_KEY)) or _flag_in_argv(args, "--json")

    try:
        with cli.make_context("cardnet", list(args)) as ctx:
            meta = ctx.meta
            cli.invoke(ctx)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (click.exceptions.Abort, EOFError):
        report_error("aborted", reason="aborted", as_json=as_json())
        return 1
    except KeyboardInterrupt:
        report_error("interrupted", reason="interrupted", as_json=as_json())
        return 130
    except click.ClickException as exc:
        if not as_json():
            exc.show()
        else:
            hint = None
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f"see `{exc.ctx.command_path} --help`"
            report_error(exc.format_message(), reason="usage", hint=hint, as_json=True)
        return exc.exit_code or 2
    except CardnetError as exc:
        report_error(str(exc), reason=exc.reason, hint=getattr(exc, "hint", None), as_json=as_json())
        return 2
    except OSError as exc:
        reason, hint = os_reason(exc)
        what = exc.strerror or str(exc)
        where = exc.filename if exc.filename is not None else ""
        message = f"{what}: {where}" if where else what
        report_error(message, reason=reason, hint=hint, as_json=as_json())
        if verbose:
            err_console.print_exception()
        return 1
    except Exception as exc:
        report_error(
            f"unexpected internal error: {type(exc).__name__}: {exc}",
            reason="internal",
            hint="run with -v for details (cardnet -v ...), and report it",
            as_json=as_json(),
        )
        if verbose:
            err_console.print_exception()
        return 1


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
