"""`cardnet smc join` says what is wrong before it waits: a run file whose first round has passed (the join
deadline) is refused (`too_late`, the deadline printed, with what to do) unless the party's module is in the run
already (an earlier join, stopped): then the join follows it to its result. A host it cannot reach: `too_late`.
A join whose module ends the run with no result (it took no part: too few members joined) fails too, in words and
as one JSON error. docs/smc-walkthrough.md shows the rest (the first line a join prints, the parties that joined,
why a module has no result)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import forkhost
import pytest

from cardnet.bench.smcnet import PIN, SmcNet

UIDS = ("a11ce0a11ce0a11ce0a11ce0:00000000", "b0b000b0b000b0b000b0b000:00000000")


def cardnet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def plan(tmp_path: Path, round_ms: str) -> Path:
    """A run file whose first round is now (``--start-in 0``): any join after this is past the deadline."""
    run = tmp_path / "run.toml"
    planned = cardnet("smc", "plan", "-f", "median", "-m", UIDS[0], "-m", UIDS[1], "--start-in", "0",
                      "--round-ms", round_ms, "--out", str(run))  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    return run


def test_a_run_that_started_is_refused_at_once_with_what_to_do(tmp_path: Path) -> None:
    run = plan(tmp_path, "1")
    nowhere = str(tmp_path / "no-host.sock")  # no host to ask whether its module is in the run: too_late
    r = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5", "--json")
    err = json.loads(r.stdout)["error"]
    assert r.returncode != 0 and err["reason"] == "too_late", r
    assert "before the first round" in err["message"] and "cardnet smc plan" in err["hint"], err
    words = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5")
    assert "Traceback" not in words.stderr and "what to do: the run's first round had passed" in words.stderr


def test_a_join_after_the_deadline_is_refused_even_while_the_rounds_still_run(tmp_path: Path) -> None:
    """The deadline is the first round (the one `join` announces), not the end of the run: with rounds of ten
    minutes the run is still going, yet a join now could only be cut off (the other modules began without it), so
    it is refused `too_late` at once, naming when the run began, instead of trying."""
    run = plan(tmp_path, "600000")
    start_at = float(tomllib.loads(run.read_text())["start_at"])
    began = datetime.fromtimestamp(start_at, UTC).strftime("%H:%M:%S UTC")
    nowhere = str(tmp_path / "no-host.sock")  # never reached
    r = cardnet("smc", "join", "--run", str(run), "--socket", nowhere, "--pin", "1234", "-i", "5", "--json")
    err = json.loads(r.stdout)["error"]
    assert r.returncode != 0 and err["reason"] == "too_late", r
    assert f"began at {began}" in err["message"] and "every member had to join by then" in err["message"], err


def test_a_run_file_that_is_not_there_says_which_file_join_wants(tmp_path: Path) -> None:
    """`smc join --run` naming no file (a typo, or the plan never copied here): the error names the path and the hint
    the file `smc plan --out` writes. Before: 'cannot read the run file ...: No such file or directory', no hint."""
    missing = tmp_path / "salaries.tom"
    join = ("smc", "join", "--run", str(missing), "--socket", str(tmp_path / "h.sock"), "--pin", "1234", "-i", "5")
    r = cardnet(*join, "--json")
    err = json.loads(r.stdout)["error"]
    assert r.returncode == 2 and err["reason"] == "no_file" and str(missing) in err["message"], r
    assert "check --run" in err["hint"] and "cardnet smc plan --out FILE" in err["hint"], err
    words = cardnet(*join)
    assert "Traceback" not in words.stderr and "what to do: check --run" in words.stderr, words.stderr


def test_every_plan_option_says_what_it_is() -> None:
    text = cardnet("smc", "plan", "--help").stdout
    assert "--rho-max" in text and "Fake rounds are 0..rho-max" in " ".join(text.split())


def test_plan_mistakes_are_refused_in_words_and_write_nothing(tmp_path: Path) -> None:
    """A module card given twice with -m, an application's Uid, a negative --start-in, --round-ms 0, and --out in a
    folder that does not exist: each refused (exit 2) saying what was wrong and what to do, no run file written.
    Before: the card given twice made a run file (exit 0); 'cannot write ...: No such file or directory', no hint."""
    out = tmp_path / "run.toml"
    twice = ("-m", UIDS[0], "-m", UIDS[0], "-m", UIDS[1])
    own = "each party is a module card of its own, on a host of its own"
    cases: list[tuple[tuple[str, ...], str, str]] = [
        ((*twice, "--out", str(out)), f"{UIDS[0]} given more than once with -m: {own}",
         "give each party's module card once"),
        (("-m", UIDS[0], "-m", UIDS[1], "--start-in", "-5", "--out", str(out)),
         "Invalid value for '--start-in': -5.0 is not in the range x>=0.", "cardnet smc plan --help"),
        (("-m", UIDS[0], "-m", UIDS[1], "--round-ms", "0", "--out", str(out)),
         "Invalid value for '--round-ms': 0.0 is not in the range x>0.", "cardnet smc plan --help"),
        (("-m", UIDS[0], "-m", UIDS[1], "--out", str(tmp_path / "no" / "run.toml")),
         f"cannot write the run file {tmp_path / 'no' / 'run.toml'}: the folder {tmp_path / 'no'} does not exist",
         "create the folder first"),
    ]  # fmt: skip
    for args, message, hint in cases:
        r = cardnet("smc", "plan", "-f", "median", *args, "--json")
        err = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and err["message"] == message and hint in err["hint"], (args, err)
        words = cardnet("smc", "plan", "-f", "median", *args)
        assert words.returncode == 2 and message in words.stderr and "Traceback" not in words.stderr
    app = UIDS[0][:-1] + "1"
    r = cardnet("smc", "plan", "-f", "median", "-m", app, "-m", UIDS[1], "--out", str(out))
    assert r.returncode == 2 and f"{app} is an application's Uid: give the module card's" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_input_the_function_cannot_take_says_what_to_give(tmp_path: Path) -> None:
    """`smc run -i abc` and `smc join -i abc` for median (integers): reason bad_input, the message says what it
    expects and the hint what to do (before: no hint), before any host or PIN."""
    run = tmp_path / "run.toml"
    assert cardnet("smc", "plan", "-f", "median", "-m", UIDS[0], "-m", UIDS[1], "--out", str(run)).returncode == 0
    for argv in (("smc", "run", "-f", "median", "-i", "abc", "-i", "2", "-i", "3"),
                 ("smc", "join", "--run", str(run), "--socket", str(tmp_path / "h.sock"), "-i", "abc")):  # fmt: skip
        r = cardnet(*argv, "--json")
        err = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and err["reason"] == "bad_input" and "expected an integer" in err["message"], err
        assert err["hint"] and "cardnet smc functions" in err["hint"], err


def test_every_reason_join_fails_for_says_what_to_do() -> None:
    from cardnet.cli.smc import JOIN_HINTS

    assert set(JOIN_HINTS) >= {"no_host", "wrong_pin", "not_a_member", "restarted", "too_late", "terms_differ"}


def test_a_join_whose_module_took_no_part_fails_saying_why(tmp_path: Path) -> None:
    """Two module hosts, a run of both (n = 2, t = 0: both must join), and only the first joins: at the first round
    its module takes no part (``out``) and has no result. `smc join` fails (exit 2, reason ``no_decision``, one
    JSON error under --json) saying so and what to do, as `smc run` does, instead of exiting 0. A second run
    shows the same to a person."""
    import os

    # The join is a fork of a forker that imported cardnet (tests/integration/forkhost.py: the same arguments through
    # the same entry point, its own process), ready in a fraction of a second: the run starts 2 s after it is
    # planned, not 5 (a join after the first round is refused too_late, and fails the test).
    with SmcNet(tmp_path, 2) as net, forkhost.forker((*forkhost.CLI_MODULES, "cardnet.cli.smc")) as f:
        env = {**os.environ, "CARDNET_PIN": PIN}
        me = net.hosts[0]
        for n, as_json in enumerate((True, False)):
            run = tmp_path / f"run{n}.toml"
            members = [a for u in net.uids for a in ("-m", str(u))]
            planned = cardnet("smc", "plan", "-f", "median", *members, "--start-in", "2", "--round-ms", "100",
                              "--out", str(run))  # fmt: skip
            assert planned.returncode == 0, planned.stderr
            args = ["smc", "join", "--run", str(run), "--socket", me.socket, "--card", me.domain.hex(), "-i", "5"]
            args += ["--json"] if as_json else []
            r = subprocess.CompletedProcess(args, *f.run(args, env, str(tmp_path), 60.0))
            assert r.returncode == 2 and "Traceback" not in r.stderr, r
            if as_json:
                got = json.loads(r.stdout)  # the error alone, no report
                assert set(got) == {"error"}, got
                err = got["error"]
                assert err["reason"] == "no_decision", err
                assert err["message"].startswith("module 0 of run ") and " ended out with no result" in err["message"]
                assert "fewer than n - t = 2 of the 2 members had joined" in err["message"], err
                assert "cardnet smc plan" in err["hint"] and "at least 2 members" in err["hint"], err
            else:
                assert "only 1 of 2 members joined by the start" in r.stdout, r
                assert "error: module 0 of run " in r.stderr and "ended out with no result" in r.stderr, r
                assert "what to do: plan a new run" in r.stderr, r


def test_a_join_interrupted_after_giving_its_input_is_taken_up_by_the_next_join(tmp_path: Path) -> None:
    """Ctrl-C on `smc join` once its module has the party's input leaves the module joined, with its input, and no
    one to drive its rounds. Joining again before the first round (what a person does) goes on with that input and
    prints the result, instead of the module's refusal of a second input (``input_given``, no next step) and a run
    that goes on without this party."""
    import asyncio
    import os
    import signal
    import time

    from cardnet.cli.smc import _read_run
    from cardnet.services.smc.controller import Module, Party

    with SmcNet(tmp_path, 2) as net:
        env = {**os.environ, "CARDNET_PIN": PIN}
        run = tmp_path / "run.toml"
        members = [a for u in net.uids for a in ("-m", str(u))]
        planned = cardnet("smc", "plan", "-f", "median", *members, "--start-in", "10", "--round-ms", "100",
                          "--out", str(run))  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        spec = _read_run(str(run))[0]

        def join(i: int, value: str) -> subprocess.Popen[str]:
            hp = net.hosts[i]
            args = ["smc", "join", "--run", str(run), "--socket", hp.socket, "--card", hp.domain.hex(), "-i", value]
            return subprocess.Popen([sys.executable, "-m", "cardnet.cli.main", *args], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

        async def has_input(i: int) -> bool:
            module = await Module.open(net.hosts[i].socket, pin=PIN, card=net.hosts[i].domain)
            try:
                return bool((await Party(module, spec).status()).get("has_input"))
            except Exception:  # (no such run on the card yet)
                return False
            finally:
                await module.close()

        other, first = join(1, "61"), join(0, "52")
        deadline = time.monotonic() + 8
        while not asyncio.run(has_input(0)):
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.1)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = first.communicate(timeout=30)
        assert first.returncode == 130 and "what to do: join again before the first round" in err, (out, err)
        again = join(0, "52")
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, (out, err)
        assert "has its input for this run already" in out and "module 0: median = 52 of 2 inputs" in out, out
        out, err = other.communicate(timeout=60)
        assert other.returncode == 0 and "module 1: median = 52 of 2 inputs" in out, (out, err)


@pytest.mark.parametrize("held", [False, True], ids=["after_the_run", "while_it_waits"])
def test_a_join_interrupted_after_the_first_round_is_followed_to_its_result_by_the_next_join(
    tmp_path: Path, held: bool
) -> None:
    """Ctrl-C on `smc join` after its module ticked the first round: the module is still in the run (it ends a
    round by itself once the others' frames are in, and its frames travel card to card through its host without the
    CLI), so it computes the result, but nobody shows it. Joining again with the same run file (what a person does)
    follows the module's run and prints that result, giving no input, instead of the refusal ``too_late`` (which
    said the member could no longer take part). A join whose module never joined the run is still refused
    ``too_late``, saying so. ``while_it_waits``: the join comes while the run waits for the other member (held
    before its first round); it says the module is at tick 1, and prints the result once the run goes on."""
    import os
    import signal
    import time

    from cardnet.cli.smc import _read_run
    from cardnet.services.smc.controller import Module, Party

    with SmcNet(tmp_path, 2) as net:
        env = {**os.environ, "CARDNET_PIN": PIN}
        run = tmp_path / "run.toml"
        members = [a for u in net.uids for a in ("-m", str(u))]
        # rounds of 10 s (the deadlines never come: the modules end each round once its frames are in), no fake rounds
        planned = cardnet("smc", "plan", "-f", "median", *members, "--start-in", "10", "--round-ms", "10000",
                          "--rho-max", "0", "--out", str(run))  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        spec = _read_run(str(run))[0]

        def join(i: int, value: str, *extra: str) -> subprocess.Popen[str]:
            hp = net.hosts[i]
            args = ["smc", "join", "--run", str(run), "--socket", hp.socket, "--card", hp.domain.hex(), "-i", value]
            return subprocess.Popen([sys.executable, "-m", "cardnet.cli.main", *args, *extra], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

        def state(i: int) -> dict[str, object]:
            async def ask() -> dict[str, object]:
                module = await Module.open(net.hosts[i].socket, pin=PIN, card=net.hosts[i].domain)
                try:
                    return await Party(module, spec).status()
                except Exception:  # (no such run on the card yet)
                    return {}
                finally:
                    await module.close()

            return asyncio.run(ask())

        def until(what: str, ok: Callable[[], bool], *procs: subprocess.Popen[str]) -> None:
            deadline = time.monotonic() + 20
            while not ok():
                assert time.monotonic() < deadline, what
                for p in procs:
                    assert p.poll() is None, (what, p.communicate())
                time.sleep(0.05)

        other, first = join(1, "61"), join(0, "52")
        until("module 1 has its input", lambda: bool(state(1).get("has_input")), other, first)
        other.send_signal(signal.SIGSTOP)  # its Clock holds module 1 before the first round: the run waits for it
        try:
            until("module 0 ticked the first round", lambda: int(str(state(0).get("ticks", 0))) >= 1, first)
            first.send_signal(signal.SIGINT)  # Ctrl-C after the first round
            out, err = first.communicate(timeout=30)
            assert first.returncode == 130 and "interrupted" in err and "module 0:" not in out, (out, err)
            assert "after it, join again to follow the module's run to its result" in err, err
            if held:  # joined again while module 1 is held: module 0 is at its first tick, the join follows it
                again = join(0, "52")
                assert again.stdout is not None
                said = again.stdout.readline()
                assert "is in it with the input an earlier join gave it, at tick 1 of 3" in said, said
        finally:
            other.send_signal(signal.SIGCONT)
        out, err = other.communicate(timeout=60)  # module 0 took part with no CLI of its own running
        assert other.returncode == 0 and "module 1: median = 52 of 2 inputs" in out, (out, err)
        if not held:  # joined again after the run: module 0 finished it with no CLI (frames through its host alone)
            again = join(0, "52")
        out, err = again.communicate(timeout=60)
        assert again.returncode == 0, (out, err)
        assert held or "is in it with the input an earlier join gave it, at tick 3 of 3" in out, out
        assert "module 0: median = 52 of 2 inputs" in out, out
        as_json = join(0, "52", "--json")
        out, err = as_json.communicate(timeout=60)
        report = json.loads(out)
        assert as_json.returncode == 0 and report["followed"] is True and report["status"] == "decided", (out, err)
        assert report["result"] is not None and report["module"] == 0, report

        # a run module 0 never joined, past its first round: refused too_late, its host asked and saying so
        never = tmp_path / "never.toml"
        planned = cardnet("smc", "plan", "-f", "median", *members, "--start-in", "0", "--out", str(never))
        assert planned.returncode == 0, planned.stderr
        hp = net.hosts[0]
        r = cardnet("smc", "join", "--run", str(never), "--socket", hp.socket, "--card", hp.domain.hex(), "-i", "5",
                    "--json", env=env)  # fmt: skip
        err = json.loads(r.stdout)["error"]
        assert r.returncode != 0 and err["reason"] == "too_late", r
        assert "module 0 never joined it" in err["message"] and "cardnet smc plan" in err["hint"], err


@pytest.mark.parametrize("start_in", ["0", "600"], ids=["late", "in_time"])
def test_the_host_is_checked_before_the_pin_is_asked_for(tmp_path: Path, start_in: str) -> None:
    """No --pin and no $CARDNET_PIN: `smc join` would ask for the PIN. With no host at --socket it says so first
    (``too_late`` for a run that began, its deadline alone decides; ``no_host`` before it), instead of asking for a
    PIN that could only be typed for nothing. (Here stdin is no terminal: asking would fail ``no_pin``.)"""
    import os

    run = tmp_path / "run.toml"
    planned = cardnet("smc", "plan", "-f", "median", "-m", UIDS[0], "-m", UIDS[1], "--start-in", start_in,
                      "--out", str(run))  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    env = {k: v for k, v in os.environ.items() if k != "CARDNET_PIN"}
    nowhere = str(tmp_path / "no-host.sock")
    args = ["smc", "join", "--run", str(run), "--socket", nowhere, "-i", "5", "--json"]
    r = subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True,
                       timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
    err = json.loads(r.stdout)["error"]
    assert r.returncode == 2 and err["reason"] == ("too_late" if start_in == "0" else "no_host"), r
    assert "PIN" not in err["message"], err


def test_a_run_the_module_dropped_to_make_room_says_so_and_what_to_do(tmp_path: Path) -> None:
    """A module keeps 8 runs in memory at once; a 9th prepared on it drops the oldest. Joining the dropped run again
    is refused ``made_room`` in those words (the module made room for newer runs, nothing restarted), with what to
    do, instead of ``restarted``: the host never restarted."""
    import os

    from cardnet.applets.smc import MAX_RUNS
    from cardnet.cli.smc import _read_run
    from cardnet.protocols.smc.functions import MEDIAN
    from cardnet.services.smc.controller import Module, Party

    with SmcNet(tmp_path, 2) as net:
        run = tmp_path / "run.toml"
        members = [a for u in net.uids for a in ("-m", str(u))]
        planned = cardnet("smc", "plan", "-f", "median", *members, "--start-in", "600", "--out", str(run))
        assert planned.returncode == 0, planned.stderr
        me = net.hosts[0]
        terms = _read_run(str(run))[0].terms
        assert terms.code_hash == MEDIAN.code_hash

        async def crowd() -> None:  # the planned run, then 8 newer ones, prepared on module 0 (no join from m1)
            module = await Module.open(me.socket, pin=PIN, card=me.domain)
            try:
                for spec in [_read_run(str(run))[0], *(net.spec(terms) for _ in range(MAX_RUNS))]:
                    await Party(module, spec).prepare(0.0)
            finally:
                await module.close()

        asyncio.run(crowd())
        env = {**os.environ, "CARDNET_PIN": PIN}
        args = ["smc", "join", "--run", str(run), "--socket", me.socket, "--card", me.domain.hex(), "-i", "5"]
        r = cardnet(*args, "--json", env=env)
        err = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and err["reason"] == "made_room", r
        assert "to make room for newer runs" in err["message"] and "restarted" not in err["message"], err
        assert "plan a new run" in err["hint"] and "no more than 8 runs" in err["hint"], err
        words = cardnet(*args, env=env)
        assert "Traceback" not in words.stderr and "what to do: plan a new run" in words.stderr, words


def test_a_late_join_whose_module_is_not_in_the_run_asks_for_no_pin(tmp_path: Path) -> None:
    """After the first round a join only follows a module already in the run. Whether it is, the module says
    without the PIN to its own host's applications (`smc.known`), so a late join whose module never joined is
    refused ``too_late`` (the module never joined it) before any PIN is asked for. (Here stdin is no terminal and
    no PIN is given: asking would fail ``no_pin``.) The same join to a module that holds the run asks for the PIN."""
    import os

    with SmcNet(tmp_path, 2) as net:
        me = net.hosts[0]
        run = tmp_path / "run.toml"
        members = [a for u in net.uids for a in ("-m", str(u))]
        planned = cardnet("smc", "plan", "-f", "median", *members, "--start-in", "0", "--round-ms", "600000",
                          "--out", str(run))  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        env = {k: v for k, v in os.environ.items() if k != "CARDNET_PIN"}
        args = ["smc", "join", "--run", str(run), "--socket", me.socket, "--card", me.domain.hex(), "-i", "5"]
        r = subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args, "--json"], capture_output=True,
                           text=True, timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
        err = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and err["reason"] == "too_late", r
        assert "module 0 never joined it" in err["message"] and "cardnet smc plan" in err["hint"], err

        async def prepare() -> None:  # now the module holds the run (as after an earlier join, stopped)
            from cardnet.cli.smc import _read_run
            from cardnet.services.smc.controller import Module, Party

            module = await Module.open(me.socket, pin=PIN, card=me.domain)
            try:
                await Party(module, _read_run(str(run))[0]).prepare(0.0)
            finally:
                await module.close()

        asyncio.run(prepare())
        r = subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args, "--json"], capture_output=True,
                           text=True, timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
        err = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and err["reason"] == "no_pin", r  # the module is in the run: the PIN is needed

        other = tmp_path / "other.toml"  # a run of other cards: this card is no member, said before the PIN too
        planned = cardnet("smc", "plan", "-f", "median", "-m", UIDS[0], "-m", UIDS[1], "--start-in", "600",
                          "--out", str(other))  # fmt: skip
        assert planned.returncode == 0, planned.stderr
        args[3] = str(other)
        r = subprocess.run([sys.executable, "-m", "cardnet.cli.main", *args, "--json"], capture_output=True,
                           text=True, timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
        err = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and err["reason"] == "not_a_member", r


def test_a_party_whose_clock_is_late_by_a_busy_moment_still_takes_part(tmp_path: Path) -> None:
    """Three parties join a run planned with the default round deadline; carol's `smc join` is stopped (SIGSTOP)
    from just before the first round to 0.3 s after it, as a loaded machine holds a process back. Every module
    still decides the median of all three inputs. Before, the default round was 100 ms: alice's and bob's modules
    ended the first round without carol's frame and decided without her input, and carol's halted ("cut off"), as
    docs/smc-walkthrough.md's salaries run did under -n 2."""
    import os
    import signal
    import time

    with SmcNet(tmp_path, 3) as net:
        env = {**os.environ, "CARDNET_PIN": PIN}
        run = tmp_path / "run.toml"
        members = [a for u in net.uids for a in ("-m", str(u))]
        planned = cardnet("smc", "plan", "-f", "median", *members, "--start-in", "20", "--out", str(run))
        assert planned.returncode == 0, planned.stderr
        start_at = tomllib.loads(run.read_text())["start_at"]
        joins = []
        for hp, value in zip(net.hosts, ("52", "61", "47"), strict=True):
            args = ["smc", "join", "--run", str(run), "--socket", hp.socket, "--card", hp.domain.hex(), "-i", value]
            joins.append(subprocess.Popen([sys.executable, "-m", "cardnet.cli.main", *args], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
        carol = joins[2]
        try:
            time.sleep(max(0.0, start_at - 0.2 - time.time()))
            carol.send_signal(signal.SIGSTOP)
            time.sleep(max(0.0, start_at + 0.3 - time.time()))
        finally:
            carol.send_signal(signal.SIGCONT)
        printed = [p.communicate(timeout=60) for p in joins]
    for i, (p, (out, err)) in enumerate(zip(joins, printed, strict=True)):
        assert p.returncode == 0, (i, out, err)
        assert f"module {i}: median = 52 of 3 inputs (none missing)" in out, (i, out, err)
