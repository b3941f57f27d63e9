"""``cardnet host run`` whose ``listen`` address cannot be listened on says why in words and what to do.

Before: ``could not listen on 127.0.0.1:P: [Errno 98] error while attempting to bind on address ('127.0.0.1', P):
address already in use; is the port in use?``, reason ``broken``, no hint.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from hostprocs import make_hosts


def run(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "host", "run", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=60, check=False, cwd=config.parent,
    )  # fmt: skip


def test_a_port_another_process_holds_is_named_in_use_with_what_to_do(tmp_path: Path) -> None:
    (a,) = make_hosts(tmp_path, ["a"], ["echo"])
    with socket.socket() as holder:  # another process's listening socket, as far as the host can tell
        holder.bind(("127.0.0.1", a.port))
        holder.listen()
        r = run(a.config, "--json")
        assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
        err = json.loads(r.stdout)["error"]
        assert err["reason"] == "cannot_listen", err
        assert err["message"] == (
            f'cannot listen on 127.0.0.1:{a.port} (the config\'s listen = "127.0.0.1:{a.port}"): the address is in '
            "use: another process is listening on that port"
        ), err
        assert "stop it, or choose another port in the config's listen" in err["hint"], err

        r = run(a.config)  # a person's words: one error line, one line of what to do
        assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: cannot listen on") and "Errno" not in r.stderr, lines
        assert lines[1].startswith("what to do: another process"), lines
    assert not Path(a.socket).exists()  # the application socket it had bound first is gone again

    # an address that is not this machine's (TEST-NET-1, never assigned)
    a.config.write_text(a.config.read_text().replace(f"127.0.0.1:{a.port}", f"192.0.2.1:{a.port}"))
    err = json.loads(run(a.config, "--json").stdout)["error"]
    assert err["reason"] == "cannot_listen" and "192.0.2.1 is not an address of this machine" in err["message"], err
    assert "an address of this machine" in err["hint"], err
