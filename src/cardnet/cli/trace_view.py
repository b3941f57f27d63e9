"""The trace view for people: a graph printed, as JSON, and drawn to SVG by graphviz's ``dot`` (a subprocess).

The DOT document itself comes from the pure :mod:`cardnet.protocols.trace_view`; here it is rendered, with a
timeout and a clear error when graphviz is missing (docs/trace-view.md).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from cardnet.errors import CardnetError
from cardnet.protocols.trace_view import Graph, to_dot
from cardnet.wire import Uid

RENDER_TIMEOUT_S = 60.0
INSTALL_HINT = "install graphviz (apt-get install graphviz)"


class RenderError(CardnetError):
    """``dot`` is missing, failed or took too long."""


def render_svg(dot: str, *, timeout_s: float = RENDER_TIMEOUT_S, program: str = "dot") -> bytes:
    """The SVG graphviz draws of ``dot``; :class:`RenderError` says why not (and how to fix a missing ``dot``)."""
    exe = shutil.which(program)
    if exe is None:
        raise RenderError("no_graphviz", f"graphviz's `{program}` is not on PATH: {INSTALL_HINT}")
    try:
        done = subprocess.run(
            [exe, "-Tsvg"], input=dot.encode("utf-8"), capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise RenderError(
            "render_timeout", f"`{program}` took more than {timeout_s:g} s: draw one token (trace OID) instead"
        ) from None
    except OSError as exc:
        raise RenderError("no_graphviz", f"cannot run `{exe}`: {exc.strerror or exc}; {INSTALL_HINT}") from None
    if done.returncode != 0 or not done.stdout:
        err = done.stderr.decode("utf-8", "replace").strip()[:500]
        raise RenderError("render_failed", f"`{program}` failed (exit {done.returncode}): {err}")
    return done.stdout


def graph_json(graph: Graph) -> dict[str, Any]:
    """A :class:`~cardnet.protocols.trace_view.Graph` for scripts (Uids as text, oids and nonces as hex)."""
    return {
        "authority": None if graph.authority is None else str(graph.authority),
        "tokens": [
            {
                "oid": c.oid.hex(),
                "issuer": str(c.issuer),
                "revoked": c.revoked,
                "reissued_as": None if c.reissued_as is None else c.reissued_as.hex(),
                "reissue_of": None if c.reissue_of is None else c.reissue_of.hex(),
                "movements": [
                    {"order": i, "from": str(m.frm), "to": str(m.to), "nonce": m.nonce.hex()}
                    for i, m in enumerate(c.moves, 1)
                ],
            }
            for c in graph.chains
        ],
        "branches": [
            {
                "signer": str(b.signer),
                "oid": b.oid.hex(),
                "evidence": b.evidence,
                "statements": [{"from": str(m.frm), "to": str(m.to), "nonce": m.nonce.hex()} for m in b.moves],
            }
            for b in graph.branches
        ],
        "blocked": sorted(str(u) for u in graph.blocked),
        "suspects": [{"uid": str(s.uid), "oid": s.oid.hex(), "reason": s.reason} for s in graph.suspects],
        "roles": {str(u): r for u, r in sorted(graph.roles.items(), key=lambda kv: bytes(kv[0]))},
    }


def print_graph(graph: Graph) -> None:
    """The graph for a person: each token's chain, then branches, blocked devices and suspects."""
    from cardnet.cli.output import console

    roles = {u.card_uid(): r for u, r in graph.roles.items()}

    def who(u: Uid) -> str:
        return f"{u} ({roles[u.card_uid()]})" if u.card_uid() in roles else str(u)

    for c in graph.chains:
        state = ""
        if c.reissued_as is not None:
            state = f", revoked: reissued as {c.reissued_as.hex()}"
        elif c.revoked:
            state = ", revoked"
        if c.reissue_of is not None:
            state += f", reissue of {c.reissue_of.hex()}"
        console.print(f"token {c.oid.hex()}: {len(c.moves)} movement(s){state}", markup=False)
        console.print(f"  issued by {who(c.issuer)}", markup=False)
        for i, m in enumerate(c.moves, 1):
            console.print(f"  #{i} {who(m.frm)} -> {who(m.to)}  transfer nonce {m.nonce.hex()}", markup=False)
    for b in graph.branches:
        refused = b.moves[-1] if b.moves else None
        to = f" (refused: -> {refused.to}, nonce {refused.nonce.hex()})" if refused else ""
        console.print(f"branch: {b.signer} moved {b.oid.hex()} twice or without holding it{to}", markup=False)
    for u in sorted(graph.blocked, key=bytes):
        console.print(f"blocked: {who(u)}", markup=False)
    for s in graph.suspects:
        console.print(f"suspected: {who(s.uid)} for {s.oid.hex()}: {s.reason}", markup=False)


def write_views(graph: Graph, title: str, svg: Path | None, dot: Path | None) -> dict[str, str]:
    """Write the DOT document and/or its SVG; which files were written (``fail`` says what went wrong)."""
    from cardnet.cli.output import fail, fail_os

    text = to_dot(graph, title=title)
    out: list[tuple[str, Path, bytes]] = []
    if dot is not None:
        out.append(("dot", dot, text.encode("utf-8")))
    if svg is not None:
        try:
            out.append(("svg", svg, render_svg(text)))
        except RenderError as exc:
            hint = INSTALL_HINT if exc.reason == "no_graphviz" else "write --dot FILE and render it yourself"
            fail(str(exc), reason=exc.reason, hint=hint)
    written: dict[str, str] = {}
    for kind, path, data in out:
        try:
            path.write_bytes(data)
        except OSError as exc:
            fail_os(exc, f"write the {kind.upper()} file", path)
        written[kind] = str(path)
    return written
