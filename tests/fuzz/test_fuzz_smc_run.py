"""Fuzzing what a module takes from outside: run specs, joins and frames (cardnet.protocols.smc.run).

A spec (from the host) or a join (from another module, inside a session) either decodes to a value that re-encodes
to the same bytes, or is refused with :class:`ProtocolError`. A frame (from any host) is offered to a running
module as random bytes, as a mutated real frame, and as a real frame with another round or sender: the module
keeps only authentic frames and never raises; the run then still ends with every module deciding the same.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.functions import MEDIAN, REGISTRY
from cardnet.protocols.smc.run import DECIDED, Join, ModuleRun, RunSpec
from cardnet.wire import Uid
from conftest import mutate

EXAMPLES = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])


def spec(n: int = 3, seed: int = 0) -> RunSpec:
    members = tuple(Uid.card(bytes([0x20 + i]) * 12) for i in range(n))
    return RunSpec(random.Random(seed).randbytes(16), members, REGISTRY.terms("median", n=n, t=(n - 1) // 2), 2)


VALID_SPEC = spec().encode()
VALID_JOIN = Join(bytes(16), bytes(32), bytes(32), bytes(16)).encode()


def decodes_or_refuses(raw: bytes, decode: object) -> None:
    try:
        value = decode(raw)  # type: ignore[operator]
    except ProtocolError:
        return
    assert value.encode() == raw


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_a_spec_or_a_join_or_refused(raw: bytes) -> None:
    decodes_or_refuses(raw, RunSpec.decode)
    decodes_or_refuses(raw, Join.decode)


@FUZZ
@given(st.integers(0, 2**32))
def test_mutated_specs_and_joins_are_refused_or_exact(seed: int) -> None:
    r = random.Random(seed)
    decodes_or_refuses(mutate(VALID_SPEC, r), RunSpec.decode)
    decodes_or_refuses(mutate(VALID_JOIN, r), Join.decode)


@FUZZ
@given(st.dictionaries(st.integers(0, 5), st.one_of(st.binary(max_size=40), st.integers(-5, 300), st.none())))
def test_maps_with_any_values_are_refused_or_exact(fields: dict[int, object]) -> None:
    raw = cbor2.dumps(fields, canonical=True)
    decodes_or_refuses(raw, RunSpec.decode)
    decodes_or_refuses(raw, Join.decode)


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_junk_frames_offered_to_a_running_module_change_nothing(seed: int) -> None:
    r = random.Random(seed)
    sp = spec(3, seed)
    mods = [
        ModuleRun(sp, i, MEDIAN, {j: r.randbytes(32) for j in range(3) if j != i}, r.randbytes(16)) for i in range(3)
    ]
    for i, m in enumerate(mods):
        for j, other in enumerate(mods):
            if i != j:
                other.accept_join(i, m.join_for(j))
    for m, v in zip(mods, (3, 1, 2), strict=True):
        m.give_input(MEDIAN.encode_input(v))
    out = {i: m.tick(1) for i, m in enumerate(mods)}
    for rnd in range(2, sp.rounds + 2):
        for i, m in enumerate(mods):
            for j in range(3):
                if j == i:
                    continue
                real = out[j][i]
                junk = [r.randbytes(len(real)), mutate(real, r), r.randbytes(r.randrange(60))]
                other_dir = out[j][next(k for k in range(3) if k not in (i, j))]
                for ct in (*(x for x in junk if x != real), other_dir):  # (an edit may undo another)
                    assert not m.offer(rnd - 1, j, ct)
                assert not m.offer(rnd - 1, (j + 1) % 3 if (j + 1) % 3 != i else (j + 2) % 3, real)
                assert m.offer(rnd - 1, j, real)
        out = {i: m.tick(rnd) for i, m in enumerate(mods)}
    assert {m.status for m in mods} == {DECIDED}
    assert len({m.result for m in mods}) == 1
