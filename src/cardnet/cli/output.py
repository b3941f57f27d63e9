"""Output for people (rich) and for scripts (``--json``), and errors that say what to do."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)  # never fold a path or a field name


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def fail(message: str, *, hint: str | None = None, reason: str | None = None, code: int = 2) -> NoReturn:
    """Print an error for a person (message taken literally, never as markup) and exit with ``code``."""
    tail = f" [dim](reason: {escape(reason)})[/]" if reason else ""
    err_console.print(f"[bold red]error:[/] {escape(message)}{tail}")
    if hint:
        err_console.print(f"[yellow]what to do:[/] {escape(hint)}")
    raise SystemExit(code)
