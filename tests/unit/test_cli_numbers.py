"""Every number option of the command line refuses ``nan`` and ``inf``: click's ``FloatRange`` lets ``nan``
through (each comparison with it is false) and a plain ``float`` lets both through, and such a wait or round
deadline never ends (``cardnet smc run --round-ms inf`` ran with no deadline; ``--round-ms nan`` ran, then blamed
the hosts)."""

from __future__ import annotations

import json

import click
import pytest

from cardnet.cli.main import cli, run, subcommands
from cardnet.cli.output import FiniteRange


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in subcommands(group).items():
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
    return found


def _number_options() -> list[tuple[tuple[str, ...], click.Option]]:
    return [
        (path, p)
        for path, command in _commands(cli)
        for p in command.params
        if isinstance(p, click.Option) and isinstance(p.type, click.types.FloatParamType | click.FloatRange)
    ]


def test_every_number_option_is_a_finite_range() -> None:
    options = _number_options()
    assert len(options) >= 20, options  # (the walk reached the command groups)
    loose = [(" ".join(path), p.opts[0]) for path, p in options if not isinstance(p.type, FiniteRange)]
    assert not loose, loose


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
@pytest.mark.parametrize(
    "args",
    [
        ["smc", "run", "-f", "median", "-i", "1", "-i", "2", "-i", "3", "--round-ms"],
        ["smc", "plan", "-f", "median", "-m", "00" * 12 + ":00000001", "--out", "/nonexistent/run.toml", "--start-in"],
        ["wallet", "recover", "--wait"],
        [
            "trn",
            "send",
            "--socket",
            "/nonexistent.sock",
            "--oid",
            "00" * 16,
            "--to",
            "00" * 12 + ":00000001",
            "--timeout",
        ],
    ],
)
def test_a_number_that_is_none_is_refused_before_anything_runs(
    args: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([*args, value]) == 2
    err = capsys.readouterr().err
    assert "is not a number" in err and value in err, err


def test_a_refused_number_under_json_is_an_error_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["wallet", "recover", "--json", "--wait", "nan"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "nan" in error["message"] and "not a number" in error["message"], error
