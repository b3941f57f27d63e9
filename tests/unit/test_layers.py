"""The layering rule of docs/architecture.md, checked by walking every import.

A module may import only packages of its own layer or below; protocol modules
additionally import no I/O, clock or randomness (sans-I/O).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "cardnet"

# package -> cardnet packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "wire": {"errors"},
    "store": {"errors"},
    "crypto": {"errors", "wire"},
    "transport": {"errors", "wire"},
    "protocols": {"errors", "wire", "crypto"},
    "card": {"errors", "wire", "crypto", "store"},
    "applets": {"errors", "wire", "crypto", "store", "card", "protocols"},
    "host": {"errors", "wire", "crypto", "store", "card", "transport", "applets", "protocols"},
    "services": {"errors", "wire", "crypto", "store", "card", "transport", "applets", "protocols", "host"},
    "sim": {"errors", "wire", "crypto", "store", "card", "transport", "applets", "protocols", "host", "services"},
    "bench": {
        "errors",
        "wire",
        "crypto",
        "store",
        "card",
        "transport",
        "applets",
        "protocols",
        "host",
        "services",
        "sim",
    },
    "cli": {
        "errors",
        "wire",
        "crypto",
        "store",
        "card",
        "transport",
        "applets",
        "protocols",
        "host",
        "services",
        "sim",
        "bench",
        "web",
    },
    # the web wallet sits beside the CLI (apps): it reads the card as `cardnet wallet` does (cli/wallet_pending.py)
    "web": {
        "errors",
        "wire",
        "crypto",
        "store",
        "card",
        "transport",
        "applets",
        "protocols",
        "host",
        "services",
        "cli",
    },
}
SANS_IO_FORBIDDEN = {"asyncio", "socket", "sqlite3", "time", "random", "os", "nats", "psycopg", "selectors", "ssl"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def test_every_package_is_placed_in_a_layer() -> None:
    packages = {_package(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert packages - {"__init__"} <= set(ALLOWED), f"put new packages into ALLOWED: {packages - set(ALLOWED)}"


def test_lower_layers_never_import_higher_ones() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        if path.parent == SRC and path.name == "__init__.py":
            continue
        pkg = _package(path)
        for name in _imports(path):
            if name.startswith("cardnet."):
                target = name.split(".")[1]
                if target != pkg and target not in ALLOWED[pkg]:
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_protocol_modules_are_sans_io() -> None:
    bad = []
    for path in (SRC / "protocols").rglob("*.py") if (SRC / "protocols").exists() else []:
        for name in _imports(path):
            if name.split(".")[0] in SANS_IO_FORBIDDEN:
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "protocol modules must not do I/O or read clocks/randomness:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walker really finds imports (so the tests above can fail)."""
    f = tmp_path / "m.py"
    f.write_text("import asyncio\nfrom cardnet.host import x\n")
    assert {"asyncio", "cardnet.host"} <= _imports(f)
