"""TRN wire sizes: copy/commit/copied/committed record params (above the 34-byte eTP header) vs the paper.

Run as a script to print the table for docs/trn.md:  python tests/protocol/test_trn_sizes.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from trnworld import TrnWorld, issue, standard, uid

from cardnet.applets.trn import SEND
from cardnet.crypto import pki
from cardnet.host.core import Origin
from cardnet.protocols import session as sess
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import Token
from cardnet.wire import HEADER_BYTES, Message, Uid

BODIES = (64, 256, 1024, 4096)
DOC = Path(__file__).resolve().parents[2] / "docs" / "trn.md"
PAPER_ACK = 48
PAPER_SEND_OVER_N = 40
# the sender's signed movement statement in commit (the trace rests on it; the paper has none): key 1 + head 2 + 64
STATEMENT = 67


def measure(w: TrnWorld, body: int, i: int, seen: list[tuple[Uid, Uid, int, int]]) -> dict[str, int]:
    """One fresh transfer alice -> bob of a token with a ``body``-byte body: the four records' param sizes."""
    oid = bytes([i]) * 16
    issue(w, oid, "alice", body=b"x" * body)
    a, b = uid(w, "alice"), uid(w, "bob")
    seen.clear()
    assert w.result("alice", SEND, oid=oid, to=b)["ok"]
    w.run(300)
    sent = [n for src, dst, n, _ in seen if (src, dst) == (a, b)]
    acks = [n for src, dst, n, _ in seen if (src, dst) == (b, a)]
    assert len(sent) == 2 and len(acks) == 2 and all(ctr < 24 for *_, ctr in seen)  # 1-byte counters
    token = len(Token(oid, a, b"\0" * 64, b"x" * body).encode())
    return {"body": body, "token": token, "copy": sent[0], "commit": sent[1], "copied": acks[0], "committed": acks[1]}


def table(rows: list[dict[str, int]]) -> list[str]:
    out = [
        "| body n | token object T | copy | copy - T | copy - n | commit | copied | committed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['body']} | {r['token']} | {r['copy']} | {r['copy'] - r['token']} | {r['copy'] - r['body']} "
            f"| {r['commit']} | {r['copied']} | {r['committed']} |"
        )
    return out


def measure_all(tmp: Path, ca: pki.CertificateAuthority) -> list[dict[str, int]]:
    w = standard(tmp, ca)
    seen: list[tuple[Uid, Uid, int, int]] = []

    def watch(m: Message, origin: Origin) -> None:
        if m.mtype == sess.RECORD.code:
            seen.append((m.src, m.dst, len(m.param), sess.RECORD.parse(m)["ctr"]))

    w.host.observe(watch)
    return [measure(w, n, i, seen) for i, n in enumerate(BODIES)]


def test_sizes_within_the_paper_per_token_object_and_as_documented(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    rows = measure_all(tmp_path, ca)
    for r in rows:
        # the paper's "n-byte token" is the token object O = [oid, [oid]_C, body]; here T = its encoded size
        assert r["copy"] <= r["token"] + PAPER_SEND_OVER_N, r
        assert r["commit"] <= PAPER_ACK + STATEMENT and r["copied"] <= PAPER_ACK and r["committed"] <= PAPER_ACK, r
    doc = DOC.read_text(encoding="utf-8")
    for line in table(rows):
        assert line in doc, f"docs/trn.md's size table is out of date; expected the row\n{line}"


def test_inner_message_sizes_do_not_depend_on_the_session() -> None:
    """The acks are constant: 1 code byte + CBOR map; the record adds ctr, the ct header and the 16-byte tag."""
    nonce = b"\0" * tr.TRANSFER_NONCE_BYTES
    assert len(tr.encode_inner(tr.COPIED, {"nonce": nonce, "ok": True})) == 10
    assert len(tr.encode_inner(tr.COMMITTED, {"nonce": nonce, "ok": True})) == 10
    assert len(tr.encode_inner(tr.COMMIT, {"nonce": nonce, "oid": b"\0" * 16, "sig": b"\0" * 64})) == 26 + STATEMENT
    assert sess.RECORD.schema.encode({"ctr": 1, "ct": b"\0" * 26}) == bytes([0xA2, 0, 1, 1, 0x58, 26]) + b"\0" * 26
    # seeked names the movement it answers: + from (Uid, 2 + 16) + nonce (2 + 4)
    seeked = {"oid": b"\0" * 16, "ok": True, "reason": "recorded"}
    uid0 = Uid.card(bytes(12))
    assert len(tr.encode_inner(tr.SEEKED, seeked | {"from": uid0, "nonce": nonce})) == 56
    assert len(tr.encode_inner(tr.ABORT, {"nonce": nonce, "oid": b"\0" * 16})) == 26
    assert len(tr.encode_inner(tr.ABORTED, {"nonce": nonce})) == 8
    assert HEADER_BYTES == 34


def test_handshake_sizes(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """hello = 91 + certificate, accept = 176 + certificate, finish = 86 (no blocklist carried)."""
    w = standard(tmp_path, ca)
    seen: dict[int, list[tuple[Uid, int]]] = {}
    w.host.observe(lambda m, o: seen.setdefault(m.mtype, []).append((m.src, len(m.param))))
    issue(w, bytes(16), "alice")
    cert = {c.uid: len(c.certificate_der) for c in w.cards.values()}
    for src, n in seen[sess.HELLO.code]:
        assert n == 91 + cert[src]
    for src, n in seen[sess.ACCEPT.code]:
        assert n == 176 + cert[src]
    assert {n for _, n in seen[sess.FINISH.code]} == {86}


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import NOW

    print("\n".join(table(measure_all(Path(tempfile.mkdtemp()), pki.CertificateAuthority.create("x", now=NOW)))))
