"""What the fairx TTP keeps per exchange (docs/fairx.md, "What the TTP keeps, and for how long"): one decision
``d:<xid>`` per exchange that reached it, first-wins and never pruned. Measured on real cards (durable SQLite
stores): the figures the docs give for the TTP card's capacity."""

from __future__ import annotations

from pathlib import Path

from test_fairx_cards import T1, T2, exchanges, offered, order, world
from trnkit import drop

from cardnet.applets import fairx as fa
from cardnet.crypto import pki

RESOLVED_BYTES = 110  # key "d:" + xid (34) + CBOR ["resolved", a's 64-byte statement] (1 + 9 + 66)
ABORTED_BYTES = 44  # key 34 + CBOR ["aborted", b""] (1 + 8 + 1)


def decisions(w: object) -> dict[bytes, bytes]:
    card = w.cards["ttp"]  # type: ignore[attr-defined]
    return {k: v for (t, k), v in card._mem.items() if t == "a.ttp" and k.startswith(b"d:")}


def test_the_ttp_keeps_one_decision_per_exchange_it_decided_of_the_documented_size(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    n1 = offered(w)
    drop(w, "alice", "bob", 1)  # m3 is lost: alice resolves, bob's later abort gets the same decision
    order(w, "bob", fa.ACCEPT, n1=n1)
    w.run(400)
    assert order(w, "alice", fa.RESOLVE, n1=n1)["phase"] == "resolving"
    w.run(400)
    assert order(w, "bob", fa.ABORT, n1=n1)["phase"] == "aborting"
    w.run(400)
    assert exchanges(w, "bob")[n1]["phase"] == "done"
    [(key, value)] = decisions(w).items()
    assert len(key) + len(value) == RESOLVED_BYTES
    # a second exchange, aborted by the responder before anything moved (the vouchers back the other way)
    n1 = bytes(order(w, "bob", fa.START, give=T1, want=T2, to=w.cards["alice"].uid)["n1"])
    w.run(300)
    drop(w, "alice", "bob", *range(1, 9))  # the agreement m2 is lost
    order(w, "alice", fa.ACCEPT, n1=n1)
    w.run(300)
    assert order(w, "alice", fa.ABORT, n1=n1)["phase"] == "aborting"
    w.run(400)
    sizes = sorted(len(k) + len(v) for k, v in decisions(w).items())
    assert sizes == [ABORTED_BYTES, RESOLVED_BYTES]
