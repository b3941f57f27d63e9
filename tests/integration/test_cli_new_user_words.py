"""More of what a new user's trial of the command line met (real ``cardnet`` processes and files): a command does not
quietly undo what the user made before, and says what it found.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import cardnet
from test_cli_errors import json_error

from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import vendor as sv
from cardnet.store import SqliteStore

EUR = "EUR"


def _vendor(tmp_path: Path) -> str:
    """A vendor's store made by the commands a person types (a CA, a broker for its certificate, the vendor)."""
    ca, vendor, broker = str(tmp_path / "ca.cnca"), str(tmp_path / "vendor.db"), str(tmp_path / "broker.db")
    assert cardnet("ca", "create", ca).returncode == 0
    made = cardnet("speed", "broker", "init", "--store", broker, "--ca", ca, "--sam-store", str(tmp_path / "sam.db"),
                   env={"CARDNET_PIN": "1234"})  # fmt: skip
    assert made.returncode == 0, made.stderr
    (tmp_path / "broker.pem").write_text(cardnet("speed", "broker", "cert", "--store", broker).stdout)
    made = cardnet("speed", "vendor", "init", "--store", vendor, "--ca", ca, "--account", "V-1",
                   "--broker-cert", str(tmp_path / "broker.pem"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    return vendor


def _stored(vendor: str, product: str) -> tuple[sm.Price, sm.Price, bytes]:
    store = SqliteStore(vendor)
    try:
        with store.transaction() as txn:
            raw = txn.get(sv.CATALOGUE, product.encode())
    finally:
        store.close()
    assert raw is not None
    rec = sv._PRODUCT.decode(raw)
    return sm.Price.of(rec["price"]), sm.Price.of(rec["floor"]), rec["content"]


def test_speed_vendor_add_of_a_product_already_there_is_refused_unless_replace(tmp_path: Path) -> None:
    """Adding a product id the catalogue has already (a typo'd id of another product, or a second try) is refused
    ``exists``, saying its price, floor and content now, and the store keeps them; ``--replace`` puts the new ones in
    and says what it was. Before: exit 0, the price, floor and file silently replaced."""
    vendor = _vendor(tmp_path)
    (tmp_path / "song.txt").write_text("la la")
    (tmp_path / "other.txt").write_text("another song")
    song = "song-1 Blue in Green"
    add = ["speed", "vendor", "add", "--store", vendor, "--product", song]
    made = cardnet(*add, "--price", "2.50 EUR", "--floor", "2.00 EUR", "--file", str(tmp_path / "song.txt"))
    assert made.returncode == 0 and "in place of" not in made.stdout, made

    again = [*add, "--price", "0.10 EUR", "--file", str(tmp_path / "other.txt")]
    err = json_error(cardnet(*again, "--json"))
    assert err["reason"] == "exists", err
    assert err["message"].startswith(f"{song!r} is in the catalogue already: 2.50 EUR, down to 2.00 EUR"), err
    assert "5 bytes" in err["message"] and "not the new file's" in err["message"], err
    assert "--replace" in err["hint"] and "another --product" in err["hint"], err
    assert _stored(vendor, song) == (sm.Price(EUR, 250), sm.Price(EUR, 200), b"la la")  # untouched
    person = cardnet(*again)
    assert person.returncode == 2 and "error: " in person.stderr and "what to do: " in person.stderr, person.stderr

    replaced = cardnet(*again, "--replace", "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(replaced.stdout) | {"message": ""} == {"product": song, "price": "0.10 EUR", "replaced": True,
                                                             "message": ""}  # fmt: skip
    assert "in place of what it was (2.50 EUR, down to 2.00 EUR" in json.loads(replaced.stdout)["message"]
    assert _stored(vendor, song) == (sm.Price(EUR, 10), sm.Price(EUR, 10), b"another song")


def test_ctrl_c_just_after_a_command_printed_its_result_does_not_end_it_by_the_signal() -> None:
    """SIGINT sent as soon as ``cardnet smc functions`` has begun printing its result (then a little later, up to
    20 ms): every run ends with an exit status and words: 0 with the whole result, or, caught while printing, 130 with
    the ``interrupted`` error. Before: most ended by the signal itself during the interpreter's shutdown (killed by
    SIGINT, the shell's 130, not a word), after the result was out."""
    import os
    import signal
    import subprocess
    import sys
    import time

    outcomes = []
    for delay_ms in (0, 0, 1, 1, 2, 2, 3, 5, 8, 12, 20):
        p = subprocess.Popen([sys.executable, "-m", "cardnet.cli.main", "smc", "functions"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert p.stdout is not None
        first = os.read(p.stdout.fileno(), 1).decode()  # the result has begun (unbuffered: communicate reads the rest)
        time.sleep(delay_ms / 1000)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        outcomes.append((p.returncode, first + out, err))
    for code, out, err in outcomes:
        assert code >= 0, f"ended by signal {-code} with nothing said: {err!r}"
        if code == 0:
            assert "median" in out and err == "", (out, err)
        else:
            assert code == 130 and "interrupted" in err and "Traceback" not in err, (code, err)
