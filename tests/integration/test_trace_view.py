"""The trace view across real processes: ``cardnet authority trace`` / ``graph`` draw what the authority recorded.

One network for the module (:class:`~cardnet.bench.trnnet.TrnNet`, an authority host and wallet hosts a, b, c):
the agent issues OID to a; a's card is cloned (a second host process runs a copy of its store, the helpers of
``test_trn_kill.py``); a sends OID to b, the clone sends it to c, and the authority blocks a. OID2 goes to b and
is then reissued as NEW2 (OID2 revoked). The commands run as a person runs them (``python -m cardnet.cli.main``
against the authority host's application socket); their SVG is read with an XML parser and compared with what
the authority answers to ``auth.query`` and ``auth.blocked_list``. ``cardnet authority web`` serves the same
drawings over HTTP (read with httpx).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_trn_kill import clone_spends_twice, route_to, status
from test_trn_processes import OID, TrnNet
from test_trn_reissue import reissued

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import MINT, SEND
from cardnet.bench.procs import free_port, readline, stop_process
from cardnet.bench.trnnet import PIN
from cardnet.protocols import trace_view as tv

OID2 = bytes.fromhex("0f0e0d0c0b0a09080706050403020100")
NEW2 = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrnNet]:
    n = TrnNet(tmp_path_factory.mktemp("trace"), wallets=("a", "b", "c"))
    clone_port = free_port()
    route_to(n, "c", "a", clone_port)  # c reaches "a" at the clone's address
    with n:
        asyncio.run(make_history(n, clone_port))
        yield n


async def make_history(net: TrnNet, clone_port: int) -> None:
    await clone_spends_twice(net, clone_port)
    assert await status(net, "c") == "trustless"
    assert (await net.ask("agent", MINT, oid=OID2, body=b"Final, seat 8"))["ok"]
    assert (await net.ask("agent", SEND, oid=OID2, to=net.uids["b"]))["ok"]
    await net.settle("b", OID2)
    assert (await reissued(net, oid=OID2, new_oid=NEW2))["state"] == "done"
    await net.settle("b", NEW2)


def cardnet(net: TrnNet, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """``cardnet ARGS --socket <authority host> --card <authority card>`` as a person runs it."""
    where = ("--socket", net.hosts["auth"].socket, "--card", net.uids["authority"].domain.hex())
    env = {**os.environ, "CARDNET_PIN": PIN, "COLUMNS": "250"} | ({"PATH": path} if path is not None else {})
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "authority", *args, *where],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def groups(svg: Path) -> dict[str, dict[str, Any]]:
    """The SVG's node and edge groups by id: their classes, title (``a->b`` for an edge) and texts."""
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG}svg"
    out = {}
    for g in root.iter(f"{SVG}g"):
        classes = set(g.get("class", "").split())
        if classes & {"node", "edge"}:
            title = g.find(f"{SVG}title")
            texts = [t.text or "" for t in g.iter(f"{SVG}text")]
            out[g.get("id", "")] = {"class": classes, "title": None if title is None else title.text, "texts": texts}
    return out


def recorded(net: TrnNet, oid: bytes) -> list[tuple[str, str]]:
    """The authority's own answer (auth.query): the chain's movements as (from node, to node) pairs."""
    chain = asyncio.run(net.ask("authority", QUERY, CHAIN, oid=oid))
    holders = [chain["issuer"], *chain["holders"]]
    return [(tv.node_id(f), tv.node_id(t)) for f, t in itertools.pairwise(holders)]


def edges_of(g: dict[str, dict[str, Any]], oid: bytes) -> list[tuple[str, str]]:
    moves = sorted((int(k.rsplit("-", 1)[1]), v) for k, v in g.items() if k.startswith(f"mv-{oid.hex()}-"))
    assert [n for n, _ in moves] == list(range(1, len(moves) + 1)), "movements numbered 1, 2, ... in order"
    return [tuple(v["title"].split("->")) for _, v in moves]  # type: ignore[misc]


def test_trace_draws_the_clone_branch_and_the_blocked_device(net: TrnNet, tmp_path: Path) -> None:
    svg, dot = tmp_path / "t.svg", tmp_path / "t.dot"
    r = cardnet(net, "trace", OID.hex(), "--svg", str(svg), "--dot", str(dot), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["written"] == {"svg": str(svg), "dot": str(dot)}
    assert dot.read_text().startswith("digraph ")
    a, b, c = (tv.node_id(net.uids[x]) for x in "abc")
    g = groups(svg)
    assert edges_of(g, OID) == recorded(net, OID) == [(tv.node_id(net.uids["agent"]), a), (a, b)]
    assert "branch" in g[f"mv-{OID.hex()}-2"]["class"], "a's recorded move of OID is the first leg of the branch"
    assert "branch" not in g[f"mv-{OID.hex()}-1"]["class"]
    (refused,) = [v for k, v in g.items() if k.startswith("br-")]
    assert refused["class"] >= {"edge", "branch", "refused"} and refused["title"] == f"{a}->{c}"
    assert "blocked" in g[a]["class"] and any("BLOCKED" in t for t in g[a]["texts"])
    assert not any("blocked" in g[x]["class"] for x in (b, c))
    assert str(net.uids["a"]) in g[a]["texts"] and "device" in g[a]["texts"]
    assert out["blocked"] == [str(net.uids["a"])]
    assert [m["to"] for m in out["tokens"][0]["movements"]] == [str(net.uids["a"]), str(net.uids["b"])]
    (branch,) = out["branches"]
    assert branch["statements"][-1]["to"] == str(net.uids["c"]) and branch["evidence"] == 2
    human = cardnet(net, "trace", OID.hex())
    assert f"branch: {net.uids['a']} moved {OID.hex()} twice from one holding (a clone)" in human.stdout


def test_graph_has_every_recorded_movement_and_the_reissue(net: TrnNet, tmp_path: Path) -> None:
    svg = tmp_path / "g.svg"
    r = cardnet(net, "graph", "--svg", str(svg))
    assert r.returncode == 0, r.stderr
    assert f"wrote {svg} (svg)" in r.stdout and "blocked: " + str(net.uids["a"]) in r.stdout
    g = groups(svg)
    for oid in (OID, OID2, NEW2):
        assert edges_of(g, oid) == recorded(net, oid), oid.hex()
    movements = [k for k in g if k.startswith("mv-")]
    assert len(movements) == sum(len(recorded(net, o)) for o in (OID, OID2, NEW2))  # nothing else drawn
    assert "revoked" in g[f"mv-{OID2.hex()}-1"]["class"]
    assert any(f"reissued as {NEW2.hex()[:8]}" in t for t in g[f"mv-{OID2.hex()}-1"]["texts"])
    assert any(f"reissue of {OID2.hex()[:8]}" in t for t in g[f"mv-{NEW2.hex()}-1"]["texts"])
    assert "revoked" not in g[f"mv-{NEW2.hex()}-1"]["class"]
    assert [k for k, v in g.items() if "blocked" in v["class"] and "legend" not in v["class"]] == [
        tv.node_id(net.uids["a"])
    ]
    legend = {k for k, v in g.items() if "legend" in v["class"]}
    assert {"legend-device", "legend-blocked", "legend-suspect"} <= legend


def test_a_person_reads_the_trace_and_errors_say_what_to_do(net: TrnNet, tmp_path: Path) -> None:
    r = cardnet(net, "trace", OID2.hex())
    assert r.returncode == 0, r.stderr
    assert f"token {OID2.hex()}: 1 movement(s), revoked: reissued as {NEW2.hex()}" in r.stdout
    assert f"token {NEW2.hex()}: 1 movement(s), reissue of {OID2.hex()}" in r.stdout  # the trace follows it
    unknown = cardnet(net, "trace", "11" * 16)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr, unknown.stderr
    assert "the authority knows no movement of token" in unknown.stderr, unknown.stderr
    no_dot = cardnet(net, "trace", OID.hex(), "--svg", str(tmp_path / "x.svg"), "--json", path=str(tmp_path))
    assert no_dot.returncode == 2
    err = json.loads(no_dot.stdout)["error"]
    assert err["reason"] == "no_graphviz" and "apt-get install graphviz" in err["hint"]
    assert not (tmp_path / "x.svg").exists()


@pytest.fixture(scope="module")
def web(net: TrnNet) -> Iterator[str]:
    """``cardnet authority web`` on a free port of 127.0.0.1: its URL."""
    where = ("--socket", net.hosts["auth"].socket, "--card", net.uids["authority"].domain.hex())
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardnet.cli.main", "authority", "web", *where, "--listen", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "CARDNET_PIN": PIN},
    )  # fmt: skip
    try:
        line = readline(proc, 30)
        assert line.startswith("ready http://127.0.0.1:"), (line, proc.poll())
        yield line.split()[1]
    finally:
        stop_process(proc)
        assert proc.stderr is not None
        proc.stderr.close()


def svg_groups(data: bytes, tmp_path: Path) -> dict[str, dict[str, Any]]:
    (tmp_path / "got.svg").write_bytes(data)
    return groups(tmp_path / "got.svg")


def test_the_web_view_serves_the_graph_and_a_chain(net: TrnNet, web: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=web, timeout=30) as http:
        page = http.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<img src='/graph.svg'" in page.text and f"/token/{OID.hex()}" in page.text
        assert str(net.uids["a"]) in page.text  # listed as blocked
        assert http.get("/").json()["blocked"] == [str(net.uids["a"])]  # a program gets JSON

        graph = http.get("/graph.svg")
        assert graph.headers["content-type"] == "image/svg+xml"
        g = svg_groups(graph.content, tmp_path)
        for oid in (OID, OID2, NEW2):
            assert edges_of(g, oid) == recorded(net, oid)
        assert "blocked" in g[tv.node_id(net.uids["a"])]["class"]
        assert [v["title"] for k, v in g.items() if k.startswith("br-")] == [
            f"{tv.node_id(net.uids['a'])}->{tv.node_id(net.uids['c'])}"
        ]

        chain = svg_groups(http.get(f"/token/{OID.hex()}/chain.svg").content, tmp_path)
        assert edges_of(chain, OID) == recorded(net, OID) and not any(k.startswith(f"mv-{OID2.hex()}") for k in chain)
        form = http.get("/token", params={"oid": OID2.hex()})
        assert form.status_code == 303 and form.headers["location"] == f"/token/{OID2.hex()}"
        token = http.get(f"/token/{OID2.hex()}", headers={"Accept": "text/html"})
        assert token.status_code == 200 and f"/token/{OID2.hex()}/chain.svg" in token.text
        assert http.get("/token/zz").json()["error"] == "bad_oid"
        assert http.get(f"/token/{'11' * 16}").status_code == 404


def test_the_web_view_of_a_card_that_is_not_the_authority_says_so_before_ready(net: TrnNet) -> None:
    """`authority web --card` naming the agent's card (on the authority's host, beside it): exit 2, reason
    no_applet, the hint naming --card, and no `ready` (before: it served, and every page failed)."""
    where = ("--socket", net.hosts["auth"].socket, "--card", net.uids["agent"].domain.hex())
    r = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "authority", "web", *where, "--listen", "127.0.0.1:0", "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "CARDNET_PIN": PIN},
        check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "ready" not in r.stdout and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    err = json.loads(r.stdout)["error"]
    assert err["reason"] == "no_applet" and "name the authority's card with --card DOMAIN" in err["hint"], err


def test_the_web_view_listens_on_loopback_only(net: TrnNet) -> None:
    r = cardnet(net, "web", "--listen", "0.0.0.0:8470")
    assert r.returncode == 2 and "loopback" in r.stderr


def test_the_web_view_refuses_a_page_of_another_name_rebound_to_loopback(net: TrnNet, web: str) -> None:
    """DNS rebinding: a web site's name that resolves to 127.0.0.1 once its page is loaded lets that page's script
    read what the view serves, as the same origin, with ``Host: its-name:PORT``. The view answers only requests
    that name it (127.0.0.1:PORT or localhost:PORT): before, it served the authority's whole graph to any name."""
    port = web.rstrip("/").rsplit(":", 1)[1]
    with httpx.Client(base_url=web, timeout=30) as http:
        for path in (
            "/",
            "/graph.svg",
            "/token?oid=" + OID.hex(),
            f"/token/{OID.hex()}",
            f"/token/{OID.hex()}/chain.svg",
        ):
            got = http.get(path, headers={"Host": f"rebound.example:{port}", "Accept": "text/html"})
            assert got.status_code == 403 and str(net.uids["a"]) not in got.text and "<svg" not in got.text, got.text
            assert http.get(path, headers={"Host": f"rebound.example:{port}"}).json()["error"] == "wrong_host"
        assert http.get("/", headers={"Host": f"localhost:{port}"}).json()["blocked"] == [str(net.uids["a"])]
        assert http.get("/").status_code == 200
