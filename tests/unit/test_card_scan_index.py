"""A card's prefix scans read each table's sorted keys (kept by every commit) instead of the whole card: whatever the
steps, groups, refusals and reopenings, a scan (and a page of one, ``scan_page``) answers exactly what a walk over
every record would."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.card import Applet, Card, CardError, StepContext
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.store import SqliteStore
from cardnet.wire import Bytes, Field, ListOf, Message, Schema, Uid, UInt, register
from cardnet.wire.cbor import dumps, loads_one

OPS = register(
    0x7F21,
    "test.scan_ops",
    "test",
    Schema("test.scan_ops", [Field(0, "ops", Bytes(1 << 16)), Field(1, "fail", UInt(1))]),
)
SCANNED = register(
    0x7F22, "test.scanned", "test", Schema("test.scanned", [Field(0, "found", ListOf(Bytes(1 << 16), 1000))])
)
TABLES = ("one", "two")


class OpsApplet(Applet):
    """Runs ``ops``: ``[table, "put", key, value]``, ``[table, "del", key]``, ``[table, "scan", prefix]``; answers
    every scan's result; ``fail``: refuses after running them (nothing of the step may stay)."""

    name = "ops"
    handles = (OPS,)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        found = []
        ops: list[list[Any]] = loads_one(params["ops"])  # type: ignore[assignment]
        for table, op, key, *value in ops:
            tbl = "a.ops." + table
            if op == "put":
                ctx.put(key, value[0], table=tbl)
            elif op == "del":
                ctx.delete(key, table=tbl)
            elif op == "page":
                found.append(dumps(ctx.scan_page(key, after=value[0] or None, limit=value[1], table=tbl)))
            else:
                found.append(dumps(ctx.scan(key, table=tbl)))
        if params["fail"]:
            raise CardError("refused", "asked to fail")
        ctx.reply(SCANNED, found=found)


KEYS = st.sampled_from([b"", b"a", b"a:", b"a:1", b"a:2", b"ab", b"b", b"b:\x00", b"b:\xff", b"\xff", b"\xff\xff"])
OP = st.one_of(
    st.tuples(st.sampled_from(TABLES), st.just("put"), KEYS.filter(bool), st.binary(max_size=8)),
    st.tuples(st.sampled_from(TABLES), st.just("del"), KEYS.filter(bool)),
    st.tuples(st.sampled_from(TABLES), st.just("scan"), KEYS),
    st.tuples(st.sampled_from(TABLES), st.just("page"), KEYS, KEYS, st.integers(1, 4)),  # (prefix, after, limit)
)
STEP = st.tuples(st.lists(OP, max_size=8), st.booleans())  # (ops, refused)
RUN = st.lists(st.tuples(st.lists(STEP, min_size=1, max_size=4), st.booleans()), max_size=12)  # (group, reopen after)


Model = dict[tuple[str, bytes], bytes]


def _expected(model: Model, ops: list[Any]) -> tuple[Model, list[list[tuple[bytes, bytes]]]]:
    """What a step does to the model (a copy) and what its scans answer, by walking every record."""
    m = dict(model)
    found = []
    for table, op, key, *value in ops:
        if op == "put":
            m[(table, key)] = value[0]
        elif op == "del":
            m.pop((table, key), None)
        elif op == "page":
            after, limit = value
            rows = sorted((k, v) for (t, k), v in m.items() if t == table and k.startswith(key) and k > after)
            found.append(rows[:limit])
        else:
            found.append(sorted((k, v) for (t, k), v in m.items() if t == table and k.startswith(key)))
    return m, found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=RUN)
def test_scans_answer_what_a_walk_over_every_record_would(tmp_path: Path, run: list[Any]) -> None:
    path = tmp_path / f"c{abs(hash(repr(run)))}.db"
    path.unlink(missing_ok=True)
    now = datetime.now(UTC)
    card = Card(SqliteStore(str(path)), applets=[OpsApplet()])
    personalise(card, pki.CertificateAuthority.create("scan CA", now=now), pin="1234", now=now)
    app = Uid(card.uid.domain, 7)
    model: dict[tuple[str, bytes], bytes] = {}
    try:
        for group, reopen in run:
            msgs = [OPS.make(app, card.uid, ops=dumps([list(o) for o in ops]), fail=int(fail)) for ops, fail in group]
            results = card.step_many(msgs, 0.0) if len(msgs) > 1 else [card.step(msgs[0], 0.0)]
            for (ops, fail), outs in zip(group, results, strict=True):
                after, found = _expected(model, [list(o) for o in ops])
                if fail:  # refused: its writes are gone, and the model stays
                    assert [o.msg.mtype for o in outs] == [0x0006]
                    continue
                model = after
                [out] = outs
                scans: list[list[list[bytes]]] = [loads_one(raw) for raw in SCANNED.parse(out.msg)["found"]]  # type: ignore[misc]
                got = [[(bytes(k), bytes(v)) for k, v in scan] for scan in scans]
                assert got == found
            card.ack([o.seq for outs in results for o in outs if o.seq is not None])
            if reopen:
                card.close()
                card = Card(SqliteStore(str(path)), applets=[OpsApplet()])
        for table in TABLES:  # and the card's own scan, at the end, by every prefix
            for prefix in (b"", b"a", b"a:", b"b", b"\xff"):
                want = {k: v for (t, k), v in model.items() if t == table and k.startswith(prefix)}
                assert card._scan("a.ops." + table, prefix) == want
                assert list(card._scan("a.ops." + table, prefix)) == sorted(want)
    finally:
        card.close()
