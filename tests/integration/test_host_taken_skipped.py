"""``host.taken`` numbers a frame the host reads past (above its frame limit) at its own place on the connection.

A remote host numbers the messages it writes on a connection, and the receiving host confirms each number once it
took that message (docs/host.md "Delivery"). A frame above the receiving host's frame limit (a peer with a larger
limit sent it) is read past, its sender told, and confirmed at once. It must be confirmed by *its* number: the one
a sender gave it among the messages around it. The peer here is a stand-in remote host on a raw TCP socket that
writes, in one write, a message to the host's card, an oversize frame, and another message to the card, while the
host's disk is full (``diskfull.disk_full``: the card cannot commit, so neither message is taken). Only the
oversize frame, number 1, may be confirmed: a confirmation of 0 would tell the sender its first message was taken,
and the sender's card would drop it for good.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from diskfull import disk_full

from cardnet.bench.trnnet import TrnNet
from cardnet.host import mtypes as hm
from cardnet.protocols import echo
from cardnet.transport.framing import FrameDecoder, encode_frame
from cardnet.wire import Message, Uid

LIMIT = 4096  # the receiving host's frame limit
PEER = Uid(bytes.fromhex("5eed5eed5eed5eed5eed5eed"), 0)  # the stand-in remote host's card
WAIT_S = 20.0


def test_a_frame_read_past_is_confirmed_by_its_own_number(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("b",))
    b = net.hosts["b"]
    b.config.write_text(f"max_frame = {LIMIT}\n" + b.config.read_text().replace('["trn"]', '["echo"]'))
    with net:
        assert b.proc is not None
        card = net.uids["b"]
        ask = echo.REQUEST.make(
            PEER, card, rid=1, body=b"are you there"
        )  # answered: the card must write its answer to take it
        big = Message(PEER, card, echo.REQUEST.code, bytes(2 * LIMIT))
        with disk_full(b.proc.pid), socket.create_connection(("127.0.0.1", b.port), timeout=WAIT_S) as s:
            s.sendall(encode_frame(ask) + encode_frame(big, 1 << 20) + encode_frame(ask))
            confirmed = _confirmed(s)
            time.sleep(1.0)  # what else the host would confirm meanwhile (its card cannot take the two messages)
            confirmed += _confirmed(s, wait=False)
        assert confirmed == [1], confirmed


def _confirmed(s: socket.socket, *, wait: bool = True) -> list[int]:
    """The numbers the host confirmed on ``s`` (``host.taken`` runs), waiting for the first frame if ``wait``."""
    decoder = FrameDecoder()
    numbers: list[int] = []
    s.settimeout(WAIT_S if wait else 0.2)
    try:
        while True:
            data = s.recv(1 << 16)
            if not data:
                break
            for m in decoder.feed(data):
                assert m.mtype == hm.TAKEN.code, m
                runs = hm.TAKEN.parse(m)["runs"]
                for first, n in zip(runs[::2], runs[1::2], strict=True):
                    numbers += range(first, first + n)
            if numbers and wait:
                break
    except TimeoutError:
        pass
    return numbers
