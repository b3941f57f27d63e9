"""Shared fixtures: a CA, clocks, and cards in temporary stores."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cardnet.applets.counter import CounterApplet
from cardnet.card import Applet, Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.store import SqliteStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def openssl() -> str:
    """openssl's path; without it the test fails under CI (CI=true) and is skipped elsewhere."""
    path = shutil.which("openssl")
    if path is None:
        reason = "openssl is not on PATH: the CMS interop tests need it (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " and CI=true, so this is a failure")
        print(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cardnet test CA", now=NOW)


@pytest.fixture
def seeded_rng() -> Callable[[int], bytes]:
    r = random.Random(1234)
    return r.randbytes


CardFactory = Callable[..., Card]


@pytest.fixture
def make_card(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[CardFactory]:
    """``make_card(name, applets=..., capacity_bytes=..., personalised=True)`` -> an open card."""
    opened: list[Card] = []

    def make(
        name: str = "card",
        *,
        applets: list[Applet] | None = None,
        capacity_bytes: int = 256 * 1024,
        personalised: bool = True,
        pin: str = "1234",
    ) -> Card:
        card = Card(
            SqliteStore(str(tmp_path / f"{name}.db")),
            applets=[CounterApplet()] if applets is None else applets,
            capacity_bytes=capacity_bytes,
        )
        if personalised and not card.personalised:
            personalise(card, ca, pin=pin, now=NOW)
        opened.append(card)
        return card

    yield make
    for card in opened:
        card.close()  # idempotent
