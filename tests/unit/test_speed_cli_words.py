"""`cardnet speed`'s words for a person (docs/speed-walkthrough.md shows them in use, run by
tests/integration/test_speed_walkthrough.py: the broker's accounts in currency, the hints after over_limit and
insufficient): the help names the command that makes a CA, and the accounts' amounts read as prices."""

from __future__ import annotations

from click.testing import CliRunner

from cardnet.cli.main import cli
from cardnet.cli.speed import HINTS
from cardnet.cli.speed_broker import _amount


def test_the_ca_option_names_the_command_that_makes_a_ca() -> None:
    for group in ("vendor", "broker"):
        text = " ".join(CliRunner().invoke(cli, ["speed", group, "init", "--help"]).output.split())
        assert "`cardnet ca create`" in text and "ca init" not in text, text


def test_account_amounts_read_as_prices() -> None:
    assert [_amount("EUR", v) for v in (10000, 250, 5, 0, -120)] == [
        "100.00 EUR",
        "2.50 EUR",
        "0.05 EUR",
        "0.00 EUR",
        "-1.20 EUR",
    ]


def test_a_price_over_the_limit_says_what_to_do() -> None:
    assert "--limit" in HINTS["over_limit"]
