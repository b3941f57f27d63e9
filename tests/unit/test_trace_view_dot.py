"""The trace view's DOT builder (protocols/trace_view.py): any graph gives a DOT document graphviz reads, with
every device, movement and refused branch drawn once, and every text shown literally (escaped).

Each example is drawn by graphviz's real ``dot -Tsvg`` (installed by .ci/run) and the SVG read with an XML
parser: an unescaped quote, backslash or ``&`` in a text would change a label, add attributes or break the
document, and the comparison would fail.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.cli.trace_view import INSTALL_HINT, RenderError, render_svg
from cardnet.protocols import trace_view as tv
from cardnet.wire import Uid

SVG = "{http://www.w3.org/2000/svg}"
uids = st.sampled_from([Uid(bytes(11) + bytes([i]), 0) for i in range(1, 7)])
moves = st.builds(tv.Move, frm=uids, to=uids, nonce=st.binary(min_size=16, max_size=16))
texts = st.text(max_size=40)
chains = st.builds(
    tv.TokenChain,
    oid=st.binary(min_size=16, max_size=16),
    issuer=uids,
    moves=st.lists(moves, max_size=5).map(tuple),
    revoked=st.booleans(),
    reissued_as=st.none() | st.binary(min_size=16, max_size=16),
    reissue_of=st.none() | st.binary(min_size=16, max_size=16),
)


@st.composite
def graphs(draw: st.DrawFn) -> tv.Graph:
    cs = draw(st.lists(chains, max_size=4, unique_by=lambda c: c.oid))
    oids = [c.oid for c in cs] or [bytes(16)]
    branches = draw(
        st.lists(
            st.builds(
                tv.Branch,
                signer=uids,
                oid=st.sampled_from(oids),
                moves=st.lists(moves, max_size=3, unique=True).map(tuple),
            ),
            max_size=2,
            unique_by=lambda b: b.signer,
        )
    )
    suspects = draw(st.lists(st.builds(tv.Suspect, uid=uids, oid=st.sampled_from(oids), reason=texts), max_size=2))
    roles = draw(st.dictionaries(uids, st.sampled_from(["agent", "device", "service", "authority"]), max_size=4))
    return tv.Graph(
        authority=draw(uids), chains=tuple(cs), branches=tuple(branches), suspects=tuple(suspects), roles=roles
    )


def drawn(dot: str) -> ET.Element:
    return ET.fromstring(render_svg(dot, timeout_s=30))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(), title=texts)
def test_any_graph_is_drawn_whole_with_its_texts_literal(graph: tv.Graph, title: str) -> None:
    root = drawn(tv.to_dot(graph, title=title))
    top = root.find(f"{SVG}g")
    assert top is not None and top.get("class") == "graph"
    assert [t.text or "" for t in top.findall(f"{SVG}text")] == ([tv.clean(title)] if tv.clean(title) else [])
    got = {}
    for g in root.iter(f"{SVG}g"):
        classes = g.get("class", "").split()
        if ("node" in classes or "edge" in classes) and "legend" not in classes:
            title_el = g.find(f"{SVG}title")
            assert title_el is not None
            assert g.get("id") not in got, "an id drawn twice"
            got[g.get("id")] = (title_el.text, [t.text or "" for t in g.iter(f"{SVG}text")], set(classes))

    want: dict[str, tuple[str, list[str] | None]] = {}
    devices = {u.card_uid() for c in graph.chains for u in (c.issuer, *(x for m in c.moves for x in (m.frm, m.to)))}
    devices |= {u.card_uid() for b in graph.branches for u in (b.signer, *(x for m in b.moves for x in (m.frm, m.to)))}
    devices |= {s.uid.card_uid() for s in graph.suspects}
    roles = {u.card_uid(): r for u, r in graph.roles.items()}
    suspected = {s.uid.card_uid(): s for s in graph.suspects}
    for d in devices:
        lines = [str(d), roles.get(d, "role unknown")]
        if d in graph.blocked:
            lines.append("BLOCKED (cloned or forged statements)")
        if d in suspected:
            lines.append(tv.clean(f"suspected: {suspected[d].reason}"))
        want[tv.node_id(d)] = (tv.node_id(d), lines)
    for c in graph.chains:
        for i, m in enumerate(c.moves, 1):
            want[tv.move_id(c.oid, i)] = (f"{tv.node_id(m.frm)}->{tv.node_id(m.to)}", None)
    for b in graph.branches:
        chain = graph.chain(b.oid)
        for m in b.moves:
            if chain is None or m not in chain.moves:
                want[tv.branch_id(b.signer, b.oid, m)] = (f"{tv.node_id(m.frm)}->{tv.node_id(m.to)}", None)
    assert set(got) == set(want)
    for key, (title_text, lines) in want.items():
        assert got[key][0] == title_text
        if lines is not None:
            assert got[key][1] == lines, key
    for b in graph.branches:
        assert "blocked" in got[tv.node_id(b.signer)][2]


@given(text=st.text())
def test_clean_text_is_one_line_without_control_characters(text: str) -> None:
    out = tv.clean(text)
    assert out == out.strip() and "  " not in out and not any(ch.isspace() and ch != " " for ch in out)
    assert all(ord(ch) >= 0x20 and not 0x7F <= ord(ch) <= 0x9F for ch in out)
    assert '"' not in tv.escape(text).replace('\\"', "")


def test_a_missing_dot_says_to_install_graphviz() -> None:
    assert shutil.which("dot") is not None, "graphviz's dot is needed here: " + INSTALL_HINT
    try:
        render_svg("digraph { a }", program="cardnet-no-such-dot")
    except RenderError as exc:
        assert exc.reason == "no_graphviz" and "apt-get install graphviz" in str(exc)
    else:
        raise AssertionError("a missing program must raise RenderError")
    try:
        render_svg("digraph { a -> }")
    except RenderError as exc:
        assert exc.reason == "render_failed" and "syntax error" in str(exc)
    else:
        raise AssertionError("a broken document must raise RenderError")
    assert subprocess.run(["dot", "-V"], capture_output=True, check=False).returncode == 0
