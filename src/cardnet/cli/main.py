"""Entry point of the ``cardnet`` command."""

from __future__ import annotations

import importlib
import logging
import re
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from cardnet import __version__
from cardnet.errors import CardnetError

# Each command group's module is imported only when that group runs (or --help lists it): a host
# started by `cardnet host run` does not load the simulator, the benchmarks and every other protocol's
# CLI, which halves its start-up time (restarts after a crash, and every short command, wait on it).
COMMANDS: dict[str, str] = {
    "demo": "cardnet.cli.demo:demo",
    "bench": "cardnet.cli.bench:bench",
    "sim": "cardnet.cli.sim:sim",
    "ca": "cardnet.cli.admin:ca",
    "card": "cardnet.cli.admin:card",
    "host": "cardnet.cli.host:host",
    "millicent": "cardnet.cli.millicent:millicent",
    "trn": "cardnet.cli.trn:trn",
    "authority": "cardnet.cli.authority:authority",
    "gate": "cardnet.cli.gate:gate",
    "exchange": "cardnet.cli.fairx:exchange",
    "ttp": "cardnet.cli.fairx:ttp",
    "speed": "cardnet.cli.speed:speed",
    "smc": "cardnet.cli.smc:smc",
    "ticketing": "cardnet.cli.ticketing:ticketing",
    "wallet": "cardnet.cli.wallet:wallet",
}
# What `cardnet --help` says of each group, whole (a group's own help is cut at the terminal's width), without
# importing any of them.
SUMMARIES: dict[str, str] = {
    "authority": "The TRN authority: traces tokens, blocks cloned devices.",
    "bench": "Measure cardnet against this machine's own limits.",
    "ca": "The certification authority that personalises cards.",
    "card": "Cards: manufacture and personalise them, look inside.",
    "demo": "Three cards under a CA, their applets talking.",
    "exchange": "Swap two vouchers fairly: both swap or neither loses.",
    "gate": "Admit each ticket once at a gate; refuse copies.",
    "host": "Run a host: cards, an app socket, links to other hosts.",
    "millicent": "Millicent scrip: vendors, brokers, a customer's wallet.",
    "sim": "A protocol under seeded faults, its invariants checked.",
    "smc": "Secure multiparty computation by security modules.",
    "speed": "SPEED purchases: vendor, broker, e-purse, buy, recover.",
    "ticketing": "Sell seats over HTTP, paid by SPEED, delivered by TRN.",
    "trn": "TRN tokens on a card: mint, send, list, answer, recover.",
    "ttp": "Run the TTP that settles interrupted fair exchanges.",
    "wallet": "Your card: tickets, exchanges, payments, a web page.",
}


def _load(target: str) -> click.Command:
    module, _, name = target.partition(":")
    command = getattr(importlib.import_module(module), name)
    assert isinstance(command, click.Command), target
    return command


class LazyGroup(click.Group):
    """A group whose subcommands named in ``lazy`` (name -> ``"module:attribute"``) are imported on first use:
    :data:`COMMANDS` for ``cardnet`` itself, a group's own table for its subcommands (``cardnet wallet``)."""

    def __init__(self, *args: Any, lazy: dict[str, str], summaries: dict[str, str] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.lazy = lazy
        self.summaries = summaries or {}

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The subcommands and what each does: a line from ``summaries`` where it has one (nothing imported for it),
        else the command's own short help, as click writes it."""
        if not self.summaries:
            super().format_commands(ctx, formatter)
            return
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows: list[tuple[str, str]] = []
        for name in names:
            if name in self.summaries:
                rows.append((name, self.summaries[name]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(_load(self.lazy[cmd_name]), cmd_name)
        return super().get_command(ctx, cmd_name)


def subcommands(group: click.Group) -> dict[str, click.Command]:
    """Every subcommand of ``group`` by name, importing the lazy ones (for the tests that walk the tree)."""
    ctx = click.Context(group)
    found = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    return {name: command for name, command in found.items() if command is not None}


@click.group(
    cls=LazyGroup, lazy=COMMANDS, summaries=SUMMARIES, context_settings={"help_option_names": ["-h", "--help"]}
)
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


# What to do after Ctrl-C, by the longest command words that match (else the default):
INTERRUPTED_HINTS: dict[tuple[str, ...], str] = {
    (): "run the command again when you are ready",
    ("speed", "buy"): "a purchase may have been under way: `cardnet speed recover{--socket S}{--card}{--ca-cert CA}"
    "{--out DIR}` finishes it (paid once at most), then `cardnet speed purse balance{--socket S}{--card}` shows the "
    "purse",
    ("speed", "recover"): "run it again: it finishes each purchase once, whatever was done already",
    ("speed", "purse", "load"): "a load may have been under way: `cardnet speed purse finish{--socket S}{--card}"
    "{--broker HOST:PORT}{--account A}` finishes it (credited once, or refused and forgotten)",
    ("wallet",): "`cardnet wallet recover{--config}{--socket}{--card}` finishes whatever was under way (each once); "
    "`cardnet wallet show{--config}{--socket}{--card}` shows where things stand",
    **{
        ("millicent", name): "`cardnet millicent list{--wallet}` shows any request left pending; `cardnet millicent "
        "retry{--wallet}` sends it again (its scrip is spent once at most)"
        for name in ("buy", "spend", "renew", "retry")
    },
    ("smc", "join"): "join again before the first round: the join goes on with the input the module has; after "
    "it, join again to follow the module's run to its result",
    ("trn",): "`cardnet trn list{--socket S}{--card}` shows how each token stands; `cardnet trn recover{--socket S}"
    "{--card}` resends what is unfinished",
    ("exchange",): "`cardnet exchange list{--socket S}{--card}` shows how each exchange stands and what to do next",
}


def _command_words(args: list[str]) -> tuple[str, ...]:
    """The command's words in ``args`` (``("speed", "buy")``), for the hint after an interruption: each word that
    names a subcommand of the one before; options and their values are skipped."""
    words: list[str] = []
    command: click.Command = cli
    for w in args[: args.index("--")] if "--" in args else args:
        if not isinstance(command, click.Group):
            break
        sub = None if w.startswith("-") else command.get_command(click.Context(command), w)
        if sub is not None:
            words.append(w)
            command = sub
    return tuple(words)


_GIVEN = re.compile(r"\{(--[a-z-]+)( [^}]*)?\}")  # {--out DIR}: the option as given, else DIR; {--card}: or nothing


def _option_value(args: list[str], option: str) -> str | None:
    """The value ``args`` gave ``option`` (``--out DIR`` or ``--out=DIR``; the last one wins), None if none."""
    value = None
    for i, a in enumerate(args):
        if a == option and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(option + "="):
            value = a[len(option) + 1 :]
    return value


def interrupted_hint(args: list[str]) -> str:
    """What to do after Ctrl-C stopped ``cardnet ARGS`` part-way (:data:`INTERRUPTED_HINTS`), with the values of
    the interrupted command's own options in the command it names (``{--out DIR}``: ``--out`` as given, else the
    placeholder ``DIR``; ``{--card}``: ``--card`` as given, else nothing), so that it can be run as it is."""
    words = _command_words(args)
    hint = next(INTERRUPTED_HINTS[words[:n]] for n in range(len(words), -1, -1) if words[:n] in INTERRUPTED_HINTS)
    return fill_options(hint, lambda option: _option_value(args, option))


def fill_options(hint: str, value: Callable[[str], str | None]) -> str:
    """``hint`` with each ``{--out DIR}`` made `` --out VALUE`` (shell-quoted) when ``value("--out")`` gives one,
    else `` --out DIR``; each ``{--card}`` `` --card VALUE``, else nothing."""

    def given(m: re.Match[str]) -> str:
        got = value(m.group(1))
        if got is not None:
            return f" {m.group(1)} {shlex.quote(got)}"
        return f" {m.group(1)}{m.group(2)}" if m.group(2) else ""

    return _GIVEN.sub(given, hint)


def given_options(hint: str) -> str:
    """``hint`` (a next step a command names: "then `cardnet wallet show{--config}`") with the options the running
    command was given on its command line filled in (:func:`fill_options`), so that the next command works on
    what this one did (the same wallet config, host, card) when typed as shown. An option that came from its default
    or the environment is left out (the environment carries over)."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)

    def value(option: str) -> str | None:
        if ctx is None:
            return None
        for param in ctx.command.params:
            if option in param.opts and param.name is not None:
                got = ctx.params.get(param.name)
                if got is not None and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
                    return str(got)
        return None

    return fill_options(hint, value)


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

    finished = False  # the command returned: a Ctrl-C after it (its context's clean-up) stopped nothing
    try:
        with cli.make_context("cardnet", list(args)) as ctx:
            meta = ctx.meta
            cli.invoke(ctx)
            finished = True
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (click.exceptions.Abort, EOFError):
        report_error("aborted", reason="aborted", as_json=as_json())
        return 1
    except KeyboardInterrupt:
        if finished:
            return 0
        report_error(
            "interrupted: the command stopped part-way",
            reason="interrupted",
            hint=interrupted_hint(args),
            as_json=as_json(),
        )
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
    code = run(sys.argv[1:])
    # The command is over (its result or its error printed). A Ctrl-C from here on lands while the interpreter shuts
    # down, after Python has put SIGINT back to its default: it would end the process by the signal (exit 130, no
    # word) though nothing was stopped. Ignored instead, so the exit status is the command's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    main()
