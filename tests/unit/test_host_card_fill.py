"""A host tells its operator when a card's memory fills up, and when a full card refuses what it is sent.

A real card (SQLite store, personalised) on an in-process host, with a small applet that keeps a record of the
size it is asked for: the host logs a warning at 80 % of the card's capacity, an error at 95 %, an error when the
card refuses a message ``out_of_memory`` (once a minute at most), each naming the card and what to do, and warns
again when a card that was freed fills up again (once a minute at most).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cardnet.applets.counter import COUNT
from cardnet.card import Applet, Card, StepContext
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host.core import CAPACITY_HINT, FILL_LOG_EVERY_S, FULL_LOG_EVERY_S, Host
from cardnet.host.library import Capability
from cardnet.store import SqliteStore
from cardnet.wire import Bytes, Field, Message, Schema, UInt, register

KEEP = register(
    0x7F11, "test.keep", "test", Schema("test.keep", [Field(0, "key", UInt()), Field(1, "value", Bytes(8192))])
)
CAPACITY = 20_000


class KeepApplet(Applet):
    name = "keep"
    handles = (KEEP,)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        key = params["key"].to_bytes(4, "big")
        if params["value"]:
            ctx.put(key, params["value"])
        else:
            ctx.delete(key)


class Rig:
    def __init__(self, tmp: Path) -> None:
        now = datetime.now(UTC)
        ca = pki.CertificateAuthority.create("fill CA", now=now)
        self.card = Card(SqliteStore(str(tmp / "c.db")), applets=[KeepApplet()], capacity_bytes=CAPACITY)
        personalise(self.card, ca, pin="1234", now=now)
        self.host = Host(name="filler")
        self.host.add_card(self.card)
        self.now = 1000.0
        self.app: Capability = self.host.acquire(self.card.uid.domain, self.now)

    def keep(self, key: int, size: int, *, after_s: float = 0.001) -> list[Message]:
        """Ask the card to keep ``size`` bytes under ``key`` (0: drop it); the refusals it answered."""
        self.now += after_s
        self.app.send(self.card.uid, KEEP, key=key, value=b"v" * size)
        for _ in range(20):
            self.host.pump(self.now)
            if self.host.idle:
                break
        return [m for m in self.app.receive_all() if m.mtype == cm.REFUSED.code]

    def share(self) -> float:
        return self.card.used_bytes / self.card.capacity_bytes


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.card.close()


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    got = [r.getMessage() for r in caplog.records if r.name == "cardnet.host" and r.levelno == level]
    caplog.clear()
    return got


def test_a_filling_card_is_said_once_at_80_and_once_at_95_percent(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cardnet.host")
    key = 0
    while rig.share() < 0.70:  # up to 70 %: nothing said
        key += 1
        assert rig.keep(key, 1000) == []
    assert _lines(caplog, logging.WARNING) == [] and _lines(caplog, logging.ERROR) == []
    while rig.share() < 0.80:
        key += 1
        assert rig.keep(key, 500) == []
    [warning] = _lines(caplog, logging.WARNING)
    assert str(rig.card.uid) in warning and "capacity_bytes" in warning and f"of its {CAPACITY} bytes" in warning
    key += 1
    assert rig.keep(key, 100) == []  # still between 80 and 95 %: said once only
    assert _lines(caplog, logging.WARNING) == [] and _lines(caplog, logging.ERROR) == []
    while rig.share() < 0.95:
        key += 1
        assert rig.keep(key, 300) == []
    [alarm] = _lines(caplog, logging.ERROR)
    assert str(rig.card.uid) in alarm and CAPACITY_HINT in alarm
    key += 1
    assert rig.keep(key, 10) == [] and _lines(caplog, logging.ERROR) == []
    # freed under 75 %, then filled again within FILL_LOG_EVERY_S: not said again (a card swinging across the
    # thresholds had a line each swing); freed and filled again once FILL_LOG_EVERY_S has passed: said again
    for repeat in (False, True):
        for k in range(1, key + 1):
            rig.keep(k, 0)
        assert rig.share() < 0.75 and _lines(caplog, logging.WARNING) == []
        if repeat:
            rig.now += FILL_LOG_EVERY_S
        key = 0
        while rig.share() < 0.80:
            key += 1
            assert rig.keep(key, 1000) == []
        assert len(_lines(caplog, logging.WARNING)) == (1 if repeat else 0)


def test_a_full_card_s_refusals_are_logged_at_most_once_a_minute(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cardnet.host")
    key = 0
    while rig.share() < 0.90:
        key += 1
        assert rig.keep(key, 1000) == []
    caplog.clear()
    [refused] = rig.keep(9999, 4000)  # does not fit: refused, and the host says so
    assert cm.REFUSED.parse(refused)["reason"] == "out_of_memory"
    [error] = _lines(caplog, logging.ERROR)
    assert "is full and refused 0x7f11" in error and str(rig.card.uid) in error and CAPACITY_HINT in error
    before = rig.card.used_bytes
    [again] = rig.keep(9999, 4000, after_s=FULL_LOG_EVERY_S / 2)  # within the minute: refused, not logged again
    assert cm.REFUSED.parse(again)["reason"] == "out_of_memory" and _lines(caplog, logging.ERROR) == []
    [later] = rig.keep(9999, 4000, after_s=FULL_LOG_EVERY_S)  # a minute on: logged again
    assert cm.REFUSED.parse(later)["reason"] == "out_of_memory" and len(_lines(caplog, logging.ERROR)) == 1
    assert rig.card.used_bytes == before  # a refusal kept nothing
    # other refusals are not this log's business, full card or not
    rig.now += FULL_LOG_EVERY_S
    rig.app.send(rig.card.uid, COUNT, n=1)  # no applet of this card handles it
    rig.host.pump(rig.now)
    [other] = [m for m in rig.app.receive_all() if m.mtype == cm.REFUSED.code]
    assert cm.REFUSED.parse(other)["reason"] == "no_applet" and _lines(caplog, logging.ERROR) == []
