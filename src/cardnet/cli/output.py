"""Output for people (rich) and for scripts (``--json``), and errors that say what to do."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)  # never fold a path or a field name


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def fail(message: str, *, hint: str | None = None, code: int = 2) -> None:
    """Print an error for a person and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}")
    if hint:
        err_console.print(f"[yellow]what to do:[/] {hint}")
    raise SystemExit(code)
