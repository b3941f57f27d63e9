"""``cardnet ticketing run`` refuses to start in words a person can act on: which field of the config, what to do.

Real processes: the stores and configs are the ones :class:`cardnet.bench.ticketnet.TicketNet` makes (a vendor
store, the device's card and host config, ``tickets.toml``); each try is a ``cardnet ticketing run`` process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from cardnet.bench.ticketnet import TicketNet
from cardnet.bench.trnnet import PIN


def run(config: Path, pin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "ticketing", "run", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "CARDNET_PIN": pin},
    )  # fmt: skip


def refused(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    return dict(json.loads(r.stdout)["error"])


def test_ticketing_run_says_which_field_is_wrong_and_what_to_do(tmp_path: Path) -> None:
    """A wrong PIN (the hint says tries count), a device host config that is not there (named as the config's
    ``host``), and a port another program holds (named as ``listen`` or ``speed_listen``). Before: no hint for the
    PIN, 'cannot read nodev.toml' without saying which field named it, and 'could not listen ...; is the port in
    use?' without saying which of the two ports, nor what to do."""
    net = TicketNet(tmp_path, (), ["A1"])
    config = net.hosts["tickets"].config
    text = config.read_text()

    err = refused(run(config, "0000", "--json"))
    assert err["reason"] == "wrong_pin" and "every wrong try counts" in err["hint"], err

    nodev = tmp_path / "nodev.toml"
    nodev.write_text(text.replace('host = "device.toml"', 'host = "nodev.toml"'))
    err = refused(run(nodev, PIN, "--json"))
    assert err["reason"] == "bad_config" and "host = " in err["message"] and "nodev.toml" in err["message"], err
    assert "`host` names the device's host config" in err["hint"]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for field in ("listen", "speed_listen"):
            lines = [
                f'{field} = "127.0.0.1:{port}"' if ln.startswith(f"{field} = ") else ln for ln in text.splitlines()
            ]
            busy = tmp_path / f"busy-{field}.toml"
            busy.write_text("\n".join(lines) + "\n")
            err = refused(run(busy, PIN, "--json"))
            assert err["reason"] == "cannot_listen", err
            assert err["message"].startswith(f'{field} = "127.0.0.1:{port}": '), err
            assert f"choose another port for {field}" in err["hint"], err
        r = run(busy, PIN)  # a person's words
        assert r.returncode == 2 and "Traceback" not in r.stderr and "what to do: another program" in r.stderr, r.stderr


def test_a_missing_field_is_named_with_its_file_and_a_line_to_add(tmp_path: Path) -> None:
    """A ticketing config without ``store`` (or an event without ``price``): the error names the field, the file and a
    line to add. Before: 'store: must be a non-empty line of text (at most 200 characters), got None', no file, no
    hint (found by a new user writing the file from the page)."""
    config = tmp_path / "tickets.toml"
    event = '[[events]]\nid = "final"\nname = "Cup final"\ndate = "2027-05-01"\nprice = "25.00 EUR"\nseats = ["A1"]\n'
    head = 'name = "stadium"\nlisten = "127.0.0.1:0"\nspeed_listen = "127.0.0.1:0"\nhost = "device.toml"\n'
    config.write_text(head + event)
    err = refused(run(config, PIN, "--json"))
    assert err["reason"] == "bad_config" and str(config) in err["message"], err
    assert "store: missing: add a line such as store = " in err["message"] and "None" not in err["message"], err
    assert "name, listen, speed_listen, store, host, events" in err["hint"], err

    config.write_text('store = "tickets.db"\n' + head + event.replace('price = "25.00 EUR"\n', ""))
    r = run(config, PIN)  # a person's words
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{config}: events[0].price: missing: add a line such as price = " in r.stderr, r.stderr
    assert "what to do: the ticketing config needs id, name, date, price, seats in every [[events]]" in r.stderr
