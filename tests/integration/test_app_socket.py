"""A host's application socket cannot be taken over by a second host (two real host processes)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from hostprocs import HostProc, make_hosts

from cardnet.bench.procs import ProcError
from cardnet.host.client import AppClient


def _share_socket(b: HostProc, a: HostProc) -> None:
    """Point b's config at a's application socket."""
    text = b.config.read_text().replace(f'app_socket = "{b.name}.sock"', f'app_socket = "{a.name}.sock"')
    assert f'app_socket = "{a.name}.sock"' in text
    b.config.write_text(text)


async def _granted_domain(path: str) -> bytes:
    async with await AppClient.connect(path) as app:
        return app.uid.domain


def test_a_second_host_cannot_take_over_a_live_app_socket(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    _share_socket(b, a)
    try:
        a.start()
        inode = os.stat(a.socket).st_ino
        with pytest.raises(ProcError):
            b.start()  # exits instead of printing ready
        assert b.proc is None or not b.running
        errors = [line for line in b.log().splitlines() if a.socket in line]
        assert errors, b.log()
        assert "running host" in errors[0] and "another app_socket" in errors[0], errors[0]
        assert "Traceback" not in b.log()
        # a's socket is still there, still the one a bound, and still reaches a's card
        assert os.stat(a.socket).st_ino == inode
        assert asyncio.run(_granted_domain(a.socket)) == a.domain
    finally:
        b.stop()
        a.stop()
    assert not os.path.exists(a.socket)  # a removed its own socket when it stopped


def test_a_stale_app_socket_left_by_a_killed_host_is_replaced(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    _share_socket(b, a)
    try:
        a.start()
        a.kill()  # SIGKILL: the socket file stays, nobody listens on it
        assert stat.S_ISSOCK(os.lstat(a.socket).st_mode)
        b.start()
        assert asyncio.run(_granted_domain(a.socket)) == b.domain
        b.stop()
        assert not os.path.exists(a.socket)
    finally:
        b.stop()
        a.stop()
