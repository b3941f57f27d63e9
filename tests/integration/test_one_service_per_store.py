"""One running service per store, with real processes (docs/store.md, "One running service per store").

A second `run` of a Millicent or SPEED vendor or broker, or of a host, on the store a running one serves is refused
at once (``in_use``), naming the service that holds it, its pid and where it listens, and what to do; the first one
serves on, and its own commands still write to its store. A service SIGKILLed lets go of its store with its process:
it starts again at once. Before, the second start served too, each process with its own memory of the one store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hostprocs import Service, cardnet
from speedprocs import build

from cardnet.bench.ticketnet import TicketNet
from cardnet.bench.trnnet import PIN, TrnNet

VID = "00000000000000a1"


def refused(*args: str) -> tuple[dict[str, str], str]:
    """``cardnet ARGS --json``, which must be refused at once: its error object; then the same without ``--json``:
    its words for a person (stderr)."""
    r = at_once(*args, "--json")
    assert r.returncode != 0 and r.stdout.strip(), (r.stdout, r.stderr)
    error = json.loads(r.stdout)["error"]
    human = at_once(*args)
    assert human.returncode != 0 and "Traceback" not in human.stderr, human.stderr
    return error, human.stderr


def at_once(*args: str) -> subprocess.CompletedProcess[str]:
    """``cardnet ARGS``, which must end by itself (a refusal): one that still runs after a minute served (killed)."""
    try:
        return subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a second `cardnet {' '.join(args)}` was not refused: it served ({exc.stdout!r})")


def names_the_first(error: dict[str, str], human: str, what: str, first: Service, store: Path, option: str) -> None:
    assert first.proc is not None
    holder = f"{what} (pid {first.proc.pid}, listening on {first.address}) already runs on {store}"
    assert error["reason"] == "in_use" and holder in error["message"], error
    assert f"stop it first (kill {first.proc.pid}), or give another {option}" == error["hint"], error
    assert holder in human and "what to do: stop it first" in human, human


def killed(service: Service) -> None:
    """SIGKILL (:meth:`Service.stop`): nothing of the process runs to let go of anything."""
    assert service.proc is not None and service.proc.poll() is None
    service.stop()
    assert service.proc.returncode == -9


def test_a_second_millicent_vendor_or_broker_on_one_store_is_refused_and_a_killed_one_starts_again_at_once(
    tmp_path: Path,
) -> None:
    v, b = tmp_path / "vendor.db", tmp_path / "broker.db"
    cardnet("millicent", "vendor", "init", "--store", str(v), "--id", VID)
    cardnet("millicent", "vendor", "add-page", "--store", str(v), "--name", "hello", "--price", "3", "--text", "hi")
    cardnet("millicent", "vendor", "licence", "--store", str(v), "--broker", "bob", "--out", str(tmp_path / "lic.json"))
    cardnet("millicent", "broker", "add-licence", "--store", str(b), "--file", str(tmp_path / "lic.json"))
    run = {"vendor": ("millicent", "vendor", "run", "--store", str(v), "--listen", "127.0.0.1:0"),
           "broker": ("millicent", "broker", "run", "--store", str(b), "--listen", "127.0.0.1:0")}  # fmt: skip
    first = {role: Service(tmp_path, *args) for role, args in run.items()}
    try:
        for s in first.values():
            s.start()
        for role, store in (("vendor", v), ("broker", b)):
            error, human = refused(*run[role])
            names_the_first(error, human, f"a millicent {role}", first[role], store, "--store")
        # the first ones serve on, and the store stays shared with the service's own commands
        shown = json.loads(cardnet("millicent", "catalogue", "--at", first["vendor"].address, "--json").stdout)
        assert [p["name"] for p in shown["products"]] == ["hello"], shown
        opened = cardnet("millicent", "open", "--wallet", str(tmp_path / "w.db"), "--broker", first["broker"].address)
        cid = opened.stdout.split("customer id ")[1].split()[0]
        cardnet("millicent", "broker", "deposit", "--store", str(b), "--customer", cid, "--amount", "5")
        for role in ("vendor", "broker"):  # SIGKILLed: the next start serves at once, and is the one named now
            killed(first[role])
            again = Service(tmp_path, *run[role])
            first[role] = again
            again.start()
            error, human = refused(*run[role])
            names_the_first(error, human, f"a millicent {role}", again, v if role == "vendor" else b, "--store")
        # a SIGKILLed service left its claim file (taken over above); one stopped in order removes it
        broker = first["broker"].proc
        assert broker is not None and Path(f"{b}-owner").exists()
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(30) == 0 and not Path(f"{b}-owner").exists()
        assert Path(f"{b}").exists() and Path(f"{v}-owner").exists()  # (the store stays; the vendor runs on)
    finally:
        for s in first.values():
            s.stop()


def test_a_second_speed_vendor_or_broker_on_one_store_is_refused_and_the_sam_names_its_broker(tmp_path: Path) -> None:
    net = build(tmp_path, customers=())
    t = tmp_path
    vendor = ("speed", "vendor", "run", "--store", str(t / "vendor.db"), "--listen", "127.0.0.1:0")
    broker = ("speed", "broker", "run", "--store", str(t / "broker.db"), "--sam-store", str(t / "sam.db"),
              "--listen", "127.0.0.1:0")  # fmt: skip
    try:
        error, human = refused(*vendor)
        names_the_first(error, human, "a speed vendor", net.vendor, t / "vendor.db", "--store")
        error, human = refused(*broker)
        names_the_first(error, human, "a speed broker", net.broker, t / "broker.db", "--store")
        # a command that needs the SAM card while the broker runs is told which process holds it (not "a host")
        error, human = refused("speed", "broker", "prune", "--store", str(t / "broker.db"), "--sam-store",
                               str(t / "sam.db"))  # fmt: skip
        assert net.broker.proc is not None
        holder = f"held by a speed broker (pid {net.broker.proc.pid}, listening on {net.broker.address})"
        assert error["reason"] == "in_use" and holder in error["message"] and "host" not in error["message"], error
        assert holder in human, human
        # another broker's store with this broker's SAM: the SAM is named, and how to give another
        cardnet("speed", "broker", "init", "--store", str(t / "broker2.db"), "--ca", str(t / "ca.file"), "--sam-store",
                str(t / "sam2.db"), "--pin", "2580")  # fmt: skip
        error, human = refused("speed", "broker", "run", "--store", str(t / "broker2.db"), "--sam-store",
                               str(t / "sam.db"), "--pin", "2580", "--listen", "127.0.0.1:0")  # fmt: skip
        names_the_first(error, human, "a speed broker", net.broker, t / "sam.db", "--sam-store")
        killed(net.broker)  # SIGKILLed: it starts again at once
        again = Service(t, *broker)
        net.broker = again
        again.start()
        error, human = refused(*broker)
        names_the_first(error, human, "a speed broker", again, t / "broker.db", "--store")
    finally:
        net.stop()


def test_a_second_host_on_a_card_it_does_not_hold_alone_is_refused(tmp_path: Path) -> None:
    """``exclusive = false`` (tools may read the card's store while the host runs) does not let two hosts step one
    card: the second is refused, naming the first."""
    cardnet("ca", "create", str(tmp_path / "ca.file"))
    made = subprocess.run(["cardnet", "card", "create", "--ca", str(tmp_path / "ca.file"), "--store",
                           f"sqlite:///{tmp_path / 'a.card.db'}", "--json"], capture_output=True, text=True,
                          env={**os.environ, "CARDNET_PIN": "1111"}, check=True)  # fmt: skip
    assert json.loads(made.stdout)["domain"]
    configs = []
    for name in ("a", "a-twin"):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'name = "{name}"\nlisten = "127.0.0.1:0"\napp_socket = "{name}.sock"\n\n'
                       '[[cards]]\nstore = "sqlite:///a.card.db"\napplets = ["trn"]\nexclusive = false\n')  # fmt: skip
        configs.append(("host", "run", "--config", str(cfg)))
    first = Service(tmp_path, *configs[0])
    try:
        first.start()
        error, human = refused(*configs[1])
        assert first.proc is not None
        holder = f"a host 'a' (pid {first.proc.pid}, listening on {first.address}) already runs on {tmp_path}/a.card.db"
        assert error["reason"] == "in_use" and holder in error["message"], error
        assert error["hint"] == f"stop it first (kill {first.proc.pid}), or give this host another card " \
            "(cards[0].store in its config)", error  # fmt: skip
        assert holder in human, human
        killed(first)  # SIGKILLed: the card can be run again at once
        first = Service(tmp_path, *configs[1])
        first.start()
    finally:
        first.stop()


def test_a_ticketing_server_holds_its_vendor_store_and_device_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ticketing server is the SPEED vendor of its store: neither a second server nor a `speed vendor run` on
    that store starts beside it."""
    net = TicketNet(tmp_path, (), ["A1"], gates=())
    tickets = net.hosts["tickets"]
    monkeypatch.setenv("CARDNET_PIN", PIN)
    try:
        tickets.start()
        assert tickets.proc is not None
        held = f"a ticketing server 'bench tickets' (pid {tickets.proc.pid}, listening on {net.url} speed 127.0.0.1:"
        error, human = refused("speed", "vendor", "run", "--store", str(tmp_path / "tickets.db"), "--listen",
                               "127.0.0.1:0")  # fmt: skip
        assert error["reason"] == "in_use" and held in error["message"], error
        assert f"already runs on {tmp_path / 'tickets.db'}" in error["message"] and "--store" in error["hint"], error
        assert held in human, human
        error, human = refused("ticketing", "run", "--config", str(tickets.config))
        assert error["reason"] == "in_use" and held in error["message"], error
        assert error["hint"].endswith("or give this server another store (store in its config)"), error
    finally:
        net.stop()


def test_a_second_authority_ttp_or_gate_run_on_its_card_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`authority run`, `ttp run` and `gate run` are hosts: a second one on the card a running one serves is refused,
    naming it (its cards opened shared, ``exclusive = false``: the claim, not SQLite's lock, refuses it)."""
    net = TrnNet(tmp_path, (), ttp=True, ttp_host=True, gates=("gate",), exclusive=False)
    monkeypatch.setenv("CARDNET_PIN", PIN)
    served = {"auth": ("an authority host 'auth'", "authority"), "ttp": ("a host 'ttp'", "ttp"),
              "gate": ("a gate host 'gate'", "gate")}  # fmt: skip
    try:
        for name, (what, card) in served.items():
            first = net.hosts[name]
            first.start()
            assert first.proc is not None
            twin = tmp_path / f"{name}-twin.toml"
            twin.write_text(first.config.read_text().replace(f'app_socket = "{name}.sock"', 'app_socket = "twin.sock"')
                            .replace(f"listen = \"127.0.0.1:{first.port}\"", 'listen = "127.0.0.1:0"'))  # fmt: skip
            error, human = refused(*(a for a in first.command if a != "--json"), "--config", str(twin))
            holder = f"{what} (pid {first.proc.pid}, listening on 127.0.0.1:{first.port}) already runs on {tmp_path}/"
            assert error["reason"] == "in_use" and holder in error["message"], error
            assert f"{card}.card.db" in error["message"] and "stop it first" in error["hint"], error
            assert holder in human, human
    finally:
        net.stop()
