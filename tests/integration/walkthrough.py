"""Run a walkthrough page of docs/ for real: every command in order, in an empty folder, with real processes.

The page is parsed, not copied: ``<!-- file: NAME -->`` before a fenced block writes that file; in a
``console`` block, ``$ command`` runs it and the lines after it are output that must appear in what it printed.

* ``export K=V`` sets the environment; a line ending in `` \\`` goes on on the next.
* A command ending in ``&`` starts in the background, as bash job 1, 2, ..., and must print its ``ready``
  line; ``kill %N`` (``; wait %N``) stops job N; ``wait %N`` alone waits for job N to end by itself (it must, and
  with exit status 0 unless an expected line says ``error:``). The lines after its ``ready`` line are what it
  shows later: they are checked once it is stopped or has ended.
* ``…`` elides a line, or a part of one (the parts around it must appear in that order); a table row matches
  cell by cell, ``…`` for any cell; an output line starting ``error:`` (or, under ``--json``, an
  ``"error"`` object) means a non-zero exit.
* Read commands (``reads``) are repeated for a while until their output shows, since transfers and traces take
  a moment.
* Ports 7401-7499 are replaced by free ones, and a test may replace other text of the page (``replace``: in its
  commands, files and expected output alike); not a page's planned start, though: on a loaded machine each command
  takes seconds to start, so a test needs the time the page gives a person (test_smc_walkthrough once planned 10 s
  where the page said 20, and its joins came too late under -n 2). A value that differs every run (an oid a server
  makes, an exchange id) is named before its first use by ``<!-- learn: VALUE -->``: it is learnt from the first output
  line that shows it, and replaced by what was learnt everywhere after.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from forkhost import Forker

from cardnet.bench.procs import free_port, stop_process

WAIT_S = 60.0
COMMANDS = ("cardnet ", "cp ")  # what a page may run (besides export and kill %N)
FRESH_EVERY = 4  # with a forker: every 4th foreground command is a new process all the same (run_page)
SHELL = re.compile(r"[|&;<>()$`*?\[\]{}~!#\\\n]")  # bash would do more than split words (forks: run_page)


@dataclass
class Step:
    kind: str  # "file", "run" or "learn"
    text: str  # file name, command, or a value to learn
    body: list[str] = field(default_factory=list)  # file lines or expected output


@dataclass
class Ran:
    """A command as it ran: the page's text, the text run (ports and learnt values in place) and what it printed."""

    command: str
    shell: str
    printed: str
    returncode: int


def steps(doc: str) -> list[Step]:
    out: list[Step] = []
    fence: str | None = None
    file_name: str | None = None
    for line in doc.splitlines():
        if fence is None:
            if m := re.match(r"<!-- file: (\S+) -->", line):
                file_name = m.group(1)
            elif m := re.match(r"<!-- learn: (.+) -->", line):
                out += [Step("learn", value) for value in m.group(1).split()]
            elif line.startswith("```"):
                fence = line[3:].strip()
                if file_name is not None:
                    out.append(Step("file", file_name))
        elif line.startswith("```"):
            fence, file_name = None, None
        elif file_name is not None:
            out[-1].body.append(line)
        elif fence == "console":
            if out and out[-1].kind == "run" and out[-1].text.endswith("\\") and not out[-1].body:
                out[-1].text = out[-1].text[:-1] + line.strip()  # a command continued on the next line
            elif line.startswith("$ "):
                out.append(Step("run", line[2:]))
            elif line.strip():
                out[-1].body.append(line)
    return out


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│").split("│")]


def _row(expected: list[str], row: list[str]) -> bool:
    """A table row as expected: cell by cell, a cell ``…`` standing for any."""
    return len(expected) == len(row) and all(e in ("…", x) for e, x in zip(expected, row, strict=True))


def _flat(text: str) -> str:
    return " ".join(text.split())


def _in_order(parts: list[str], line: str) -> bool:
    at = 0
    for part in parts:
        found = line.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


def shown(expected: list[str], printed: str) -> list[str]:
    """The expected lines missing from ``printed`` (empty: all there)."""
    lines = printed.splitlines()
    flat = [_flat(x) for x in lines]
    missing = []
    for e in expected:
        if e.strip() == "…":
            continue
        if "│" in e:
            ok = any(_row(cells(e), cells(x)) for x in lines if "│" in x)
        else:
            parts = [_flat(p) for p in e.split("…")]
            ok = any(_in_order(parts, x) for x in flat)
        if not ok:
            missing.append(e)
    return missing


class Learnt:
    """Values that differ every run: the page's value -> this run's, once an output line showed it."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.values: dict[str, str] = {}

    def apply(self, text: str) -> str:
        for page, run in self.values.items():
            text = text.replace(page, run)
        return text

    def learn(self, expected: list[str], printed: str) -> None:
        """Bind every pending value that ``expected`` names to what ``printed`` shows in its place."""
        flat = [_flat(x) for x in printed.splitlines()]
        for e in expected:
            names = [v for v in self.pending if v in e]
            if not names or "│" in e:
                continue
            pattern = re.escape(_flat(e.split("…")[0]))
            for v in names:
                pattern = pattern.replace(re.escape(v), f"([0-9a-f]{{{len(v)}}})", 1)
            order = sorted(names, key=e.index)
            for x in flat:
                if m := re.search(pattern, x):
                    for v, got in zip(order, m.groups(), strict=True):
                        self.values[v] = got
                        self.pending.discard(v)
                    break


def run_page(
    doc_path: Path,
    folder: Path,
    *,
    reads: tuple[str, ...],
    min_commands: int,
    replace: dict[str, str] | None = None,
    forker: Forker | None = None,
) -> list[Ran]:
    """Run every step of the page ``doc_path`` in ``folder`` (see the module); what each command printed.

    With a ``forker`` (tests/integration/forkhost.py), a ``cardnet`` command run in the foreground that bash would
    only split into words (no quoting but quotes, no redirection, pipe, variable or pattern) runs as a fork of the
    forker, not as a new Python process importing cardnet, but for every ``FRESH_EVERY``-th command run, which
    bash runs as before: the same arguments to the same entry point, its own process, its exit status and output.
    """
    doc = doc_path.read_text(encoding="utf-8")
    name = f"docs/{doc_path.name}"
    for page, run in (replace or {}).items():
        assert page in doc, f"{name} no longer says {page!r}: the test's replace is stale"
        doc = doc.replace(page, run)
    ports = {p: str(free_port()) for p in sorted(set(re.findall(r"127\.0\.0\.1:(74\d\d)", doc)))}
    learnt = Learnt()

    def local(text: str) -> str:
        text = re.sub(r"127\.0\.0\.1:(74\d\d)", lambda m: "127.0.0.1:" + ports[m.group(1)], text)
        return learnt.apply(text)

    cardnet = f"{shlex.quote(sys.executable)} -m cardnet.cli.main"
    env = {**os.environ, "COLUMNS": "250"}
    jobs: dict[int, tuple[subprocess.Popen[str], Path, list[str], str]] = {}
    ran: list[Ran] = []
    runs = 0  # foreground commands run (a read repeated counts each time)

    def stop(number: int, *, wait: bool = False) -> None:
        proc, log, expected, command = jobs.pop(number)
        if wait:
            try:
                code = proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                stop_process(proc)
                raise AssertionError(
                    f"{name}: `{command}` did not end within {WAIT_S:.0f} s:\n{log.read_text()}"
                ) from None
            failing = any(e.startswith("error:") for e in expected)
            assert (code != 0) == failing, f"{name}: `{command}` ended with exit {code}:\n{log.read_text()}"
        stop_process(proc)
        printed = log.read_text()
        missing = shown([learnt.apply(e) for e in expected], printed)
        assert not missing, f"{name} is stale at `{command}` (shown later):\n{printed}\n--- missing:\n" + "\n".join(
            missing
        )

    try:
        for step in steps(doc):
            if step.kind == "file":
                (folder / step.text).write_text(local("\n".join(step.body)) + "\n")
                continue
            if step.kind == "learn":
                learnt.pending.add(step.text)
                continue
            command = step.text
            if m := re.fullmatch(r"export (\w+)=(\S+)", command):
                env[m.group(1)] = m.group(2)
                continue
            if m := re.fullmatch(r"kill %(\d+)(?:; wait %\1)?", command):
                stop(int(m.group(1)))
                continue
            if m := re.fullmatch(r"wait %(\d+)", command):
                stop(int(m.group(1)), wait=True)
                continue
            assert command.startswith(COMMANDS), command
            shell = local(command)
            if shell.startswith("cardnet "):
                shell = cardnet + shell[len("cardnet") :]
            expected = [local(e) for e in step.body]
            if shell.endswith("&"):
                number = max(jobs, default=0) + 1  # as bash numbers its jobs
                log = folder / f"job{len(ran)}.out"
                with open(log, "w") as out, open(folder / f"job{len(ran)}.err", "w") as err:  # the child keeps its own
                    proc = subprocess.Popen(
                        ["bash", "-c", "exec " + shell[:-1]], cwd=folder, env=env, stdout=out, stderr=err,
                        stdin=subprocess.DEVNULL, text=True,
                    )  # fmt: skip
                jobs[number] = (proc, log, expected[1:], command)
                line = _first_line(proc, log, WAIT_S)
                assert not shown(expected[:1], line), f"{command}\nprinted: {line!r}\nexpected: {expected[:1]}"
                learnt.learn(expected[:1], line)
                ran.append(Ran(command, shell, line, 0))
                continue
            deadline = time.monotonic() + (WAIT_S if any(r in f" {command} " for r in reads) else 0)
            while True:
                runs += 1
                if (
                    forker is not None
                    and runs % FRESH_EVERY
                    and shell.startswith(cardnet + " ")
                    and not SHELL.search(shell[len(cardnet) :])
                ):
                    code, out, err = forker.run(shlex.split(shell)[3:], env, str(folder), 120.0)
                    r = subprocess.CompletedProcess(shell, code, out, err)
                else:
                    r = subprocess.run(
                        ["bash", "-c", shell], cwd=folder, env=env, capture_output=True, text=True, timeout=120,
                        check=False,
                    )  # fmt: skip
                printed = r.stdout + r.stderr
                learnt.learn(expected, printed)
                expected = [learnt.apply(e) for e in expected]
                missing = shown(expected, printed)
                failing = any(e.startswith("error:") or e.strip().startswith('"error": {') for e in expected)
                if not missing and (r.returncode != 0) == failing:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{name} is stale at `{command}` (exit {r.returncode}):\n"
                        f"--- printed:\n{printed}\n--- missing:\n" + "\n".join(missing)
                    )
                time.sleep(0.3)
            assert "Traceback" not in printed, printed
            ran.append(Ran(command, shell, printed, r.returncode))
        for number in sorted(jobs):
            stop(number)
    finally:
        for proc, *_ in jobs.values():
            stop_process(proc)
    assert not learnt.pending, f"{name}: never learnt {sorted(learnt.pending)}"
    assert len(ran) >= min_commands, f"only {len(ran)} commands found: did {name} lose its console blocks?"
    return ran


def _first_line(proc: subprocess.Popen[str], log: Path, timeout_s: float) -> str:
    """The first line a background command printed (to ``log``), once it has; its exit fails the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if "\n" in text:
            return text.split("\n", 1)[0]
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before its first line: {text!r}")
        time.sleep(0.02)
    raise AssertionError(f"no line within {timeout_s} s")
