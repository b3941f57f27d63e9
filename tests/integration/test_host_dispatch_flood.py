"""A remote peer cannot make a host's dispatch table hold more than a bounded number of bytes.

Two real host processes, ``a`` and ``b``, each with a route to the other; ``a`` is stopped. An attacker opens 480
connections to ``b``'s port (60 from each of eight loopback addresses) and sends on each, as fast as ``b`` takes
them, 60 KB messages for ``b``'s card that name ``a``'s card as their sender. ``b``'s card answers each toward ``a``,
so after each group it steps (at most ``MAX_GROUP`` messages) ``b``'s pump hands those answers to the link before it
steps more, while ``b`` goes on reading between pumps: what arrives beyond a group each round waits in the
dispatch table. Before, the table was bounded by count only (100,000 messages of up to a frame each): ``b``'s
resident memory grew with the attacker's traffic (2.9 GB after 25 s). Now it holds at most
``DEFAULT_MAX_QUEUE_BYTES`` (plus one message); what does not fit is dropped as a lossy network would. Since remote
traffic takes turns (docs/host.md), ``b`` does not even read a remote connection while its table holds
``REMOTE_PAUSE_BYTES``: the attacker waits in its sockets and the table never fills. Once ``a`` is back, an echo from
``b``'s card to ``a``'s goes through.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from hostprocs import make_hosts
from procstatus import proc_status
from test_host_relay_flood import GUARD_S, back_and_echo

from cardnet.host.core import DEFAULT_MAX_QUEUE_BYTES
from cardnet.host.server import LINK_QUEUE_BYTES
from cardnet.protocols.echo import REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Message, Uid

SIZE = 60_000  # bytes of each message: below a read chunk, so each connection hands over about one a read
PEERS = 8  # loopback addresses the attacker connects from
PER_PEER = 60  # connections from each (ServerLimits.max_per_peer is 64)
COUNT = 90  # messages each connection sends: 2.6 GB in all
RETRIES = 100  # connections one attacker thread opens at most (b aborts those over its cap)
# b's peak memory may grow by the dispatch table, the link's queue for a, and this much: every connection's read
# buffers and partial frame (512 x about 200 KB), the groups being stepped, the interpreter's heap
SLACK = 160 * 1024 * 1024


def _attack(port: int, frame: bytes, source: str, failures: list[BaseException]) -> None:
    """Send ``COUNT`` messages from ``source``, connecting again if ``b`` aborts the connection (over its cap)."""
    left = COUNT
    try:
        for _ in range(RETRIES):
            with socket.socket() as sock:
                sock.settimeout(GUARD_S)
                sock.bind((source, 0))
                sock.connect(("127.0.0.1", port))
                try:
                    while left:
                        sock.sendall(frame)
                        left -= 1
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):  # b read everything and closed
                        pass
                except ConnectionResetError:
                    continue
                return
        raise AssertionError(f"{left} messages from {source} left unsent after {RETRIES} connections")
    except BaseException as exc:  # reported by the test
        failures.append(exc)


def test_messages_for_a_card_that_answers_a_route_are_held_in_the_dispatch_table_up_to_a_byte_bound(
    tmp_path: Path,
) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["echo"])
    try:
        b.start()
        assert b.proc is not None
        before = proc_status(b.proc.pid, "VmRSS")
        frame = encode_frame(Message(Uid(a.domain, 5), b.card, REQUEST.code, bytes(SIZE - 34)))
        failures: list[BaseException] = []
        threads = [
            threading.Thread(target=_attack, args=(b.port, frame, f"127.0.0.{2 + peer}", failures))
            for peer in range(PEERS)
            for _ in range(PER_PEER)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        grown = proc_status(b.proc.pid, "VmHWM") - before
        assert grown < DEFAULT_MAX_QUEUE_BYTES + LINK_QUEUE_BYTES + SLACK, f"b's peak memory grew by {grown >> 20} MiB"
        # the table never filled: b read its remote connections only while the table had room (server.REMOTE_PAUSE)
        assert "dispatch table full" not in b.log_path.read_text()
        back_and_echo(a, b)
    finally:
        a.stop()
        b.stop()
