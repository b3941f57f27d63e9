"""The host's Adversary (TrustedPals' fault injector): its configuration and what it drops."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cardnet.applets.smc import FRAME, STATE
from cardnet.host import HostError
from cardnet.host.adversary import Adversary, AdversaryConfig
from cardnet.host.config import load_config
from cardnet.host.core import Origin
from cardnet.host.guard import Verdict
from cardnet.wire import Message, Uid

BASE = """
app_socket = "h.sock"

[[cards]]
store = "sqlite:///h.card.db"
applets = ["smc"]
"""

LOCAL = Uid.card(b"\x01" * 12)
REMOTE = Uid.card(b"\x02" * 12)
APP = Uid(b"\x01" * 12, 7)


def parse(tmp_path: Path, section: str) -> AdversaryConfig | None:
    path = tmp_path / "host.toml"
    path.write_text(BASE + section)
    return load_config(path).adversary


def test_the_section_parses_with_its_defaults(tmp_path: Path) -> None:
    assert parse(tmp_path, "") is None
    a = parse(tmp_path, "\n[adversary]\ndrop_out = 0.25\nseed = 3\nstop_round = 2\n")
    assert a == AdversaryConfig(0.25, 0.0, ("smc.frame",), 3, 2)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("drop_out = 1.5", "adversary.drop_out"),
        ("drop_in = -0.1", "adversary.drop_in"),
        ('drop_in = "half"', "adversary.drop_in"),
        ("drop_in = true", "adversary.drop_in"),
        ('mtypes = ["smc.nothing"]', "adversary.mtypes"),
        ("mtypes = []", "adversary.mtypes"),
        ('seed = "x"', "adversary.seed"),
        ("stop_round = 0", "adversary.stop_round"),
        ("colour = 1", "adversary.colour"),
    ],
)
def test_a_bad_field_is_refused_by_name(tmp_path: Path, section: str, field: str) -> None:
    with pytest.raises(HostError) as err:
        parse(tmp_path, f"\n[adversary]\n{section}\n")
    assert err.value.reason == "bad_config" and str(err.value).startswith(f"{tmp_path / 'host.toml'}: {field}")


def adversary(config: AdversaryConfig) -> Adversary:
    return Adversary(config, frozenset({FRAME.code}), lambda: {LOCAL.domain}, random.Random(config.seed))


def frame(src: Uid, dst: Uid, r: int = 1) -> Message:
    return FRAME.make(src, dst, run=bytes(16), round=r, ct=b"x" * 40)


def test_it_drops_its_own_modules_frames_in_and_out_with_the_given_odds() -> None:
    a = adversary(AdversaryConfig(drop_out=0.5, drop_in=0.0, seed=1))
    out = [a.check(frame(LOCAL, REMOTE), Origin("card")) for _ in range(2000)]
    into = [a.check(frame(REMOTE, LOCAL), Origin("remote")) for _ in range(200)]
    assert 800 < out.count(Verdict.DROP) < 1200
    assert set(into) == {Verdict.PASS}
    assert a.dropped == out.count(Verdict.DROP)


def test_it_passes_other_messages_and_local_traffic() -> None:
    a = adversary(AdversaryConfig(drop_out=1.0, drop_in=1.0))
    assert a.check(STATE.make(APP, LOCAL, run=bytes(16)), Origin("app")) is Verdict.PASS  # not a frame
    assert a.check(frame(LOCAL, LOCAL), Origin("card")) is Verdict.PASS  # (never leaves the host)
    assert a.check(frame(LOCAL, REMOTE), Origin("card")) is Verdict.DROP
    assert a.check(frame(REMOTE, LOCAL), Origin("remote")) is Verdict.DROP


def test_stop_round_stops_the_module_from_that_round_on() -> None:
    a = adversary(AdversaryConfig(stop_round=3))
    verdicts = [a.check(frame(LOCAL, REMOTE, r), Origin("card")) for r in range(1, 6)]
    assert verdicts == [Verdict.PASS, Verdict.PASS, Verdict.DROP, Verdict.DROP, Verdict.DROP]
    assert a.check(frame(REMOTE, LOCAL, 4), Origin("remote")) is Verdict.DROP
