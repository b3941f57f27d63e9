"""Output for people (rich) and for scripts (``--json``), and errors that say what to do.

Conventions for command authors (docs/cli.md):

- declare ``--json`` with :data:`json_option` (never a hand-made ``click.option("--json")``): it
  records on the click context that this invocation wants JSON, so :func:`fail` and ``main()``
  answer errors as one JSON object on stdout instead of prose on stderr;
- report a problem with :func:`fail` (or raise a :class:`~cardnet.errors.CardnetError`): never
  ``print`` an error or let an exception escape; ``main()`` turns whatever escapes into one
  clean error either way;
- print tables with :func:`table` (identifiers in them are never folded or cut, and no text in them is read as
  rich markup: a token body `[/] seat [b]9` prints as it is).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import click

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table


class _LazyConsole:
    """A rich ``Console`` made on first use: importing rich costs a process some 20 ms of CPU, and a host, or a
    command that answers in JSON, may never print through it (host processes restart hundreds of times in the
    SIGKILL tests)."""

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_console", None)

    def _real(self) -> Console:
        real = object.__getattribute__(self, "_console")
        if real is None:
            from rich.console import Console

            real = Console(**object.__getattribute__(self, "_options"))
            object.__setattr__(self, "_console", real)
        return cast("Console", real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real(), name, value)

    def __enter__(self) -> Console:  # (special methods are looked up on the type, not through __getattr__)
        return self._real().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._real().__exit__(*exc)


def real_console(c: Console) -> Console:
    """The rich ``Console`` itself, for rich objects that take one (``Progress(console=...)``)."""
    return c._real() if isinstance(c, _LazyConsole) else c


console = cast("Console", _LazyConsole(soft_wrap=True))
err_console = cast("Console", _LazyConsole(stderr=True, soft_wrap=True))  # never fold a path or a field name

T = TypeVar("T")

JSON_KEY = "cardnet.json"  # in click's ``ctx.meta`` (shared by every context of one invocation)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_KEY] = True
    return value


class FiniteRange(click.FloatRange):
    """A number option within a range, and a number: click's ``FloatRange`` lets ``nan`` through (every comparison
    with it is false), and a plain ``float`` option ``inf`` too, which as a wait or a deadline never ends."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number: give one such as 1.5", param, ctx)
        return super().convert(number, param, ctx)


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    is_eager=True,  # recorded before the other options are checked: their errors come out as JSON too
    callback=_remember_json,
    help='Print one JSON object (errors too: {"error": {...}} on stdout, non-zero exit).',
)


def wants_json() -> bool:
    """Whether the command being run was given ``--json``."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(JSON_KEY))


def emit_json(obj: Any, *, line: bool = False) -> None:
    """Print one JSON object on stdout (``line``: on one line, for a stream of events such as ``ready``)."""
    sys.stdout.write(json.dumps(obj, indent=None if line else 2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def say_ready(as_json: bool, fields: dict[str, Any], *lines: str) -> None:
    """What a service prints once it serves (launchers and tests wait for it): ``{"ready": fields}`` on one JSON
    line, or ``lines`` (the first ``ready ...``) for a person; flushed at once."""
    if as_json:
        emit_json({"ready": fields}, line=True)
    else:
        for text in lines:
            console.print(text, markup=False)
    console.file.flush()


def say(as_json: bool, result: dict[str, Any], text: str) -> None:
    """The outcome of a command: ``result`` as one JSON object, or ``text`` (printed literally) for a person."""
    if as_json:
        emit_json(result)
    else:
        console.print(text, markup=False)


_progress_up: list[bool] = []  # a progress line is up (nested waits show the outer one only)


@contextlib.contextmanager
def progress(text: str) -> Iterator[None]:
    """Show that the command waits (on the network, on another card) while the block runs: a spinner with ``text``
    on stderr at a terminal, else ``text`` once on stderr; nothing under ``--json`` (stdout stays one object)."""
    if wants_json() or _progress_up:
        yield
        return
    _progress_up.append(True)
    try:
        if err_console.is_terminal:
            from rich.text import Text

            with err_console.status(Text(text)):
                yield
        else:
            err_console.print(text, markup=False, highlight=False)
            yield
    finally:
        _progress_up.clear()


def error_object(
    message: str, *, reason: str, hint: str | None = None, fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON shape of every error: ``{"error": {"reason", "message", "hint"}}``, and ``fields`` if any (what
    the message says, for a program)."""
    return {"error": {"reason": reason, "message": message, "hint": hint, **(fields or {})}}


def report_error(
    message: str,
    *,
    reason: str | None = None,
    hint: str | None = None,
    as_json: bool | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    """Print an error: a JSON object on stdout under ``--json`` (with ``fields``), else prose on stderr (literal,
    never markup)."""
    if as_json is None:
        as_json = wants_json()
    if as_json:
        emit_json(error_object(message, reason=reason or "error", hint=hint, fields=fields))
        return
    from rich.markup import escape

    tail = f" [dim](reason: {escape(reason)})[/]" if reason else ""
    err_console.print(f"[bold red]error:[/] {escape(message)}{tail}")
    if hint:
        err_console.print(f"[yellow]what to do:[/] {escape(hint)}")


def fail(
    message: str,
    *,
    hint: str | None = None,
    reason: str | None = None,
    code: int = 2,
    fields: dict[str, Any] | None = None,
) -> NoReturn:
    """Report an error (JSON under ``--json``, with ``fields``; else for a person) and exit with ``code`` (never
    0)."""
    report_error(message, reason=reason, hint=hint, fields=fields)
    raise SystemExit(code or 2)


def ask_pin(pin: str | None, prompt: str = "card PIN", *, confirm: bool = False) -> str:
    """``pin``, else $CARDNET_PIN, else asked for on the terminal (twice when ``confirm``); with no terminal to ask
    on (a script, a pipe, a service) it fails at once with what to do instead of waiting on a prompt nobody sees."""
    value = pin or os.environ.get("CARDNET_PIN")
    if value is not None:
        return value
    if not sys.stdin.isatty():
        fail(
            f"no PIN given, and there is no terminal to ask for the {prompt} on",
            reason="no_pin",
            hint="pass --pin PIN, or set CARDNET_PIN in the environment",
        )
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


OS_REASONS = {
    errno.ENOENT: ("not_found", "check the path: its folder must exist"),
    errno.ENOTDIR: ("not_found", "check the path: a part of it is a file, not a folder"),
    errno.EACCES: ("permission_denied", "choose a path you may use, or fix its permissions"),
    errno.EPERM: ("permission_denied", "choose a path you may use, or fix its permissions"),
    errno.EROFS: ("permission_denied", "the file system is read-only: choose another path"),
    errno.EEXIST: ("already_exists", "choose another path; cardnet never overwrites it"),
    errno.EISDIR: ("is_a_directory", "give a file name, not a folder"),
    errno.ENOSPC: ("disk_full", "free some space on that disk, or choose another"),
}


def os_reason(exc: OSError) -> tuple[str, str]:
    """A stable ``reason`` and a hint for an ``OSError`` on a path a person gave."""
    return OS_REASONS.get(exc.errno or 0, ("os_error", "check the path and its permissions"))


def fail_os(exc: OSError, doing: str, path: str | os.PathLike[str]) -> NoReturn:
    """Fail for an ``OSError`` met while ``doing`` something to ``path`` (the person's path, not a temp file's)."""
    reason, hint = os_reason(exc)
    detail = exc.strerror or str(exc)
    folder = Path(path).parent
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not folder.is_dir():
        detail = f"the folder {folder} does not exist"
        hint = "create the folder first, or choose another path"
    fail(f"cannot {doing} {path}: {detail}", reason=reason, hint=hint)


# What a card's refusal (``card.refused``: a reason word and the card's own detail) means for its owner, and
# what to do: every command that shows a refusal to a person words it through :func:`card_refusal`.
CARD_REFUSALS: dict[str, tuple[str, str | None]] = {
    "privileged": ("this needs the card's PIN first", "give --pin, or set CARDNET_PIN"),
    "pin_locked": ("the card's PIN is locked after too many wrong tries", "the card must be personalised anew"),
    "no_applet": (
        "this card does not do that (no applet on it handles this request)",
        "is this the right card? name it with --card DOMAIN (the host runs it beside others)",
    ),
    "not_personalised": ("this card is not personalised yet", "personalise it: cardnet card create"),
    "not_for_this_card": ("the request was meant for another card", "name the card with --card DOMAIN"),
    "bad_param": ("the card could not read the request", "check the values you gave"),
    "applet_error": ("the card failed on this request and kept its state", "run with -v, and report it"),
    "ports_exhausted": ("this card has handed out every port it has", "the card must be personalised anew"),
    "wrong_usage": (
        "this card's role cannot do that (only a ticketing agent's card mints or reissues tokens)",
        "run it against the agent's card (--card DOMAIN)",
    ),
    "no_authority": ("this card has no authority yet", "set it first: cardnet trn set-authority"),
    "blocked": ("the other card is on the authority's blocklist: this card will not deal with it", None),
    "blocklist_stale": (
        "this card's blocklist is older than its freshness policy allows, so it refuses other cards for now",
        "let it reach its authority: cardnet trn recover",
    ),
    "no_session": ("this card has no session with the other card yet", "try again: the host opens one"),
    "bad_signature": ("the card found a signature that does not verify", None),
}

# ``wrong_usage`` is the TRN applet's refusal of a mint or reissue on a card that is no agent's (its detail starts
# with AGENT_ONLY: the words above), and also a certificate of the wrong role or usage (``cardnet authority
# add-agent --cert`` given the CA's certificate or a wallet's, say): that one is worded by the card's own detail.
AGENT_ONLY = "only a ticketing agent's card"
WRONG_USAGE_HINT = (
    "check the certificate you gave: it must be that of a card of the role named (`cardnet card show --store STORE "
    "--cert > FILE` writes a card's, while no host runs it)"
)

# An ``illegal_move`` refusal names the token's state: what that state means for its owner.
TOKEN_STATE_REFUSALS: dict[str, str] = {
    "null": "this card does not hold that token",
    "enabled": "this card holds that token and is not moving it",
    "disabled+O": "that token is already being sent (waiting for the receiver's copy)",
    "disabled": "that token was sent: this card committed the transfer",
    "trustless_disabled": "that token is still arriving on this card (waiting for the sender's commit)",
    "trustless": "that token arrived but waits for the authority's trace",
    "offered": "that token is offered to this card and waits for its owner's answer",
    "exchanging": "that token is in a pending exchange (it moves only when the exchange ends)",
}
_ILLEGAL_MOVE = re.compile(r"^(\S+) is not allowed for a token in state (\S+)$")


def card_refusal(reason: str, detail: str) -> tuple[str, str | None]:
    """A card's refusal in its owner's words: ``(message, what to do)``; the card's detail when no words fit."""
    if reason == "illegal_move" and (m := _ILLEGAL_MOVE.match(detail)) and m.group(2) in TOKEN_STATE_REFUSALS:
        return TOKEN_STATE_REFUSALS[m.group(2)], "`cardnet trn list` shows the tokens on this card and how each stands"
    if reason == "wrong_usage" and not detail.startswith(AGENT_ONLY):  # e.g. a certificate of the wrong role
        return f"the card refused: {detail}", WRONG_USAGE_HINT
    if reason in CARD_REFUSALS:
        return CARD_REFUSALS[reason]
    if reason in ("undeliverable", "peer_store_failed", "ttp_store_failed"):  # the host's words: not a refusal
        return detail, None
    return f"the card refused: {detail or reason}", None


# A vendor's refusal of a Millicent spend (its status), in the customer's words.
SPEND_REFUSALS: dict[str, tuple[str, str | None]] = {
    "forged": ("the vendor does not recognise this scrip as its own", "buy scrip of this vendor from your broker"),
    "stolen": ("the vendor says this scrip is not yours (it is bound to another customer's secret)", None),
    "spent": ("this scrip was already spent at this vendor", "cardnet millicent list shows the scrip you hold"),
    "expired": ("this scrip has expired", "renew scrip before it expires: cardnet millicent renew"),
    "wrong_vendor": ("this scrip is another vendor's", "check --vendor"),
    "insufficient": ("the scrip is worth less than the price", "check --price"),
    "malformed": ("the vendor could not read the request", "check --price and --product"),
    "unknown_product": ("the vendor does not sell {product}", "check --product"),
    "level_too_low": ("the vendor requires a higher protection level", "give --level 3 (or 2)"),
    "wrong_price": ("the vendor does not sell {product} at {price}: your scrip was not spent", "check --price"),
}


def spend_refusal(status: str, detail: str, *, product: str, price: int) -> tuple[str, str | None]:
    """A vendor's refusal of a purchase in the customer's words: ``(message, what to do)``."""
    words, hint = SPEND_REFUSALS.get(status, (f"the vendor refused: {status}", None))
    words = words.format(product=product, price=price)
    return (f"{words} ({detail})" if detail else words), hint


def write_new_files(files: dict[Path, tuple[bytes, int]]) -> None:
    """Write new files all or nothing: each ``path: (data, mode)``; none may exist yet.

    Each is written to a temporary file beside it and linked into place (which refuses an existing
    name); if any step fails, the files already placed are removed and the error is raised.
    """
    temps: list[str] = []
    placed: list[Path] = []
    try:
        for path, (data, mode) in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(tmp)
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for path, tmp in zip(files, temps, strict=True):
            try:
                os.link(tmp, path)
            except OSError as exc:
                raise type(exc)(exc.errno, exc.strerror, str(path)) from None
            placed.append(path)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)


def new_file_then(path: Path, mode: int, record: Callable[[Callable[[bytes], None]], T]) -> T:
    """Create the new file ``path`` (never overwritten) with what ``record`` makes, and nothing recorded if
    the file cannot be written.

    A temporary file is made beside ``path`` first, so a missing or unwritable folder fails before
    anything is recorded. ``record(write)`` records (e.g. in a store transaction) and calls
    ``write(data)`` before it commits: ``write`` fills the temporary file and links it into place, so if
    writing fails the record is rolled back; if ``record`` fails after the file was placed, the file is
    removed. An ``OSError`` names ``path``.
    """
    if path.exists() or path.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    placed = False

    def write(data: bytes) -> None:
        nonlocal placed
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        try:
            os.link(tmp, path)
        except OSError as exc:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        placed = True

    try:
        result = record(write)
        if not placed:
            raise RuntimeError(f"nothing was written to {path}")
        return result
    except BaseException:
        if placed:
            path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)


@functools.cache
def _literal_table() -> type[Table]:
    """The table class :func:`table` makes (defined on first use: rich is imported only when something prints)."""
    from rich.style import StyleType
    from rich.table import Table
    from rich.text import Text

    def literal(cell: RenderableType | None) -> RenderableType | None:
        return Text(cell) if isinstance(cell, str) else cell

    class LiteralTable(Table):
        """A rich table whose text is printed as it is: a cell, header or title that is a ``str`` is never read
        as markup (a token body such as ``[/] seat [b]9`` would otherwise raise ``MarkupError`` or change
        style)."""

        def add_row(self, *renderables: RenderableType | None, style: StyleType | None = None,
                    end_section: bool = False) -> None:  # fmt: skip
            super().add_row(*(literal(r) for r in renderables), style=style, end_section=end_section)

    return LiteralTable


def table(*columns: str, title: str | None = None) -> Table:
    """A table for people whose cells are never wrapped and never read as markup: print it with
    :func:`print_table`.

    At a narrow terminal rich would squeeze columns (wrapping or ellipsizing a domain or a path);
    :func:`print_table` gives each column its full width and lets the line run past the edge instead,
    so identifiers stay copyable whole. Every ``str`` put in it (cells, headers, title) prints literally.
    """
    from rich.text import Text

    t = _literal_table()(title=None if title is None else Text(title), expand=False)
    for name in columns:
        t.add_column(Text(name), overflow="fold", no_wrap=True)
    return t


def print_fields(fields: list[tuple[str, str]], *, title: str | None = None) -> None:
    """A status for people: one ``name  value`` row per field, values never cut."""
    t = table("", "", title=title)
    t.show_header = False
    for name, value in fields:
        t.add_row(name, value)
    print_table(t)


def print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], *, title: str, empty: str) -> None:
    """A list for people: a table of ``columns`` (identifiers whole), or the sentence ``empty`` when there are none."""
    if not rows:
        console.print(empty, markup=False)
        return
    t = table(*(c.replace("_", " ") for c in columns), title=title)
    for r in rows:
        t.add_row(*(str(r.get(c, "")) for c in columns))
    print_table(t)


def print_table(t: Table) -> None:
    """Print a :func:`table` at its natural width, whatever the terminal's width."""
    natural = console.measure(t, options=console.options.update(width=1_000_000)).maximum
    saved = console._width  # rich clamps print(width=...) to the terminal's width: widen the console itself
    console.width = max(natural, console.width)
    try:
        console.print(t, crop=False)
    finally:
        console._width = saved


@contextlib.contextmanager
def all_or_nothing(*stores: str | Path) -> Iterator[None]:
    """What a command makes, all or nothing: each file among ``stores`` (a path, or a store's ``sqlite:///`` URL) that
    does not exist before the block is removed again, with its WAL files, if the block fails (a full disk, a refusal
    half-way): a half-made store would refuse the next try ("personalised already", "already made"). Other URLs
    (``:memory:``, a server's) are left alone."""
    new: list[Path] = []
    for where in stores:
        text = str(where)
        if text.startswith("sqlite:///") and ":memory:" not in text:
            text = text[len("sqlite:///") :].partition("?")[0]
        elif "://" in text:
            continue
        path = Path(text)
        if not path.exists():
            new.append(path)
    try:
        yield
    except BaseException:
        for path in new:
            for made in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                made.unlink(missing_ok=True)
        raise
