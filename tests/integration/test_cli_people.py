"""The command line as a new user meets it (issue 10, items 13-15): real ``cardnet`` processes, real files.

A write to a bad path records nothing; a host whose app socket cannot be made says which path; status
commands print tables and say when a list is empty; refusals are in the person's words; the freshness
policy can be set when a card is personalised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hostprocs import make_hosts
from test_cli import cardnet
from test_cli_errors import json_error
from test_millicent_processes import VID, Service, customer, world  # noqa: F401  (world: a pytest fixture)

from cardnet.applets.sessions import POLICY, POLICY_IS
from cardnet.applets.trn import SEND, TrnApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.cli.output import card_refusal
from cardnet.host import Host
from cardnet.wire import Message, MType, Uid


def _clean_failure(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def vendor_status(store: Path) -> dict[str, Any]:
    r = cardnet("millicent", "vendor", "status", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_a_licence_or_agreement_that_cannot_be_written_is_not_recorded(tmp_path: Path) -> None:
    v = tmp_path / "v.db"
    assert cardnet("millicent", "vendor", "init", "--store", str(v), "--id", VID).returncode == 0
    taken = tmp_path / "taken.json"
    taken.write_text("mine")
    for out in (tmp_path / "no-such-folder" / "x.json", Path("/sys/cardnet-test.json"), taken):
        for cmd in (("licence",), ("bulk-agreement", "--discount", "5")):
            r = cardnet("millicent", "vendor", *cmd, "--store", str(v), "--broker", "bob", "--out", str(out))
            _clean_failure(r, str(out))
            e = json_error(
                cardnet("millicent", "vendor", *cmd, "--store", str(v), "--broker", "bob", "--out", str(out), "--json")
            )
            assert str(out) in e["message"] and e["hint"], e
    assert taken.read_text() == "mine"  # never overwritten
    assert not (tmp_path / "no-such-folder").exists() and not Path("/sys/cardnet-test.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.json", "v.db"]  # no temporary file left
    # nothing was recorded: no bulk broker, and the first licence written takes the first broker index
    assert vendor_status(v)["bulk_sales"] == {}
    lic = tmp_path / "lic.json"
    r = cardnet("millicent", "vendor", "licence", "--store", str(v), "--broker", "bob", "--out", str(lic), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["index"] == 0x80 == json.loads(lic.read_text())["index"]
    assert lic.stat().st_mode & 0o777 == 0o600


def test_a_host_whose_app_socket_folder_is_missing_says_so(tmp_path: Path) -> None:
    (host,) = make_hosts(tmp_path, ["a"], ["echo"])
    config = host.config.read_text().replace('app_socket = "a.sock"', 'app_socket = "gone/a.sock"')
    assert "gone/a.sock" in config
    host.config.write_text(config)
    r = cardnet("host", "run", "--config", str(host.config), cwd=tmp_path)
    _clean_failure(r, "app_socket", "gone/a.sock", "No such file or directory", "folder exists")
    e = json_error(cardnet("host", "run", "--config", str(host.config), "--json", cwd=tmp_path))
    assert e["reason"] == "bad_config" and "gone/a.sock" in e["message"], e


def test_millicent_status_is_tables_and_empty_lists_say_so(tmp_path: Path) -> None:
    v, b = tmp_path / "v.db", tmp_path / "b.db"
    assert cardnet("millicent", "vendor", "init", "--store", str(v), "--id", VID).returncode == 0
    r = cardnet("millicent", "vendor", "status", "--store", str(v), env={"COLUMNS": "30"})
    assert r.returncode == 0, r.stderr
    assert "{" not in r.stdout and "no products" in r.stdout and "no bulk sales" in r.stdout, r.stdout
    assert VID in r.stdout  # whole, even at 30 columns
    agreement = tmp_path / "bulk.json"
    cmd = ("millicent", "vendor", "bulk-agreement", "--store", str(v), "--broker", "a-broker-with-a-long-name")
    assert cardnet(*cmd, "--out", str(agreement)).returncode == 0
    cid = json.loads(agreement.read_text())["customer_id"]
    r = cardnet("millicent", "vendor", "status", "--store", str(v), env={"COLUMNS": "30"})
    assert "{" not in r.stdout and cid in r.stdout and "a-broker-with-a-long-name" in r.stdout, r.stdout
    lic = tmp_path / "lic.json"
    assert (
        cardnet("millicent", "vendor", "licence", "--store", str(v), "--broker", "b", "--out", str(lic)).returncode == 0
    )
    assert cardnet("millicent", "broker", "add-licence", "--store", str(b), "--file", str(lic)).returncode == 0
    r = cardnet("millicent", "broker", "status", "--store", str(b))
    assert r.returncode == 0 and "{" not in r.stdout, r.stdout
    assert "nothing redeemed yet" in r.stdout and "no bulk vendors" in r.stdout, r.stdout


def test_millicent_services_say_ready_as_one_json_line(tmp_path: Path) -> None:
    v = tmp_path / "v.db"
    assert cardnet("millicent", "vendor", "init", "--store", str(v), "--id", VID).returncode == 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cardnet.cli.main",
            *("millicent", "vendor", "run", "--store", str(v)),
            *("--listen", "127.0.0.1:0", "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())["ready"]
        assert ready["name"] == "vendor" and ready["listen"].startswith("127.0.0.1:")
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_a_refused_spend_is_an_error_in_the_customers_words(world: dict[str, object]) -> None:  # noqa: F811
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice = customer(world, "alice")
    args = ["millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--price", "3"]
    e = json_error(cardnet(*args, "--product", "no-such-page", "--json"))
    assert e["reason"] == "unknown_product" and "does not sell no-such-page" in e["message"], e
    _clean_failure(cardnet(*args, "--product", "no-such-page"), "the vendor does not sell no-such-page")


def test_card_create_sets_the_freshness_policy(tmp_path: Path) -> None:
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    freshness = ("--max-blocklist-age", "60", "--min-epoch", "3", "--session-lifetime", "600")
    policies = {}
    for name, extra in (("strict", (*freshness, "--session-records", "100")), ("plain", ())):
        store = f"sqlite:///{tmp_path / name}.db"
        r = cardnet("card", "create", "--ca", str(ca), "--store", store, "--pin", "1234", *extra, "--json")
        assert r.returncode == 0, r.stderr
        policies[name] = json.loads(r.stdout)["policy"]
        # what the card itself enforces: its answer to an empty (tighten-nothing) session.policy
        policies[name + " on the card"] = _ask_card(store, POLICY)
    strict = {"max_blocklist_age_s": 60, "min_epoch": 3, "lifetime_s": 600, "max_records": 100}
    assert policies["strict"] == strict
    shown = POLICY_IS.parse(policies["strict on the card"])
    assert {k: shown[k] for k in strict} == strict
    plain = POLICY_IS.parse(policies["plain on the card"])
    assert policies["plain"] == {k: plain[k] for k in strict} == dict.fromkeys(strict, 0)
    r = cardnet(
        "card", "create", "--ca", str(ca), "--store", f"sqlite:///{tmp_path}/x.db", "--pin", "1", "--min-epoch", "-1"
    )
    _clean_failure(r, "--min-epoch")
    assert not (tmp_path / "x.db").exists()


def _ask_card(store: str, mtype: MType, **fields: Any) -> Message:
    """What the card in ``store`` answers an application that verified the PIN."""
    card = Card.open(store, create=False, applets=[TrnApplet()])
    try:
        host = Host([card], name="test")
        app = host.acquire(card.uid.domain, 0.0)
        app.send(card.uid, cm.PIN_VERIFY, pin="1234")
        app.send(card.uid, mtype, **fields)
        for _ in range(20):
            host.pump(1.0)
        replies = app.receive_all()
        assert cm.PIN_RESULT.parse(replies[0])["ok"], replies
        return replies[-1]
    finally:
        card.close()


def test_a_card_refusal_is_said_in_the_owners_words(tmp_path: Path) -> None:
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    store = f"sqlite:///{tmp_path}/a.db"
    assert cardnet("card", "create", "--ca", str(ca), "--store", store, "--pin", "1234").returncode == 0
    # the card's own refusal of sending a token it does not hold
    reply = _ask_card(store, SEND, oid=b"\x01" * 16, to=Uid(b"\x02" * 12, 0), traceable=True)
    refused = cm.REFUSED.parse(reply)
    words, hint = card_refusal(refused["reason"], refused["detail"])
    assert refused["reason"] == "illegal_move" and words == "this card does not hold that token", refused
    assert hint is not None and "trn list" in hint
    assert card_refusal("privileged", "x is privileged")[0] == "this needs the card's PIN first"
    assert card_refusal("something_new", "the card's own words") == ("the card refused: the card's own words", None)


def test_a_file_that_is_no_licence_or_agreement_makes_no_broker_store(tmp_path: Path) -> None:
    b = tmp_path / "b.db"
    for shape in ('{"a": 1}', "[1, 2]", '"text"'):
        (tmp_path / "f.json").write_text(shape)
        for cmd in (("add-licence",), ("add-bulk", "--vendor-at", "127.0.0.1:7200")):
            r = cardnet("millicent", "broker", *cmd, "--store", str(b), "--file", str(tmp_path / "f.json"))
            _clean_failure(r, "not a Millicent")
            if shape.startswith("{"):  # a missing field is named in words, not as Python's bare 'vendor'
                assert "it has no 'vendor' field" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_a_wallet_whose_host_is_not_running_says_the_command_that_starts_it(tmp_path: Path) -> None:
    """A new wallet's owner runs `cardnet wallet list` before starting the host (the wrong order): the error names
    the host config `wallet init` wrote and the command that starts it, and that command, run as written, is the
    next step that works (the hint said "is `cardnet host run` (or `cardnet authority run`) running with that
    app_socket?", naming neither)."""
    import shlex

    from cardnet.bench.procs import READY, free_port, stop_process

    env = {"CARDNET_HOME": str(tmp_path / "home"), "CARDNET_PIN": "4321"}
    assert cardnet("ca", "create", str(tmp_path / "ca.cnca")).returncode == 0
    made = cardnet("wallet", "init", "--ca", str(tmp_path / "ca.cnca"), "--name", "Alice",
                   "--listen", f"127.0.0.1:{free_port()}", env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    err = json_error(cardnet("wallet", "list", "--json", env=env))
    host_toml = tmp_path / "home" / "host.toml"
    assert err["reason"] == "no_host" and "your host is not running" in err["message"], err
    assert f"`cardnet host run --config {host_toml}`" in err["hint"], err
    words = cardnet("wallet", "list", env=env)
    _clean_failure(words, "error: your host is not running", "what to do: start it with `cardnet host run --config")
    start = shlex.split(err["hint"].split("`")[1])  # the command, as the hint gives it
    assert start[0] == "cardnet"
    host = subprocess.Popen([sys.executable, "-m", "cardnet.cli.main", *start[1:]], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        assert host.stdout is not None and host.stdout.readline().startswith(READY)
        listed = cardnet("wallet", "list", env=env)
        assert listed.returncode == 0 and "no tickets or vouchers on this card" in listed.stdout, listed
    finally:
        stop_process(host)


def test_the_setup_mistakes_of_a_new_user_say_what_to_do(tmp_path: Path) -> None:
    """A domain one digit short, a floor above the price, an account opened twice, a vendor made twice: each is one
    JSON error with a hint saying what to do (each was an error with the hint null) and a person reads it too."""
    ca = str(tmp_path / "ca.cnca")
    assert cardnet("ca", "create", ca).returncode == 0
    short = ["card", "create", "--ca", ca, "--store", f"sqlite:///{tmp_path / 'x.card.db'}", "--pin", "1234",
             "--domain", "a11ce0a11ce0a11ce0a11ce"]  # fmt: skip
    err = json_error(cardnet(*short, "--json"))
    assert err["reason"] == "bad_domain" and "give 24 hex digits" in err["hint"], err
    _clean_failure(cardnet(*short), "is not 24 hex digits", "what to do: give 24 hex digits")

    (tmp_path / "song.txt").write_text("la la")
    vendor, broker = str(tmp_path / "vendor.db"), str(tmp_path / "broker.db")
    env = {"CARDNET_PIN": "1234"}
    made = cardnet("speed", "broker", "init", "--store", broker, "--ca", ca, "--sam-store", str(tmp_path / "sam.db"),
                   env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    (tmp_path / "broker.pem").write_text(cardnet("speed", "broker", "cert", "--store", broker).stdout)
    made = cardnet("speed", "vendor", "init", "--store", vendor, "--ca", ca, "--account", "V-1",
                   "--broker-cert", str(tmp_path / "broker.pem"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    floor = ["speed", "vendor", "add", "--store", vendor, "--product", "song-1", "--price", "2.00 EUR",
             "--floor", "3.00 EUR", "--file", str(tmp_path / "song.txt"), "--json"]  # fmt: skip
    err = json_error(cardnet(*floor))
    assert err["reason"] == "bad_floor" and "--floor '2.00 EUR'" in err["hint"], err
    customer = ["speed", "broker", "add-customer", "--store", broker, "--account", "C-1", "--card", "a1" * 12]
    assert cardnet(*customer).returncode == 0
    err = json_error(cardnet(*customer, "--json"))
    assert err["reason"] == "exists" and "choose another --account" in err["hint"], err

    mvendor = ["millicent", "vendor", "init", "--store", str(tmp_path / "mv.db"), "--id", "00000000000000a1"]
    assert cardnet(*mvendor).returncode == 0
    err = json_error(cardnet(*mvendor, "--json"))
    assert err["reason"] == "exists" and "use another --store" in err["hint"], err
    status = cardnet("millicent", "vendor", "status", "--store", str(tmp_path / "mv.db"))
    assert status.returncode == 0 and "00000000000000a1" in status.stdout, status  # (the vendor there, untouched)
