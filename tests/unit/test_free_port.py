"""free_port: ports for processes that bind later, outside the ephemeral range, never handed out twice."""

from __future__ import annotations

import socket

import pytest

from cardnet.bench import procs


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    ports = [procs.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(procs.PORT_RANGE[0] <= p < procs.PORT_RANGE[1] for p in ports)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    assert max(ports) < low


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy, socket.socket() as probe:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()  # free again: the one that may be handed out
        picks = iter([taken, taken, free])
        monkeypatch.setattr(procs._pick, "randrange", lambda a, b: next(picks))
        assert procs.free_port() == free
