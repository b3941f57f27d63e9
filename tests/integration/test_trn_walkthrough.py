"""docs/trn-walkthrough.md, run for real: every command in order, in an empty folder, with real host processes.

The page is parsed, not copied: ``<!-- file: NAME -->`` before a fenced block writes that file; in a
``console`` block, ``$ command`` runs it (``export K=V`` sets the environment; a command ending in ``&`` starts
in the background and must print its ``ready`` line) and the lines after it are output that must appear in
what it printed (``…`` elides; a table row matches cell by cell; output starting ``error:`` means a non-zero
exit). Read commands (``trn list``, ``authority chain``) are repeated for a while until their output shows,
since transfers and traces take a moment. Ports 7401-7404 are replaced by free ones.
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

from cardnet.bench.procs import free_port, readline, stop_process

DOC = Path(__file__).resolve().parents[2] / "docs" / "trn-walkthrough.md"
WAIT_S = 60.0
READS = (" trn list ", " authority chain ")


@dataclass
class Step:
    kind: str  # "file" or "run"
    text: str  # file name or command
    body: list[str] = field(default_factory=list)  # file lines or expected output


def steps(doc: str) -> list[Step]:
    out: list[Step] = []
    fence: str | None = None
    file_name: str | None = None
    for line in doc.splitlines():
        if fence is None:
            if m := re.match(r"<!-- file: (\S+) -->", line):
                file_name = m.group(1)
            elif line.startswith("```"):
                fence = line[3:].strip()
                if file_name is not None:
                    out.append(Step("file", file_name))
        elif line.startswith("```"):
            fence, file_name = None, None
        elif file_name is not None:
            out[-1].body.append(line)
        elif fence == "console":
            if line.startswith("$ "):
                out.append(Step("run", line[2:]))
            elif line.strip():
                out[-1].body.append(line)
    return out


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│").split("│")]


def shown(expected: list[str], printed: str) -> list[str]:
    """The expected lines missing from ``printed`` (empty: all there)."""
    lines = printed.splitlines()
    flat = [" ".join(x.split()) for x in lines]
    missing = []
    for e in expected:
        if e.strip() == "…":
            continue
        if "│" in e:
            ok = any(cells(e) == cells(x) for x in lines if "│" in x)
        else:
            want = " ".join(e.split("…")[0].split())
            ok = any(want in x for x in flat)
        if not ok:
            missing.append(e)
    return missing


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    doc = DOC.read_text(encoding="utf-8")
    ports = {p: str(free_port()) for p in sorted(set(re.findall(r"127\.0\.0\.1:(74\d\d)", doc)))}

    def local(text: str) -> str:
        return re.sub(r"127\.0\.0\.1:(74\d\d)", lambda m: "127.0.0.1:" + ports[m.group(1)], text)

    cardnet = f"{shlex.quote(sys.executable)} -m cardnet.cli.main"
    env = {**os.environ, "COLUMNS": "250"}
    background: list[subprocess.Popen[str]] = []
    ran = 0
    try:
        for step in steps(doc):
            if step.kind == "file":
                (tmp_path / step.text).write_text(local("\n".join(step.body)) + "\n")
                continue
            command = step.text
            if m := re.fullmatch(r"export (\w+)=(\S+)", command):
                env[m.group(1)] = m.group(2)
                continue
            assert command.startswith("cardnet "), command
            shell = cardnet + command[len("cardnet") :]
            expected = [local(e) for e in step.body]
            ran += 1
            if shell.endswith("&"):
                with open(tmp_path / f"background{len(background)}.log", "w") as log:  # the child keeps its own
                    proc = subprocess.Popen(
                        ["bash", "-c", "exec " + shell[:-1]], cwd=tmp_path, env=env,
                        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                    )  # fmt: skip
                background.append(proc)
                line = readline(proc, WAIT_S)
                assert not shown(expected, line), f"{command}\nprinted: {line!r}\nexpected: {expected}"
                continue
            deadline = time.monotonic() + (WAIT_S if any(r in f" {command} " for r in READS) else 0)
            while True:
                r = subprocess.run(
                    ["bash", "-c", shell],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                printed = r.stdout + r.stderr
                missing = shown(expected, printed)
                failing = bool(expected) and expected[0].startswith("error:")
                if not missing and (r.returncode != 0) == failing:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"docs/trn-walkthrough.md is stale at `{command}` (exit {r.returncode}):\n"
                        f"--- printed:\n{printed}\n--- missing:\n" + "\n".join(missing)
                    )
                time.sleep(0.3)
            assert "Traceback" not in printed, printed
    finally:
        for proc in background:
            stop_process(proc)
    assert ran >= 30, f"only {ran} commands found: did the page lose its console blocks?"
