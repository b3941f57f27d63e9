"""Shared fixtures: a CA, clocks, and cards in temporary stores."""

from __future__ import annotations

import compileall
import os
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cardnet.applets.counter import CounterApplet
from cardnet.card import Applet, Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.store import SqliteStore

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SRC = Path(__file__).resolve().parents[1] / "src" / "cardnet"


def pytest_configure(config: pytest.Config) -> None:
    """Compile cardnet's bytecode once, before any test starts a cardnet process.

    Where PYTHONDONTWRITEBYTECODE is set (as on this machine), every process would
    otherwise compile all the modules it imports from source: a host's start-up, which the SIGKILL
    tests wait on once per kill, and every CLI command the tests run, took about 0.25 s longer.
    """
    compileall.compile_dir(SRC, quiet=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long tests (marked ``slow``) run first, in their collected order, then the rest in theirs.

    Under the README's ``pytest -n 2`` a long test that came late could end the run alone on one worker while
    the other sat idle (the SIGKILL tests take 50 to 110 s each); started first, they run while the short
    tests fill the other worker, and the run ends on short tests.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture
def purse_world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[Any]:
    """The SPEED purse cards' world (tests/protocol/test_speed_purse_cards.py ``World``): the broker's SAM, alice's
    and bob's purses; shared by that module and test_speed_sam_prune.py."""
    from test_speed_purse_cards import make_world

    w = make_world(tmp_path, ca, ("alice", "bob"))
    yield w
    w.close()


def mutate(data: bytes, r: random.Random) -> bytes:
    """``data`` with 1-4 random edits a fuzzer makes: a bit flipped, cut short, bytes inserted, a byte set to a
    CBOR edge value, a byte removed."""
    b = bytearray(data)
    for _ in range(r.randint(1, 4)):
        op = r.randrange(5)
        i = r.randrange(len(b) + 1)
        if op == 0 and b:
            b[i % len(b)] ^= 1 << r.randrange(8)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = r.randbytes(r.randint(1, 4))
        elif op == 3 and b:
            b[i % len(b)] = r.choice([0x00, 0x17, 0x18, 0x1F, 0x40, 0x5F, 0x60, 0x7F, 0xA0, 0xBF, 0xC2, 0xF5, 0xFF])
        elif b:
            del b[i % len(b)]
    return bytes(b)
