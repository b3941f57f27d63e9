"""The trace view for people: a graph printed, as JSON, and drawn to SVG by graphviz's ``dot`` (a subprocess).

The DOT document itself comes from the pure :mod:`cardnet.protocols.trace_view`; here it is rendered, with a
timeout and a clear error when graphviz is missing (docs/trace-view.md).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from html import escape
from pathlib import Path
from typing import Any

from cardnet.errors import CardnetError
from cardnet.protocols.trace_view import Graph, to_dot
from cardnet.transport.http import HttpError, Request, Response, Router
from cardnet.web.session import check_host
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
        how = "twice from one holding (a clone)" if b.evidence > 1 else "without holding it"
        console.print(f"branch: {b.signer} moved {b.oid.hex()} {how}{to}", markup=False)
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


# -- the authority's web view (cardnet authority web) ------------------------------------------------------------
Fetch = Callable[[bytes | None], Awaitable[Graph]]  # the graph (None) or one token's (its oid), from the authority
PAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'"
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"


class TraceWeb:
    """The pages of ``cardnet authority web``: the movement graph and a token's chain, as SVG drawn by ``dot``
    (one drawing at a time, the last ones kept while the graph has not changed), HTML for people and JSON for
    programs (``Accept``)."""

    def __init__(self, fetch: Fetch, *, keep: int = 16) -> None:
        self.fetch = fetch
        self.address: tuple[str, int] | None = None  # where it is served (set once listening): the Host it answers
        self.keep = keep  # drawings kept, by their DOT text
        self._drawn: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    def router(self) -> Router:
        """The routes; each answers only a request naming :attr:`address` in ``Host`` (403 ``wrong_host``
        otherwise, as the web wallet: a site's name rebound to 127.0.0.1 reads nothing of the authority's)."""
        r = Router()
        r.add("GET", "/", self._named(self.index))
        r.add("GET", "/graph.svg", self._named(self.graph_svg))
        r.add("GET", "/token", self._named(self.token_form))
        r.add("GET", "/token/{oid}", self._named(self.token))
        r.add("GET", "/token/{oid}/chain.svg", self._named(self.token_svg))
        return r

    def _named(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def named(request: Request) -> Response:
            if self.address is None:
                raise HttpError(503, "starting", "the trace view is not listening yet: try again in a moment")
            check_host(request, *self.address, "the authority's trace view")
            return await handler(request)

        return named

    async def _svg(self, graph: Graph, title: str) -> Response:
        text = to_dot(graph, title=title)
        async with self._lock:
            svg = self._drawn.get(text)
            if svg is None:
                try:
                    svg = await asyncio.to_thread(render_svg, text)
                except RenderError as exc:
                    raise HttpError(503, exc.reason, str(exc)) from None
                if len(self._drawn) >= self.keep:
                    self._drawn.clear()
                self._drawn[text] = svg
        return Response(200, svg, "image/svg+xml", (("Content-Security-Policy", SVG_CSP),))

    async def _graph(self, oid: bytes | None) -> Graph:
        try:
            return await self.fetch(oid)
        except (CardnetError, OSError, TimeoutError) as exc:
            raise HttpError(502, "authority_unreachable", f"the authority card did not answer: {exc}") from None

    @staticmethod
    def _oid(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(raw) != 16:
            raise HttpError(400, "bad_oid", f"{text[:40]!r} is not an oid: an oid is 32 hex digits")
        return raw

    @staticmethod
    def _page(title: str, body: str) -> Response:
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}img{max-width:100%;border:1px solid #ccc}"
            "li{font-family:monospace}</style></head>"
            f"<body><h1>{escape(title)}</h1>{body}</body></html>\n"
        )
        return Response.html(page, headers=(("Content-Security-Policy", PAGE_CSP),))

    @staticmethod
    def _form(value: str = "") -> str:
        return (
            "<form action='/token' method='get'><label>trace a token (oid, 32 hex): "
            f"<input name='oid' value='{escape(value)}' size='34'></label> <button>trace</button></form>"
        )

    async def index(self, request: Request) -> Response:
        graph = await self._graph(None)
        if not request.wants_html:
            return Response.json(graph_json(graph))
        tokens = "".join(
            f"<li><a href='/token/{c.oid.hex()}'>{c.oid.hex()}</a>: {len(c.moves)} movement(s)"
            f"{' (revoked)' if c.revoked else ''}</li>"
            for c in graph.chains
        )
        blocked = "".join(f"<li>{escape(str(u))}</li>" for u in sorted(graph.blocked, key=bytes))
        body = (
            f"{self._form()}<p><img src='/graph.svg' alt='the movement graph'></p>"
            f"<h2>tokens</h2><ul>{tokens or '<li>none traced yet</li>'}</ul>"
            f"<h2>blocked devices</h2><ul>{blocked or '<li>none</li>'}</ul>"
        )
        return self._page("cardnet authority: movement graph", body)

    async def graph_svg(self, request: Request) -> Response:
        return await self._svg(await self._graph(None), "cardnet movement graph")

    async def token_form(self, request: Request) -> Response:
        oid = self._oid(request.query.get("oid", "").strip())
        return Response(303, b"", "text/plain", (("Location", f"/token/{oid.hex()}"),))

    async def token(self, request: Request) -> Response:
        oid = self._oid(request.params["oid"])
        graph = await self._graph(oid)
        if not graph.chains and not graph.branches and not graph.suspects:
            raise HttpError(404, "unknown_oid", f"the authority has no record of token {oid.hex()}")
        if not request.wants_html:
            return Response.json({"oid": oid.hex(), **graph_json(graph)})
        roles = {u.card_uid(): r for u, r in graph.roles.items()}
        rows = "".join(
            f"<li>{c.oid.hex()[:8]} #{i}: {escape(str(m.frm))} ({escape(roles.get(m.frm.card_uid(), '?'))}) -&gt; "
            f"{escape(str(m.to))} ({escape(roles.get(m.to.card_uid(), '?'))}), nonce {m.nonce.hex()}</li>"
            for c in graph.chains
            for i, m in enumerate(c.moves, 1)
        )
        body = (
            f"<p><a href='/'>the whole graph</a></p>{self._form(oid.hex())}"
            f"<p><img src='/token/{oid.hex()}/chain.svg' alt='the chain of {oid.hex()}'></p><ul>{rows}</ul>"
        )
        return self._page(f"token {oid.hex()}", body)

    async def token_svg(self, request: Request) -> Response:
        oid = self._oid(request.params["oid"])
        return await self._svg(await self._graph(oid), f"cardnet trace of token {oid.hex()}")
