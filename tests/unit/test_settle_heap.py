"""A service process settles its heap once it serves (``cardnet host run``, the authority and gate services, SPEED
and Millicent vendors and brokers, ``cardnet ticketing run``): what exists then is frozen out of full collections,
which a TCP server runs every 64 ended connections (13-36 ms each in the broker and the ticketing server of
``bench ticketing`` before, 1.4-8.5 ms after), and the young generation is collected every GC_GEN0 allocations."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator

import pytest

from cardnet.cli import host, millicent, ticketing
from cardnet.cli.host import GC_GEN0, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_settle_heap_freezes_the_start_up_heap_and_collects_the_young_generation_less_often() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    kept = Cycle()
    settle_heap()
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == (GC_GEN0, 20, 20)
    assert not any(o is kept for o in gc.get_objects())  # frozen: full collections no longer walk it
    dead = Cycle()
    del dead
    assert gc.collect() >= 1  # what comes after is still collected


def test_every_service_entry_point_settles_its_heap() -> None:
    for fn in (host.run_host, host.run_host_service, millicent._serve, ticketing.run.callback):
        assert "settle_heap()" in inspect.getsource(fn), fn
