"""A small mutation driver: does the simulator (and optionally a pytest subset) catch small realistic bugs?

One mutant at a time, in a temporary copy of ``src``: flip a comparison operator, drop one operand of an
``and``/``or``, move an integer constant by one, or skip a statement (``pass`` instead). Each mutant runs
``cardnet sim --protocol P --seeds N`` (and ``pytest -q -x ARGS`` if given); it is *caught* if any of them
reports a violation, fails or crashes. Slow: not part of the test suite.

    python tools/mutate.py --sample 30 --seeds 100 --protocol trn
    python tools/mutate.py --sample 20 --seeds 50 --protocol trn --pytest tests/protocol -- -k attacks

The sample is drawn with ``--rng`` from every mutation site of ``--module`` (default: the protocol, trace,
card, host and Millicent modules), so two runs with the same options mutate the same sites.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "src/cardnet/protocols/trn/transfer.py",
    "src/cardnet/protocols/trn/trace.py",
    "src/cardnet/protocols/millicent/scrip.py",
    "src/cardnet/protocols/millicent/vendor.py",
    "src/cardnet/protocols/millicent/broker.py",
    "src/cardnet/applets/trn.py",
    "src/cardnet/applets/authority.py",
    "src/cardnet/card/runtime.py",
    "src/cardnet/host/core.py",
)
FLIP = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip


@dataclass(frozen=True)
class Site:
    path: str
    kind: str  # flip, drop, const, skip
    index: int  # the n-th node of that kind in the file
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.kind}#{self.index}"


def _matches(node: ast.AST, kind: str) -> bool:
    if kind == "flip":
        return isinstance(node, ast.Compare) and type(node.ops[0]) in FLIP
    if kind == "drop":
        return isinstance(node, ast.BoolOp) and len(node.values) >= 2
    if kind == "const":
        return isinstance(node, ast.Constant) and type(node.value) is int
    if isinstance(node, (ast.FunctionDef, ast.If, ast.For, ast.With, ast.Try)):  # skip: one statement of a body
        return len(node.body) > 1 or not isinstance(node.body[0], (ast.Pass, ast.Expr))
    return False


def _candidates(tree: ast.AST, kind: str) -> list[ast.AST]:
    return [node for node in ast.walk(tree) if _matches(node, kind)]


def sites(paths: list[str]) -> list[Site]:
    found = []
    for path in paths:
        tree = ast.parse((ROOT / path).read_text())
        for kind in ("flip", "drop", "const", "skip"):
            for i, node in enumerate(_candidates(tree, kind)):
                found.append(Site(path, kind, i, getattr(node, "lineno", 0)))
    return found


def mutate(source: str, site: Site, rng: random.Random) -> str:
    tree = ast.parse(source)
    node = _candidates(tree, site.kind)[site.index]
    if isinstance(node, ast.Compare):
        node.ops[0] = FLIP[type(node.ops[0])]()
    elif isinstance(node, ast.BoolOp):
        del node.values[rng.randrange(len(node.values))]
        if len(node.values) == 1:  # (a BoolOp of one value is not valid Python)
            node.values.append(ast.Constant(isinstance(node.op, ast.And)))
    elif isinstance(node, ast.Constant):
        node.value = node.value + rng.choice((-1, 1))
    else:
        body = node.body  # type: ignore[attr-defined]
        stmts = [i for i, s in enumerate(body) if not (i == 0 and isinstance(s, ast.Expr))]  # keep docstrings
        if stmts:
            body[rng.choice(stmts)] = ast.Pass()
    return ast.unparse(ast.fix_missing_locations(tree))


def run(cmd: list[str], src: Path, timeout: float) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    try:
        p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return True, "timeout"
    return p.returncode != 0, (p.stdout + p.stderr)[-300:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", action="append", help="a file under src/ to mutate (repeatable)")
    ap.add_argument("--sample", type=int, default=20, help="how many mutants")
    ap.add_argument("--seeds", type=int, default=100, help="simulator seeds per mutant")
    ap.add_argument("--protocol", action="append", help="scenario(s) to run (default: trn)")
    ap.add_argument("--pytest", nargs="*", help="also run pytest -q -x with these arguments")
    ap.add_argument("--rng", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.rng)
    pool = sites(args.module or list(MODULES))
    chosen = rng.sample(pool, min(args.sample, len(pool)))
    results = []
    with tempfile.TemporaryDirectory(prefix="cardnet-mutate-") as tmp:
        src = Path(tmp) / "src"
        for n, site in enumerate(chosen, 1):
            shutil.rmtree(src, ignore_errors=True)
            shutil.copytree(ROOT / "src", src)
            target = Path(tmp) / site.path
            target.write_text(mutate((ROOT / site.path).read_text(), site, random.Random(f"{args.rng}:{site}")))
            caught_by = []
            for protocol in args.protocol or ["trn"]:
                cmd = [sys.executable, "-m", "cardnet.cli.main", "sim", "--protocol", protocol]
                cmd += ["--seeds", str(args.seeds), "-j", str(args.jobs), "--json"]
                bad, _ = run(cmd, src, args.timeout)
                if bad:
                    caught_by.append(f"sim:{protocol}")
            if args.pytest is not None:
                bad, _ = run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args.pytest],
                             src, args.timeout)  # fmt: skip
                if bad:
                    caught_by.append("pytest")
            results.append({"site": str(site), "caught_by": caught_by})
            if not args.json:
                print(f"[{n}/{len(chosen)}] {site}: {'caught by ' + ', '.join(caught_by) if caught_by else 'MISSED'}")
    caught = sum(1 for r in results if r["caught_by"])
    summary = {"mutants": len(results), "caught": caught, "fraction": round(caught / max(1, len(results)), 2)}
    if args.json:
        print(json.dumps({**summary, "results": results}, indent=2))
    else:
        print(f"caught {caught} of {len(results)} mutants ({summary['fraction']:.0%})")


if __name__ == "__main__":
    main()
