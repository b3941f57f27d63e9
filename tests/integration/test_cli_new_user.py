"""What a new user's trial of the command line met (real ``cardnet`` processes, real hosts, brokers and files): a
mistake is answered by what was wrong, in the user's words, and what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_cli import cardnet
from test_cli_errors import json_error
from test_millicent_processes import VID, Service, customer, world  # noqa: F401  (world: a pytest fixture)
from test_trn_cli import (
    ELSEWHERE,
    OID,
    args,
    cli,
    error_json,
    give_a_token,
    net,  # noqa: F401  (a pytest fixture: host a routes ELSEWHERE to host b, which lacks it)
    ok_json,
    setup,
    tokens,
)

from cardnet.bench.trnnet import PIN, TrnNet


def test_trn_and_authority_mistakes_say_what_was_wrong_and_what_to_do(net: TrnNet, tmp_path: Path) -> None:  # noqa: F811
    # authority add-agent with a file that is no certificate: said so, not the parser's words; the card saw nothing
    for name, raw in (("notes.txt", b"not a certificate\n"), ("bad.pem", b"-----BEGIN CERTIFICATE-----\nAA==\n")):
        (tmp_path / name).write_bytes(raw)
        e = error_json(cli("authority", "add-agent", *args(net, "authority"), "--cert", str(tmp_path / name), "--json"))
        assert e["reason"] == "bad_certificate" and "ParseError" not in e["message"], e
        assert e["message"] == f"{tmp_path / name} is not a certificate (PEM or DER)", e
        assert "cardnet card show" in e["hint"] and "--cert" in e["hint"], e
    # trn set-authority to an authority this host cannot reach (a mistyped Uid): refused before the card changes,
    # saying which authority and what to do; an application's Uid is no authority card's
    nowhere = "0badc0de0badc0de0badc0de:00000000"
    for fmt in ((), ("--json",)):
        r = cli("trn", "set-authority", *args(net, "a"), "--authority", nowhere, *fmt)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    e = error_json(r)
    assert e["reason"] == "no_route" and e["message"].startswith(f"this host cannot reach the authority {nowhere}"), e
    assert "the card's authority was not changed" in e["message"] and "[routes]" in e["hint"], e
    r = cli("trn", "set-authority", *args(net, "a"), "--authority", str(net.uids["authority"])[:-1] + "1")
    assert r.returncode == 2 and "an application's Uid: give the authority card's" in r.stderr, r.stderr
    setup(net)  # the agent's real certificate (DER) is taken
    give_a_token(net, OID)

    # authority chain and trace of an oid it never recorded: an error (exit non-zero), saying the authority knows
    # no movement of it and what to check; --json gives the error object
    unknown = "0123456789abcdef0123456789abcdef"
    for command in (("chain", "--oid", unknown), ("trace", unknown)):
        r = cli("authority", command[0], *args(net, "authority"), *command[1:])
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert f"the authority knows no movement of token {unknown}" in r.stderr, r.stderr
        assert "check the oid" in r.stderr and "cardnet trn list" in r.stderr, r.stderr
        assert "cardnet authority graph" in r.stderr and "--socket" in r.stderr, r.stderr
        e = error_json(cli("authority", command[0], *args(net, "authority"), *command[1:], "--json"))
        assert e["reason"] == "unknown_oid" and e["oid"] == unknown and "cardnet trn list" in e["hint"], e
    # a token it did record: its chain, exit 0
    got = ok_json(cli("authority", "chain", *args(net, "authority"), "--oid", OID, "--json"))
    assert got["oid"] == OID and got["issuer"] == str(net.uids["agent"]) and got["holders"], got

    # a token sent again while its first send waits: it is being sent, to whom, and what to do
    ok_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(ELSEWHERE), "--json"))
    assert tokens(net, "a")[OID]["status"] == "disabled+O"
    e = error_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(net.uids["b"]), "--json"))
    assert e["message"].startswith(f"token {OID} is already being sent to {ELSEWHERE}"), e
    assert "wait" in e["hint"] and f"cardnet trn cancel --oid {OID}" in e["hint"], e
    assert tokens(net, "a")[OID]["peer"] == str(ELSEWHERE)  # nothing changed
    human = cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(net.uids["b"]))
    assert human.returncode != 0 and "already being sent to" in human.stderr and "trn cancel" in human.stderr


def test_spend_at_the_brokers_address_says_it_answered_as_a_broker(world: dict[str, object]) -> None:  # noqa: F811
    vendor, broker = world["vendor"], world["broker"]
    assert isinstance(vendor, Service) and isinstance(broker, Service)
    at = vendor.start()
    alice = customer(world, "alice")
    spend = ("millicent", "spend", "--wallet", alice, "--vendor", VID, "--product", "hello", "--price", "3")
    e = json_error(cardnet(*spend, "--at", broker.address, "--json"))
    assert e["reason"] == "not_a_vendor", e
    assert f"{broker.address} answered as a Millicent broker, not a vendor: check --at" in e["message"], e
    assert f"cardnet millicent retry --at VENDOR_HOST:PORT --vendor {VID}" in e["hint"], e
    # the spend waits, its scrip kept: retry sends it to the vendor, once
    r = cardnet("millicent", "retry", "--wallet", alice, "--at", at, "--vendor", VID, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    listed = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
    assert listed["pending"] == [] and sum(s["value"] for s in listed["scrip"]) == 100 - 3, listed


def test_store_mistakes_name_the_files_and_what_to_write(tmp_path: Path) -> None:
    ca = tmp_path / "ca.file"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    env = {"CARDNET_PIN": PIN}
    # card create with sqlite://x.db (two slashes): a hint that writes it right
    e = json_error(
        cardnet("card", "create", "--ca", str(ca), "--store", "sqlite://x.db", "--json", cwd=tmp_path, env=env)
    )
    assert e["reason"] == "bad_url" and e["hint"] and "sqlite:///x.db" in e["hint"], e
    assert not (tmp_path / "x.db").exists()
    # speed broker init run twice: both files are named, and how to run the broker they hold
    init = ("speed", "broker", "init", "--store", "broker.db", "--ca", str(ca), "--sam-store", "sam.db")
    assert cardnet(*init, cwd=tmp_path, env=env).returncode == 0
    e = json_error(cardnet(*init, "--json", cwd=tmp_path, env=env))
    assert e["reason"] == "exists" and "broker.db" in e["message"] and "sam.db" in e["message"], e
    assert "cardnet speed broker run --store broker.db --sam-store sam.db" in e["hint"], e
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.db", "ca.file", "sam.db"]


def test_speed_broker_init_made_before_is_refused_before_any_pin_is_asked(tmp_path: Path) -> None:
    ca = tmp_path / "ca.file"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    init = ("speed", "broker", "init", "--ca", str(ca))
    made = cardnet(*init, "--store", "broker.db", "--sam-store", "sam.db", cwd=tmp_path, env={"CARDNET_PIN": PIN})
    assert made.returncode == 0, made.stderr
    # run again with no PIN given (nor a terminal to ask on): refused for what exists, not for the missing PIN
    env = {k: v for k, v in os.environ.items() if k != "CARDNET_PIN"}

    def again(*stores: str) -> dict[str, str]:
        argv = [sys.executable, "-m", "cardnet.cli.main", *init, *stores, "--json"]
        run = subprocess.run(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
        return json_error(run)

    e = again("--store", "broker.db", "--sam-store", "sam.db")
    assert e["reason"] == "exists" and "broker.db" in e["message"] and "sam.db" in e["message"], e
    e = again("--store", "broker.db", "--sam-store", "sam2.db")  # a new SAM for a broker made before
    assert e["reason"] == "exists" and e["message"] == "broker.db holds a broker already", e
    e = again("--store", "broker2.db", "--sam-store", "sam.db")  # a new broker with a SAM made before
    assert "personalised already" in e["message"], e
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.db", "ca.file", "sam.db"]


def test_a_millicent_command_given_no_wallet_says_so_and_makes_none(tmp_path: Path) -> None:
    """``cardnet millicent buy`` (or spend, renew, retry) with a --wallet path that holds no wallet (a typo, or
    $CARDNET_WALLET not set in this shell) fails ``missing`` naming the path, as ``list`` does, and leaves no file:
    before, they made an empty wallet at the typo and answered "open an account first" to a customer who had one."""
    typo = tmp_path / "alice.walet.db"
    spend = ("spend", "--vendor", VID, "--at", "127.0.0.1:9", "--product", "hello", "--price", "3")
    for command in (("buy", "--vendor", VID, "--value", "100"), spend, ("list",), ("renew",), ("retry",)):
        e = json_error(cardnet("millicent", *command, "--wallet", str(typo), "--json"))
        assert e["reason"] == "missing" and f"there is no store {typo}" in e["message"], (command, e)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], (command, list(tmp_path.iterdir()))
    # $CARDNET_WALLET unset, no wallet.db here: the default path named, and still no file made
    env = {k: v for k, v in os.environ.items() if k != "CARDNET_WALLET"}
    argv = [sys.executable, "-m", "cardnet.cli.main", "millicent", "buy", "--vendor", VID, "--value", "100"]
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and f"there is no store {tmp_path / 'wallet.db'}" in run.stderr, run.stderr
    assert "open an account first" not in run.stderr and not (tmp_path / "wallet.db").exists(), run.stderr


def test_gate_setup_given_the_ca_certificate_names_a_command_that_writes_the_agents(tmp_path: Path) -> None:
    """``cardnet gate setup --issuer-cert ca.pem`` (the CA's certificate, not the ticketing agent card's) is refused
    ``bad_issuer``, and the command its hint names, run as written (its placeholders filled in), writes a card's
    certificate. Before, the hint said ``cardnet card show --store AGENT.db --cert FILE``: a store that is no URL
    and a --cert that takes no file, both refused."""
    ca_pem = tmp_path / "ca.pem"
    with TrnNet(tmp_path, wallets=(), gates=("g",)) as gated:  # (TrnNet makes the CA, ca.cnca)
        ca_pem.write_text(cardnet("ca", "cert", str(tmp_path / "ca.cnca")).stdout)
        socket = gated.hosts["g"].socket
        e = json_error(cardnet("gate", "setup", "--socket", socket, "--issuer-cert", str(ca_pem), "--json",
                               env={"CARDNET_PIN": PIN}))  # fmt: skip
        assert e["reason"] == "bad_issuer" and "is a CA certificate" in e["message"], e
    # the card the hint means is one no host runs: a spare agent card made here
    made = cardnet("card", "create", "--ca", str(tmp_path / "ca.cnca"), "--store", "sqlite:///spare.card.db",
                   "--role", "agent", cwd=tmp_path, env={"CARDNET_PIN": PIN})  # fmt: skip
    assert made.returncode == 0, made.stderr
    command = e["hint"].split("`")[1]
    assert command.startswith("cardnet card show "), e["hint"]
    shell = command.replace("cardnet ", f"{sys.executable} -m cardnet.cli.main ", 1).replace("AGENT", "spare")
    run = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, (shell, run.stderr)
    assert (tmp_path / "spare.pem").read_text().startswith("-----BEGIN CERTIFICATE-----"), shell


def test_a_spend_whose_top_up_the_balance_does_not_cover_says_to_lower_it(world: dict[str, object]) -> None:  # noqa: F811
    """A customer credited 10 spends 3 with no scrip yet: spend buys a piece worth --top-up (100 by default)
    first, which the balance does not cover. The error names the top-up and says to spend with a smaller one;
    and that spend goes through. Before, the hint said only that the balance was too small ("balance 10 does not
    cover 100" for a price of 3), and the customer could not tell where the 100 came from."""
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice = customer(world, "alice", deposit=10)
    spend = ("millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello", "--price", "3")
    e = json_error(cardnet(*spend, "--json"))
    assert e["reason"] == "refused" and "does not cover 100" in e["message"], e
    assert "--top-up 100" in e["hint"] and "smaller --top-up (at least 3)" in e["hint"], e
    assert "cardnet millicent broker deposit --customer" in e["hint"], e
    r = cardnet(*spend, "--top-up", "10")
    assert r.returncode == 0 and "hello, world" in r.stdout, r.stdout + r.stderr


def test_speed_recover_with_a_folder_that_holds_no_journal_says_so_and_makes_none(tmp_path: Path) -> None:
    """``cardnet speed recover --out boughtt`` (a typo of the folder ``speed buy --out bought`` wrote to) says that
    folder holds no purchase journal and to check --out, exit 2, and makes no folder. Before, it made the empty
    folder and answered "nothing was left to finish", exit 0, while the purchases under way waited in ``bought``.
    Against a real host running the customer's card (purse, speed)."""
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    (tmp_path / "ca.pem").write_text(cardnet("ca", "cert", str(ca)).stdout)
    store = f"sqlite:///{tmp_path / 'alice.card.db'}"
    assert cardnet("card", "create", "--ca", str(ca), "--store", store, env={"CARDNET_PIN": PIN}).returncode == 0
    config = tmp_path / "alice.toml"
    config.write_text(f'name = "alice"\napp_socket = "{tmp_path / "alice.sock"}"\n\n[[cards]]\nstore = "{store}"\n'
                      'applets = ["purse", "speed"]\n')  # fmt: skip
    (tmp_path / "bought" / ".purchases").mkdir(parents=True)  # what a `speed buy --out bought` leaves
    host = Service(tmp_path, "host", "run", "--config", str(config))
    host.start()
    try:
        recover = ("speed", "recover", "--socket", str(tmp_path / "alice.sock"), "--ca-cert", "ca.pem", "--pin", PIN)
        e = json_error(cardnet(*recover, "--out", "boughtt", "--json", cwd=tmp_path))
        assert e["reason"] == "no_journal" and "boughtt holds no purchase journal" in e["message"], e
        assert "check --out" in e["hint"], e
        assert not (tmp_path / "boughtt").exists()
        human = cardnet(*recover, "--out", "boughtt", cwd=tmp_path)
        assert human.returncode == 2 and "nothing was left to finish" not in human.stdout, human.stdout + human.stderr
        right = cardnet(*recover, "--out", "bought", cwd=tmp_path)  # the folder the purchases are journalled in
        assert right.returncode == 0 and "nothing was left to finish" in right.stdout, right.stdout + right.stderr
    finally:
        host.stop()


def test_authority_run_without_a_pin_says_how_to_give_it(tmp_path: Path) -> None:
    """`cardnet authority run` with no $CARDNET_PIN: reason no_pin (before: 'error'), and the command to run it
    with one (before: 'the service logs in to its own card with it', no command)."""
    config, ca = tmp_path / "auth.toml", tmp_path / "ca.cnca"
    config.write_text("")
    assert cardnet("ca", "create", str(ca)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "CARDNET_PIN"}
    argv = [sys.executable, "-m", "cardnet.cli.main", "authority", "run", "--config", str(config), "--ca", str(ca)]
    r = subprocess.run([*argv, "--json"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60, check=False)  # fmt: skip
    e = json_error(r)
    assert e["reason"] == "no_pin" and e["message"] == "no PIN: set CARDNET_PIN to the authority card's PIN", e
    assert f"`CARDNET_PIN=... cardnet authority run --config {config} --ca {ca}`" in e["hint"], e


def test_wallet_ui_listen_with_a_port_past_65535_says_so(tmp_path: Path) -> None:
    """`wallet ui --listen 127.0.0.1:99999`: the port is named as out of range (before: "is not HOST:PORT", which
    it is); a value with no port still says HOST:PORT. Both before any host or PIN."""
    for listen, said in (("127.0.0.1:99999", "the port 99999 is past 65535 (give 1..65535, or 0 for any free one)"),
                         ("127.0.0.1", "'127.0.0.1' is not HOST:PORT (e.g. 127.0.0.1:8471)")):  # fmt: skip
        r = cardnet("wallet", "ui", "--listen", listen, "--socket", str(tmp_path / "h.sock"))
        words = " ".join(r.stderr.split())
        assert r.returncode == 2 and "Invalid value for --listen" in words and said in words, words
