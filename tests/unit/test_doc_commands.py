"""Every ``cardnet ...`` command the README and docs/*.md show names a real command and real options.

A doc that shows ``--level`` on a command that has no such option, or a command that was renamed, fails
here: the examples are parsed against the click command tree that ``cardnet`` runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cardnet.cli.main import cli, subcommands

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
INLINE = re.compile(r"`(?:[A-Z_][A-Z0-9_]*=\S* )*cardnet ([^`]+)`")


def doc_commands(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, words after cardnet)`` of each command in the file's shell and console blocks, and of each
    inline ``cardnet ...`` in its prose."""
    out: list[tuple[int, list[str]]] = []
    lang: str | None = None
    pending = ""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if m := FENCE.match(line.strip()):
            lang = m.group(1) if lang is None else None
            continue
        if lang is None:
            for m in INLINE.finditer(line):
                words = m.group(1).replace("...", "").split()
                out.append((n, [w for w in words if w not in ("|", "/")]))
            continue
        if lang not in ("sh", "console", "bash", ""):
            continue
        if lang == "console" and not pending and not line.strip().startswith("$ "):
            continue  # (in a console block only `$ ` lines are commands: the rest is what they printed)
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        text = text.removeprefix("$ ")
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            continue
        while words and ENV.match(words[0]):
            words = words[1:]
        if words[:1] == ["cardnet"]:
            out.append((n, [w for w in words[1:] if w not in ("&", "&&")]))
    return out


def resolve(words: list[str]) -> tuple[str, click.Command, list[str]]:
    """The command a list of words names, and the words left for it."""
    command: click.Command = cli
    path = ["cardnet"]
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        if "/" in rest[0]:  # `cardnet trn mint/send/list`: several commands at once, options not checked
            for alt in rest[0].split("/"):
                assert alt in subcommands(command), f"`{' '.join(path)}` has no command {alt!r}"
            return " ".join(path), command, []
        sub = subcommands(command).get(rest[0])
        assert sub is not None, f"`{' '.join(path)}` has no command {rest[0]!r}"
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    return " ".join(path), command, rest


CASES = [(f"{p.name}:{n}", words) for p in DOCS for n, words in doc_commands(p)]


def test_the_docs_show_commands() -> None:
    assert len(CASES) > 50  # the parser finds them (README, host, millicent, trn-walkthrough, ...)


@pytest.mark.parametrize(("where", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_doc_command_names_a_real_command_and_real_options(where: str, words: list[str]) -> None:
    name, command, rest = resolve(words)
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
    if command is cli:
        known |= {"-v", "-vv", "--verbose", "--version"}
    for w in rest:
        if w.startswith("--"):
            assert w.split("=")[0] in known, f"{where}: `{name}` has no option {w}; it has {sorted(known)}"
