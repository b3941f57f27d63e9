"""What the bill deadline tests share: a ticketing world whose bills are due within seconds, and ``cardnet speed ...
--json`` as a process beside it (the world runs in the test's own event loop:
:meth:`cardnet.bench.ticketnet.TicketNet.in_process`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cardnet.bench.ticketnet import TicketNet
from cardnet.bench.trnnet import PIN
from cardnet.crypto import pki

PAY_WITHIN_S = 3
MARGIN_S = 1


def deadline_net(tmp_path: Path, buyers: tuple[str, ...], seats: list[str]) -> TicketNet:
    """A :class:`TicketNet` whose server bills with ``pay_within_s`` :data:`PAY_WITHIN_S` and ``release_margin_s``
    :data:`MARGIN_S`, with the broker's certificate (``broker.pem``) and the CA (``ca.pem``) in ``tmp_path`` for the
    ``cardnet speed`` commands."""
    net = TicketNet(tmp_path, buyers, seats)
    cfg = net.hosts["tickets"].config
    cfg.write_text(cfg.read_text().replace(
        "transfer_timeout_s", f"pay_within_s = {PAY_WITHIN_S}\nrelease_margin_s = {MARGIN_S}\ntransfer_timeout_s"
    ))  # fmt: skip
    (tmp_path / "broker.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(net.broker_cert)]))
    (tmp_path / "ca.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(r) for r in net.roots]))
    return net


async def speed_cli(*args: str) -> tuple[int, dict[str, Any]]:
    """``cardnet speed ARGS --json`` as a process (the hosts it talks to run on this event loop): its exit code and
    JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cardnet.cli.main", "speed", *args, "--json", stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "CARDNET_PIN": PIN},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out.strip(), err.decode()
    return proc.returncode or 0, json.loads(out)
