"""The trace view: the authority's recorded movements as a graphviz DOT document (pure; rendering is elsewhere).

Theory of operation
-------------------
The authority answers ``auth.graph_q`` with bounded pages (``applets/authority.py``); :class:`GraphBuilder`
puts the pages together into one :class:`Graph` (a long chain arrives in parts, each naming its first index),
and :func:`to_dot` draws it: one node per device (card Uid, labelled with its role where the authority knows
it), one edge per recorded movement (its token, its order in the token's chain, and its transfer id: sender,
receiver and nonce, the nonce shortened on the label and whole in the tooltip). A branch (a signer's two
statements moving one oid from one holding to two devices, or a movement of a token it never held) is drawn
in red: the refused statement as a bold dashed red edge, the signer's recorded movements of that oid in red;
blocked devices are filled red, suspected claimants (a refused unsigned claim) outlined orange; a revoked
oid's movements are grey and dashed, labelled with the oid it was reissued as. A legend explains the marks.

Every identifier written into the document is quoted, and every text is escaped (:func:`quote`), so nothing the
authority reports (a suspect's reason is free text) can end a string or inject an attribute; node and edge
``id``/``class`` attributes carry through to the SVG, where tests and pages find them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cardnet.protocols.errors import ProtocolError
from cardnet.wire.ids import Uid

MAX_PAGES = 100_000  # a graph larger than this many pages is refused (the pager stops)
SHORT_HEX = 8  # hex digits of an oid or nonce shown on a label


@dataclass(frozen=True, kw_only=True)
class Move:
    frm: Uid
    to: Uid
    nonce: bytes


@dataclass(frozen=True, kw_only=True)
class TokenChain:
    """One token's recorded movements, in order (the first leaves ``issuer``)."""

    oid: bytes
    issuer: Uid
    moves: tuple[Move, ...] = ()
    revoked: bool = False
    reissued_as: bytes | None = None
    reissue_of: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class Branch:
    """A blocked signer and its signed statements about ``oid`` that convict it (the refused one last)."""

    signer: Uid
    oid: bytes
    moves: tuple[Move, ...]
    evidence: int = 0  # how many statements in all (``moves`` may be the last of them)


@dataclass(frozen=True, kw_only=True)
class Suspect:
    uid: Uid
    oid: bytes
    reason: str


@dataclass(frozen=True, kw_only=True)
class Graph:
    authority: Uid | None = None
    chains: tuple[TokenChain, ...] = ()
    branches: tuple[Branch, ...] = ()
    suspects: tuple[Suspect, ...] = ()
    roles: Mapping[Uid, str] = field(default_factory=dict)

    @property
    def blocked(self) -> frozenset[Uid]:
        return frozenset(b.signer.card_uid() for b in self.branches)

    def chain(self, oid: bytes) -> TokenChain | None:
        return next((c for c in self.chains if c.oid == oid), None)


def _moves(raw: Iterable[Mapping[str, Any]]) -> tuple[Move, ...]:
    return tuple(Move(frm=m["from"], to=m["to"], nonce=m["nonce"]) for m in raw)


class GraphBuilder:
    """Collects ``auth.graph`` pages (as parsed dicts) into a :class:`Graph`; :meth:`add` returns the cursor of the
    next page (``at``, ``start``), or None when the graph is complete."""

    def __init__(self) -> None:
        self.authority: Uid | None = None
        self._chains: dict[bytes, dict[str, Any]] = {}
        self._branches: list[Branch] = []
        self._suspects: list[Suspect] = []
        self._roles: dict[Uid, str] = {}
        self.pages = 0
        self._cursor: tuple[bytes, int] = (b"", 0)

    def add(self, page: Mapping[str, Any]) -> tuple[bytes, int] | None:
        self.pages += 1
        if self.pages > MAX_PAGES:
            raise ProtocolError(
                "too_big", f"the graph takes more than {MAX_PAGES} pages: ask for one token (trace OID) instead"
            )
        self.authority = page["authority"]
        for part in page["chains"]:
            oid = part["oid"]
            have = self._chains.setdefault(oid, {"issuer": part["issuer"], "moves": [], "part": part})
            if part["start"] != len(have["moves"]):
                raise ProtocolError(
                    "bad_page", f"chain {oid.hex()} resumed at movement {part['start']}, not {len(have['moves'])}"
                )
            have["moves"].extend(_moves(part["moves"]))
            have["part"] = part
        self._branches += [
            Branch(signer=b["signer"], oid=b["oid"], moves=_moves(b["moves"]), evidence=b["evidence"])
            for b in page["branches"]
        ]
        self._suspects += [Suspect(uid=s["uid"], oid=s["oid"], reason=s["reason"]) for s in page["suspects"]]
        self._roles.update({r["uid"]: r["role"] for r in page["roles"]})
        if "next" not in page:
            return None
        cursor = (page["next"], page.get("next_start", 0))
        if cursor <= self._cursor:
            raise ProtocolError("bad_page", "the authority's page does not move forward")
        self._cursor = cursor
        return cursor

    def graph(self) -> Graph:
        chains = tuple(
            TokenChain(
                oid=oid,
                issuer=c["issuer"],
                moves=tuple(c["moves"]),
                revoked=bool(c["part"].get("revoked")),
                reissued_as=c["part"].get("reissued_as"),
                reissue_of=c["part"].get("reissue_of"),
            )
            for oid, c in sorted(self._chains.items())
        )
        return Graph(
            authority=self.authority, chains=chains, branches=tuple(self._branches),
            suspects=tuple(self._suspects), roles=dict(self._roles),
        )  # fmt: skip


def merge(graphs: Iterable[Graph]) -> Graph:
    """One graph of several (one token's and its reissues'): chains by oid, branches and suspects once each."""
    gs = list(graphs)
    chains = {c.oid: c for g in gs for c in g.chains}
    return Graph(
        authority=next((g.authority for g in gs if g.authority is not None), None),
        chains=tuple(chains[o] for o in sorted(chains)),
        branches=tuple(dict.fromkeys(b for g in gs for b in g.branches)),
        suspects=tuple(dict.fromkeys(s for g in gs for s in g.suspects)),
        roles={u: r for g in gs for u, r in g.roles.items()},
    )


# -- DOT ----------------------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def clean(text: str) -> str:
    """``text`` as one line of plain text: control characters and unpaired surrogates become spaces, runs of white
    space one space, no space at either end (what a label shows of free text)."""
    return " ".join(_CONTROL.sub(" ", text).split())


def escape(text: str) -> str:
    """``text`` (cleaned) as the inside of a DOT string that graphviz shows literally: backslashes (graphviz's label
    escapes such as ``\\N``), double quotes and ``&`` (graphviz reads entities in labels) are escaped."""
    return clean(text).replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")


def quote(text: str) -> str:
    return f'"{escape(text)}"'


def label(*lines: str) -> str:
    """A multi-line label: each line escaped, joined with graphviz's centred line break."""
    return '"' + "\\n".join(escape(line) for line in lines) + '"'


def _attrs(**attrs: str) -> str:
    """``[k=v, ...]``; values are already quoted DOT strings (:func:`quote`, :func:`label`)."""
    return "[" + ", ".join(f"{k}={v}" for k, v in attrs.items()) + "]"


def short(raw: bytes) -> str:
    return raw.hex()[:SHORT_HEX]


def node_id(uid: Uid) -> str:
    return "dev-" + bytes(uid.card_uid()).hex()


def move_id(oid: bytes, order: int) -> str:
    return f"mv-{oid.hex()}-{order}"


def branch_id(signer: Uid, oid: bytes, move: Move) -> str:
    ends = "-".join(bytes(u.card_uid()).hex() for u in (signer, move.frm, move.to))
    return f"br-{oid.hex()}-{ends}-{move.nonce.hex()}"


RED = '"#c0392b"'
ORANGE = '"#e67e22"'
GREY = '"#7f8c8d"'
FILL_BLOCKED = '"#f5b7b1"'


def to_dot(graph: Graph, *, title: str = "cardnet trace") -> str:
    """The graph as a DOT document (a ``digraph``), with a legend."""
    blocked = graph.blocked
    suspected = {s.uid.card_uid(): s for s in graph.suspects}
    devices: dict[Uid, None] = {}

    def see(*uids: Uid) -> None:
        for u in uids:
            devices.setdefault(u.card_uid(), None)

    for c in graph.chains:
        see(c.issuer, *(x for m in c.moves for x in (m.frm, m.to)))
    for b in graph.branches:
        see(b.signer, *(x for m in b.moves for x in (m.frm, m.to)))
    see(*suspected)
    roles = {u.card_uid(): r for u, r in graph.roles.items()}
    # the signer's recorded movements of the oid it branched: the first leg of the branch, drawn red too
    branched = {(b.oid, b.signer.card_uid()) for b in graph.branches}

    out = [
        f"digraph {quote(title)} {{",
        f"  graph [label={quote(title)}, labelloc=t, rankdir=LR, fontname=Helvetica, id=trace];",
        "  node [shape=box, style=rounded, fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    for uid in sorted(devices, key=bytes):
        lines = [str(uid), roles.get(uid, "role unknown")]
        attrs = {"id": quote(node_id(uid))}
        classes = ["device", "role-" + roles.get(uid, "unknown")]
        if uid in blocked:
            lines.append("BLOCKED (cloned or forged statements)")
            attrs |= {"style": '"rounded,filled"', "fillcolor": FILL_BLOCKED, "color": RED, "penwidth": "2"}
            classes.append("blocked")
        if uid in suspected:
            lines.append(f"suspected: {suspected[uid].reason}")
            attrs |= {"color": ORANGE, "penwidth": "2"}
            classes.append("suspect")
        if graph.authority is not None and uid == graph.authority.card_uid():
            classes.append("authority")
        attrs["class"] = quote(" ".join(classes))
        out.append(f"  {quote(node_id(uid))} {_attrs(label=label(*lines), **attrs)};")
    for c in graph.chains:
        note = "revoked" if c.revoked else ""
        if c.reissued_as is not None:
            note = f"revoked, reissued as {short(c.reissued_as)}"
        for order, m in enumerate(c.moves, 1):
            lines = [f"{short(c.oid)} #{order}", f"tid {short(m.nonce)}"]
            if order == 1 and c.reissue_of is not None:
                lines.append(f"reissue of {short(c.reissue_of)}")
            if note:
                lines.append(note)
            attrs = {
                "id": quote(move_id(c.oid, order)),
                "tooltip": quote(f"oid {c.oid.hex()} movement {order}: {m.frm} -> {m.to}, nonce {m.nonce.hex()}"),
            }
            classes = ["movement"]
            if (c.oid, m.frm.card_uid()) in branched:
                attrs |= {"color": RED, "fontcolor": RED, "penwidth": "2"}
                classes.append("branch")
            if c.revoked:
                attrs |= {"style": "dashed", "color": GREY, "fontcolor": GREY}
                classes.append("revoked")
            attrs["class"] = quote(" ".join(classes))
            out.append(f"  {quote(node_id(m.frm))} -> {quote(node_id(m.to))} {_attrs(label=label(*lines), **attrs)};")
    drawn: set[str] = set()
    for b in graph.branches:
        chain = graph.chain(b.oid)
        recorded = set(chain.moves) if chain is not None else set()
        for m in b.moves:
            if m in recorded or branch_id(b.signer, b.oid, m) in drawn:
                continue  # drawn with the chain (in red), or already
            lines = [f"{short(b.oid)} BRANCH", f"tid {short(m.nonce)}", "refused; signer blocked"]
            attrs = {
                "id": quote(branch_id(b.signer, b.oid, m)),
                "tooltip": quote(f"oid {b.oid.hex()} refused: {m.frm} -> {m.to}, nonce {m.nonce.hex()}"),
                "color": RED, "fontcolor": RED, "style": '"bold,dashed"', "penwidth": "2",
                "class": quote("branch refused"),
            }  # fmt: skip
            drawn.add(branch_id(b.signer, b.oid, m))
            out.append(f"  {quote(node_id(m.frm))} -> {quote(node_id(m.to))} {_attrs(label=label(*lines), **attrs)};")
    out += _legend()
    out.append("}")
    return "\n".join(out) + "\n"


def _legend() -> list[str]:
    def node(name: str, text: str, **attrs: str) -> str:
        return f"    {quote(name)} {_attrs(label=label(text), id=quote(name), **{'class': quote('legend')}, **attrs)};"

    def edge(name: str, text: str, **attrs: str) -> list[str]:
        ends = [node(f"{name}-{end}", "", shape="point", width="0.05") for end in ("from", "to")]
        line = _attrs(label=label(text), id=quote(name), **{"class": quote("legend")}, **attrs)
        return [*ends, f"    {quote(name + '-from')} -> {quote(name + '-to')} {line};"]

    return [
        "  subgraph cluster_legend {",
        '    label="legend"; fontname=Helvetica; fontsize=10; color=grey; id="legend";',
        node("legend-device", "device: Uid, role"),
        node("legend-blocked", "blocked device", style='"rounded,filled"', fillcolor=FILL_BLOCKED, color=RED),
        node("legend-suspect", "suspected claimant", color=ORANGE, penwidth="2"),
        *edge("legend-movement", "recorded movement: oid #order, transfer id"),
        *edge("legend-branch", "clone branch: the signer's recorded movement", color=RED, penwidth="2"),
        *edge("legend-refused", "clone branch: its refused statement", color=RED, style='"bold,dashed"'),
        *edge("legend-revoked", "movement of a revoked oid", color=GREY, style="dashed"),
        "  }",
    ]
