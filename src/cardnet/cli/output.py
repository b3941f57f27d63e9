"""Output for people (rich) and for scripts (``--json``), and errors that say what to do.

Conventions for command authors (docs/cli.md):

- declare ``--json`` with :data:`json_option` (never a hand-made ``click.option("--json")``): it
  records on the click context that this invocation wants JSON, so :func:`fail` and ``main()``
  answer errors as one JSON object on stdout instead of prose on stderr;
- report a problem with :func:`fail` (or raise a :class:`~cardnet.errors.CardnetError`): never
  ``print`` an error or let an exception escape; ``main()`` turns whatever escapes into one
  clean error either way;
- print tables with :func:`table` (identifiers in them are never folded or cut).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)  # never fold a path or a field name

JSON_KEY = "cardnet.json"  # in click's ``ctx.meta`` (shared by every context of one invocation)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_KEY] = True
    return value


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


def error_object(message: str, *, reason: str, hint: str | None = None) -> dict[str, Any]:
    """The JSON shape of every error: ``{"error": {"reason", "message", "hint"}}``."""
    return {"error": {"reason": reason, "message": message, "hint": hint}}


def report_error(
    message: str, *, reason: str | None = None, hint: str | None = None, as_json: bool | None = None
) -> None:
    """Print an error: a JSON object on stdout under ``--json``, else prose on stderr (literal, never markup)."""
    if as_json is None:
        as_json = wants_json()
    if as_json:
        emit_json(error_object(message, reason=reason or "error", hint=hint))
        return
    tail = f" [dim](reason: {escape(reason)})[/]" if reason else ""
    err_console.print(f"[bold red]error:[/] {escape(message)}{tail}")
    if hint:
        err_console.print(f"[yellow]what to do:[/] {escape(hint)}")


def fail(message: str, *, hint: str | None = None, reason: str | None = None, code: int = 2) -> NoReturn:
    """Report an error (JSON under ``--json``, else for a person) and exit with ``code`` (never 0)."""
    report_error(message, reason=reason, hint=hint)
    raise SystemExit(code or 2)


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


def table(*columns: str, title: str | None = None) -> Table:
    """A table for people whose cells are never wrapped: print it with :func:`print_table`.

    At a narrow terminal rich would squeeze columns (wrapping or ellipsizing a domain or a path);
    :func:`print_table` gives each column its full width and lets the line run past the edge instead,
    so identifiers stay copyable whole.
    """
    t = Table(title=title, expand=False)
    for name in columns:
        t.add_column(name, overflow="fold", no_wrap=True)
    return t


def print_table(t: Table) -> None:
    """Print a :func:`table` at its natural width, whatever the terminal's width."""
    natural = console.measure(t, options=console.options.update(width=1_000_000)).maximum
    saved = console._width  # rich clamps print(width=...) to the terminal's width: widen the console itself
    console.width = max(natural, console.width)
    try:
        console.print(t, crop=False)
    finally:
        console._width = saved
