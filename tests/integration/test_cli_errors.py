"""Errors as a person and as a script meet them: real ``cardnet`` processes, real paths on disk.

Every error is one clean report: with ``--json`` one JSON object ``{"error": {...}}`` on stdout and
a non-zero exit, else prose on stderr; never a traceback (unless asked for with ``-v``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from hostprocs import PINS, make_hosts
from test_cli import cardnet

from cardnet.cli.main import cli, subcommands
from cardnet.cli.output import _remember_json


def json_error(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The error object a failing ``--json`` invocation printed: one JSON object, non-zero exit, no traceback."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    obj = json.loads(r.stdout)
    assert set(obj) == {"error"}, obj
    err: dict[str, Any] = obj["error"]
    assert set(err) == {"reason", "message", "hint"} and err["reason"] and err["message"], err
    return err


def leaf_commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    leaves: dict[str, click.Command] = {}
    for name, command in subcommands(group).items():
        if isinstance(command, click.Group):
            leaves.update(leaf_commands(command, (*path, name)))
        else:
            leaves[" ".join((*path, name))] = command
    return leaves


def test_every_command_takes_json_and_answers_errors_in_json() -> None:
    leaves = leaf_commands()
    assert {"ca create", "card show", "host run", "demo", "sim", "bench card"} <= set(leaves)
    missing = sorted(
        p for p, c in leaves.items() if not any(getattr(o, "callback", None) is _remember_json for o in c.params)
    )
    assert not missing, "without the shared --json: " + ", ".join(missing)
    # A real failing invocation of each command with --json: one JSON error on stdout, non-zero exit.
    with_json = [p for p in leaves if p not in missing]
    for start in range(0, len(with_json), 6):
        batch = with_json[start : start + 6]
        procs = {
            p: subprocess.Popen(
                [sys.executable, "-m", "cardnet.cli.main", *p.split(), "--json", "--no-such-option"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for p in batch
        }
        for p, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            e = json_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
            assert e["reason"] == "usage" and "--no-such-option" in e["message"], (p, e)
            assert e["hint"] == f"see `cardnet {p} --help`", (p, e)


def test_every_option_of_every_command_says_in_its_help_what_it_is() -> None:
    """`--help` teaches: each option has a line saying what it is (ten said only ``[required]``: `trn send --oid`,
    `host run --config`, `card create --ca`, ...), shown by the real command."""
    bare = sorted(
        f"{p} {o.opts[0]}"
        for p, c in leaf_commands().items()
        for o in c.params
        if isinstance(o, click.Option) and o.name != "help" and not (o.help or "").strip()
    )
    assert not bare, "options without help: " + ", ".join(bare)
    shown = " ".join(cardnet("trn", "send", "--help").stdout.split())
    assert "--oid TEXT The token to send (32 hex digits" in shown, shown


def test_each_kind_of_error_is_one_json_object_with_json(tmp_path: Path) -> None:
    # a CardnetError from the store layer
    e = json_error(cardnet("card", "show", "--store", "mysql://nowhere", "--json"))
    assert e["reason"] == "bad_url" and "store URL" in e["message"]
    # an option click refuses after --json was seen (a required option missing)
    e = json_error(cardnet("card", "show", "--json"))
    assert e["reason"] == "usage" and "--store" in e["message"]
    # a command's own check (BadParameter) and fail()
    e = json_error(cardnet("bench", "card", "--json", "--group", "1"))
    assert e["reason"] == "usage" and "--group" in e["message"]
    # more exchanges at once than a wallet card holds offers for: refused before any host starts, saying why (it
    # used to run, fail on the card's "busy" refusals or a full card, and print a traceback)
    e = json_error(cardnet("bench", "fairx", "--json", "--in-flight", "33"))
    assert e["reason"] == "usage" and "1..32" in e["message"] and "busy" in e["message"]
    e = json_error(cardnet("sim", "--protocol", "no-such-protocol", "--json"))
    assert "no-such-protocol" in e["message"] and "echo" in e["hint"]
    # an OSError on the person's path
    e = json_error(cardnet("ca", "create", str(tmp_path / "no" / "such" / "ca.cnca"), "--json"))
    assert e["reason"] == "not_found" and str(tmp_path / "no" / "such" / "ca.cnca") in e["message"]
    # an unexpected exception (a bug: an error no layer turned into its error type)
    e = json_error(with_a_buggy_command("--json"))
    assert e["reason"] == "internal" and "ZeroDivisionError" in e["message"] and "-v" in e["hint"]


# A real cardnet process whose command tree has one more command with a real bug in it: what a
# person sees when a command fails in a way nobody foresaw.
BUGGY = """
import sys
import click
from cardnet.cli.main import cli, run
from cardnet.cli.output import json_option

@cli.command("buggy")
@json_option
def buggy(as_json: bool) -> None:
    print(1 / len(sys.argv[99:]))

sys.exit(run(sys.argv[1:]))
"""


def with_a_buggy_command(*args: str, verbose: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", BUGGY, *(["-v"] if verbose else []), "buggy", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_unexpected_errors_are_one_line_and_the_traceback_only_with_v() -> None:
    r = with_a_buggy_command()
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr and "unexpected internal error" in r.stderr and "-v" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2, r.stderr  # the error and what to do
    verbose = with_a_buggy_command(verbose=True)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "ZeroDivisionError" in verbose.stderr


def test_bad_values_are_named_in_the_persons_words_and_nothing_is_made(tmp_path: Path) -> None:
    ca = tmp_path / "ca.cnca"
    r = cardnet("ca", "create", str(ca), "--valid-days", "0")
    _no_traceback_and_says(r, "--valid-days", "1<=x<=36600")
    r = cardnet("ca", "create", str(ca), "--name", "")
    _no_traceback_and_says(r, "--name must be 1..64 printable characters")
    assert not ca.exists()
    assert cardnet("ca", "create", str(ca)).returncode == 0
    store = tmp_path / "c.db"
    r = cardnet("card", "create", "--ca", str(ca), "--store", f"sqlite:///{store}", "--pin", "1" * 17)
    _no_traceback_and_says(r, "PIN must be 1 to 16 bytes")
    r = cardnet("card", "create", "--ca", str(ca), "--store", f"sqlite:///{store}", "--pin", "1", "--name", "x" * 65)
    _no_traceback_and_says(r, "--name must be 1..64 printable characters")
    assert not store.exists()  # no blank card left behind by a refused command


def _no_traceback_and_says(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_a_ca_or_host_certificate_to_a_bad_path_is_refused_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "ca.cnca"
    _no_traceback_and_says(cardnet("ca", "create", str(missing)), str(missing), "does not exist")
    unwritable = Path("/sys/cardnet-test-ca.cnca")  # sysfs: nobody, root included, may create a file there
    _no_traceback_and_says(cardnet("ca", "create", str(unwritable)), str(unwritable), "Permission denied")
    assert not unwritable.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    _no_traceback_and_says(cardnet("ca", "create", str(a_file / "ca.cnca")), str(a_file / "ca.cnca"))

    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    domain = "00112233445566778899aabb"
    for out in (tmp_path / "no-such-folder" / "h", Path("/sys/cardnet-test-h")):
        r = cardnet("ca", "host-cert", str(ca), "--domain", domain, "--out", str(out))
        _no_traceback_and_says(r, f"{out}.pem")
        assert not any(Path(f"{out}{ext}").exists() for ext in (".pem", ".key", ".ca.pem"))
    # The third file's name is taken (a dangling link) after the first two could be written:
    # all or nothing, so neither the key nor the certificate is left behind, and the link is untouched.
    out = tmp_path / "h"
    Path(f"{out}.ca.pem").symlink_to(tmp_path / "elsewhere" / "ca.pem")
    r = cardnet("ca", "host-cert", str(ca), "--domain", domain, "--out", str(out))
    _no_traceback_and_says(r, f"{out}.ca.pem", "exists")
    assert sorted(p.name for p in tmp_path.glob("h*")) == ["h.ca.pem"] and Path(f"{out}.ca.pem").is_symlink()
    assert not (tmp_path / "elsewhere").exists()
    r = cardnet("ca", "host-cert", str(ca), "--domain", domain, "--out", str(tmp_path / "ok"), "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["key"] == f"{tmp_path / 'ok'}.key" and oct(Path(made["key"]).stat().st_mode & 0o777) == "0o600"
    assert all(Path(made[k]).read_text().startswith("-----BEGIN ") for k in ("cert", "key", "ca"))


def test_a_ca_option_given_a_file_that_is_no_ca_file_says_so_and_a_too_open_ca_file_is_still_refused(
    tmp_path: Path,
) -> None:
    """Before, a group-readable file that is no CA at all (``--ca /etc/hostname``, the CA certificate) was said to
    hold "a CA private key but is accessible to group/others": the permission check ran before the file was read."""
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    text.chmod(0o644)
    ca = tmp_path / "ca.cnca"
    assert cardnet("ca", "create", str(ca)).returncode == 0
    cert = tmp_path / "ca.pem"
    made = cardnet("ca", "cert", str(ca))
    assert made.returncode == 0, made.stderr
    cert.write_text(made.stdout)
    cert.chmod(0o644)
    env = {"CARDNET_HOME": str(tmp_path / "home")}
    for given, holds in ((text, "no PEM certificate or private key"), (cert, "a certificate but no private key")):
        for args in (["wallet", "init", "--pin", "1"], ["card", "create", "--store", "sqlite:///c.db", "--pin", "1"]):
            r = cardnet(*args, "--ca", str(given), cwd=tmp_path, env=env)
            _no_traceback_and_says(r, f"{given} is not a CA file: it holds {holds}", "cardnet ca create")
            assert "accessible to group/others" not in r.stderr, r.stderr
            err = json_error(cardnet(*args, "--ca", str(given), "--json", cwd=tmp_path, env=env))
            assert err["reason"] == "bad_certificate" and "not a CA file" in err["message"], err
            assert "cardnet ca create" in err["hint"], err
    assert not (tmp_path / "home").exists() and not (tmp_path / "c.db").exists()
    # A real CA file that group or others may read is still refused for that, with what to do.
    ca.chmod(0o640)
    err = json_error(cardnet("wallet", "init", "--pin", "1234", "--ca", str(ca), "--json", cwd=tmp_path, env=env))
    assert err["reason"] == "bad_key" and "accessible to group/others (mode 640)" in err["message"], err
    assert err["hint"] == f"run chmod 600 {ca}", err


def test_host_run_with_json_says_ready_as_one_json_line_and_its_errors_as_json(tmp_path: Path) -> None:
    (host,) = make_hosts(tmp_path, ["a"], ["echo"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardnet.cli.main", "host", "run", "--config", str(host.config), "--json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready == {"ready": {"name": "a", "listen": f"127.0.0.1:{host.port}"}}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    e = json_error(cardnet("host", "run", "--config", str(bad), "--json"))
    assert e["reason"] == "bad_config" and "app_socket" in e["message"]
    assert json.loads(cardnet("sim", "--list", "--json").stdout)["protocols"][0]


def _no_terminal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``cardnet ARGS`` as a script runs it: stdin not a terminal, no $CARDNET_PIN."""
    env = {k: v for k, v in os.environ.items() if k != "CARDNET_PIN"}
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_no_pin_and_no_terminal_fails_at_once_and_a_missing_host_is_said_before_any_pin(tmp_path: Path) -> None:
    (host,) = make_hosts(tmp_path, ["a"], ["trn"])
    socket = str(tmp_path / "a.sock")
    # no host yet: said first, with no PIN prompt (a person would otherwise type the PIN for nothing)
    commands = (("wallet", "list", "--socket", socket), ("trn", "list", "--socket", socket),
                ("wallet", "ui", "--socket", socket, "--listen", "127.0.0.1:0"))  # fmt: skip
    for args in commands:
        r = _no_terminal(*args, cwd=tmp_path)
        assert r.returncode != 0 and "cannot reach the host" in r.stderr, r.stderr
        assert "PIN" not in r.stderr and "Traceback" not in r.stderr and "GetPassWarning" not in r.stderr
        assert json_error(_no_terminal(*args, "--json", cwd=tmp_path))["reason"] == "no_host"
    host.start()
    try:
        for args in commands:
            r = _no_terminal(*args, cwd=tmp_path)
            assert r.returncode != 0, r.stdout
            assert "no PIN given" in r.stderr and "CARDNET_PIN" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr and "GetPassWarning" not in r.stderr and "aborted" not in r.stderr
            e = json_error(_no_terminal(*args, "--json", cwd=tmp_path))
            assert e["reason"] == "no_pin" and "--pin" in e["hint"]
        # and with the PIN given the same command works
        ok = subprocess.run(
            [sys.executable, "-m", "cardnet.cli.main", "trn", "list", "--socket", socket, "--pin", PINS["a"]],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
    finally:
        host.stop()
    # a new card's PIN likewise, before any store is made
    assert _no_terminal("ca", "create", "ca.cnca", cwd=tmp_path).returncode == 0
    new = _no_terminal("card", "create", "--ca", "ca.cnca", "--store", "sqlite:///n.db", cwd=tmp_path)
    assert new.returncode != 0 and "no PIN given" in new.stderr and "Traceback" not in new.stderr, new.stderr
    assert not (tmp_path / "n.db").exists()


def test_ctrl_c_in_the_middle_says_what_to_do_next_as_json_too(tmp_path: Path) -> None:
    """Ctrl-C while a command waits on a peer that never answers (a listener that reads nothing): exit 130 and one
    report saying it stopped part-way and what to do now, for the command that was stopped (a TRN send may have
    left its token on the way: list, recover), as one JSON error object under --json."""
    import signal
    import socket
    import time

    from cardnet.cli.main import INTERRUPTED_HINTS

    silent = socket.create_server(("127.0.0.1", 0))  # a vendor that accepts (the backlog) and never answers
    host = socket.socket(socket.AF_UNIX)  # a host's application socket, the same
    host.bind(str(tmp_path / "host.sock"))
    host.listen()
    send = ["trn", "send", "--socket", str(tmp_path / "host.sock"), "--pin", "1234"]
    send += ["--oid", "00112233445566778899aabbccddeeff", "--to", "b0b000b0b000b0b000b0b000:00000000"]
    catalogue = ["speed", "catalogue", "--vendor", f"127.0.0.1:{silent.getsockname()[1]}"]
    catalogue += ["--ca-cert", str(tmp_path / "ca.pem")]
    assert cardnet("ca", "create", str(tmp_path / "ca.cnca")).returncode == 0
    (tmp_path / "ca.pem").write_text(cardnet("ca", "cert", str(tmp_path / "ca.cnca")).stdout)
    try:
        sock = str(tmp_path / "host.sock")  # (the trn hint names the stopped command's own --socket)
        trn = f"`cardnet trn list --socket {sock}` shows how each token stands; `cardnet trn recover --socket {sock}` "
        trn += "resends what is unfinished"
        for args, hint in ((catalogue, INTERRUPTED_HINTS[()]), (send, trn)):
            for as_json in (True, False):
                argv = [sys.executable, "-m", "cardnet.cli.main", *args, *(["--json"] if as_json else [])]
                p = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                time.sleep(3)  # (imports, then the connection: it waits for an answer that never comes)
                assert p.poll() is None, p.communicate()
                p.send_signal(signal.SIGINT)
                out, err = p.communicate(timeout=30)
                r = subprocess.CompletedProcess(argv, p.returncode, out, err)
                assert r.returncode == 130, r
                if as_json:
                    e = json_error(r)
                    assert e["reason"] == "interrupted" and e["hint"] == hint, e
                    assert "stopped part-way" in e["message"], e
                else:
                    assert "Traceback" not in err and "error: interrupted: the command stopped part-way" in err, r
                    assert f"what to do: {hint}" in " ".join(err.split()), r
    finally:
        silent.close()
        host.close()


def test_ctrl_c_in_a_purchase_or_a_load_names_the_command_to_finish_it_with_its_own_options(tmp_path: Path) -> None:
    """Ctrl-C in ``cardnet speed buy`` (or ``speed purse load``, ``wallet send``) while its host never answers: the
    hint names the command that finishes what may be under way with the options the stopped command was given
    (socket, card, CA certificate, folder; broker, account), quoted for the shell, so that it can be run as it is.
    Before, it said ``cardnet speed recover --socket S --ca-cert CA --out DIR``, and a person had to work out S, CA
    and DIR (and ``cardnet wallet recover``, which reads the default wallet config, not this host)."""
    import signal
    import socket
    import time

    host = socket.socket(socket.AF_UNIX)  # a host's application socket that accepts and never answers
    host.bind(str(tmp_path / "host.sock"))
    host.listen()
    assert cardnet("ca", "create", str(tmp_path / "ca.cnca")).returncode == 0
    (tmp_path / "ca.pem").write_text(cardnet("ca", "cert", str(tmp_path / "ca.cnca")).stdout)
    (tmp_path / "broker.pem").write_text((tmp_path / "ca.pem").read_text())  # (read, and not checked, before)
    common = ["--socket", "host.sock", "--pin", "1234", "--card", "a11ce0a11ce0a11ce0a11ce0"]
    buy = ["speed", "buy", *common, "--vendor", "127.0.0.1:9", "--broker", "127.0.0.1:9", "--broker-cert"]
    buy += ["broker.pem", "--ca-cert=ca.pem", "--product", "song-1", "--limit", "2.00 EUR", "--out", "my bought"]
    load = ["speed", "purse", "load", *common, "--broker", "127.0.0.1:7450", "--amount", "5.00 EUR", "--account", "C-1"]
    finish_buy = ("`cardnet speed recover --socket host.sock --card a11ce0a11ce0a11ce0a11ce0 --ca-cert ca.pem --out "
                  "'my bought'` finishes it")  # fmt: skip
    finish_load = ("`cardnet speed purse finish --socket host.sock --card a11ce0a11ce0a11ce0a11ce0 --broker "
                   "127.0.0.1:7450 --account C-1` finishes it")  # fmt: skip
    send = ["wallet", "send", "00112233445566778899aabbccddeeff", "--to", "b0b000b0b000b0b000b0b000:00000000"]
    send += ["--socket", "host.sock", "--pin", "1234"]
    finish_send = "`cardnet wallet recover --socket host.sock` finishes whatever was under way"
    env = {**os.environ, "CARDNET_WALLET_CONFIG": str(tmp_path / "none.toml")}  # (no wallet config: --socket alone)
    try:
        for args, finish in ((buy, finish_buy), (load, finish_load), (send, finish_send)):
            argv = [sys.executable, "-m", "cardnet.cli.main", *args, "--json"]
            p = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)  # fmt: skip
            time.sleep(3)  # (imports, then the PIN sent to the host: it waits for an answer that never comes)
            assert p.poll() is None, p.communicate()
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=30)
            e = json_error(subprocess.CompletedProcess(argv, p.returncode, out, err))
            assert p.returncode == 130 and e["reason"] == "interrupted", (e, err)
            assert finish in e["hint"], e["hint"]
            assert " S " not in e["hint"] and "DIR" not in e["hint"] and "HOST:PORT" not in e["hint"], e["hint"]
    finally:
        host.close()
