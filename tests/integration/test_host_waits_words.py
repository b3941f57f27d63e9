"""The host's words about a card's message it cannot deliver, and about a card that takes no more programs.

Real host processes: a remote's ``host.undeliverable`` notices reach host b's card over TCP, and b's log line says
what waits in words fitting the message (a transfer, an exchange, a request to the card's TTP, or nothing); a card
that has handed out every port refuses a program in words, not "gave no port".
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
from hostprocs import PINS, make_hosts

from cardnet.applets import fairx as fa
from cardnet.card import Card
from cardnet.card.applet import SYS
from cardnet.card.manager import MAX_PORT
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.host.errors import HostError
from cardnet.protocols import session
from cardnet.protocols.echo import REQUEST
from cardnet.services.wallet import Wallet
from cardnet.store import SqliteStore
from cardnet.transport import encode_frame
from cardnet.wire import Uid

GUARD_S = 60.0  # a test that waits longer than this for the host has failed (no assertion on time)


async def _follow(app_socket: str, ttp: Uid) -> None:
    wallet = await Wallet.open(app_socket, pin=PINS["b"])
    try:
        await wallet.set_ttp(ttp)
    finally:
        await wallet.close()


def test_a_message_that_cannot_go_is_logged_with_what_waits_in_words_fitting_it(tmp_path: Path) -> None:
    (b,) = make_hosts(tmp_path, ["b"], ["trn"])
    ttp, peer, vendor, other = (Uid(os.urandom(12), 0) for _ in range(4))
    try:
        b.start()
        asyncio.run(_follow(b.socket, ttp))
        notices = [
            (session.RECORD.code, ttp, "gone ttp"),
            (session.RECORD.code, peer, "gone peer"),
            (fa.STATE.code, vendor, "gone vendor"),
            (REQUEST.code, other, "gone other"),
        ]
        frames = b"".join(
            encode_frame(
                hm.UNDELIVERABLE.make_from(Uid(dst.domain, 0), b.card, {"mtype": mtype, "dst": dst, "reason": reason})
            )
            for mtype, dst, reason in notices
        )
        with socket.create_connection(("127.0.0.1", b.port), timeout=GUARD_S) as sock:
            sock.sendall(frames)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        deadline = time.monotonic() + GUARD_S
        lines: dict[str, str] = {}
        while len(lines) < len(notices) and time.monotonic() < deadline:
            lines = {r: line for line in b.log().splitlines() for _, _, r in notices if f": {r}" in line}
            time.sleep(0.1)
        assert len(lines) == len(notices), b.log_tail()
        exchange = "`cardnet exchange list` shows it"
        assert "a request of an exchange to this TTP waits" in lines["gone ttp"] and exchange in lines["gone ttp"]
        assert "a transfer to it waits; `cardnet trn list` shows it" in lines["gone peer"]
        assert "an exchange with it waits" in lines["gone vendor"] and exchange in lines["gone vendor"]
        assert "trn list" not in lines["gone vendor"] and "trn list" not in lines["gone ttp"]
        assert "waits" not in lines["gone other"], lines["gone other"]
    finally:
        b.stop()


def test_a_card_that_has_handed_out_every_port_refuses_a_program_in_words(tmp_path: Path) -> None:
    (b,) = make_hosts(tmp_path, ["b"], ["trn"])
    card = Card(SqliteStore(str(tmp_path / "b.card.db")))
    card._pending[(SYS, b"next_port")] = (MAX_PORT + 1).to_bytes(8, "big")  # (as after 2**32 - 1 programs)
    card._commit()
    card.close()
    try:
        b.start()

        async def connect() -> None:
            await AppClient.connect(b.socket)

        with pytest.raises(HostError) as err:
            asyncio.run(connect())
        said = str(err.value)
        assert "gave no port" not in said, said
        assert f"card {b.domain.hex()} would not take another program: this card has handed out every port" in said
    finally:
        b.stop()


def test_a_host_that_will_not_relay_a_ticket_says_so_in_the_words_of_a_refused_program(tmp_path: Path) -> None:
    from cardnet.services.ticketing.buyer import _relay

    (b,) = make_hosts(tmp_path, ["b"], ["trn"])
    try:
        b.start()
        with pytest.raises(HostError) as err:  # (a card of b's own: b refuses to relay it)
            asyncio.run(_relay(b.socket, b.domain))
        said = str(err.value)
        assert "will not relay" not in said and "device" not in said, said
        words = f"the host at {b.socket} did not let this program carry the ticketing server's card {b.domain.hex()} "
        assert words + "to yours: that domain is a card of this host" in said, said
        assert err.value.hint, said
    finally:
        b.stop()
