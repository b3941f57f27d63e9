"""``cardnet --help``: every command group listed with a whole line that says what it is for, and no group's
module imported to list them (each is imported only when it runs)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from cardnet.cli.main import COMMANDS, SUMMARIES, cli


def test_every_group_has_a_whole_line_in_the_help() -> None:
    assert set(SUMMARIES) == set(COMMANDS)
    out = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    for name, line in SUMMARIES.items():
        assert f"  {name} " in out and line in out, (name, out)
        assert not line.endswith("..."), name


def test_the_help_imports_no_command_group() -> None:
    code = (
        "import sys\n"
        "from cardnet.cli.main import run\n"
        "code = run(['--help'])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('cardnet.cli.'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    imported = set(done.stdout.splitlines()[-1].split())
    assert "cardnet.cli.main" in imported, done.stdout
    groups = {target.partition(":")[0] for target in COMMANDS.values()}
    assert not imported & groups, imported & groups
