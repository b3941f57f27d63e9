"""Host processes over TCP: card-to-card, app-to-remote-card, card-to-remote-app, and attacks."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import PINS, HostProc, make_hosts

from cardnet.applets.notes import NOTE_ACK, NOTES, READ_NOTES, SEND_NOTE
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.transport import encode_frame
from cardnet.wire import Uid

TIMEOUT_S = 20.0


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[list[HostProc]]:
    hosts = make_hosts(tmp_path, ["a", "b"], ["notes", "echo"])
    try:
        for h in hosts:
            h.start()
        yield hosts
    finally:
        for h in hosts:
            h.stop()


async def login(app: AppClient, pin: str) -> None:
    await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=pin)
    assert (await app.recv_type(cm.PIN_RESULT, timeout_s=TIMEOUT_S))["ok"] is True


def test_app_to_remote_card_and_card_to_remote_app(two_hosts: list[HostProc]) -> None:
    a, b = two_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as app:
            assert app.uid.domain == a.domain and app.uid.port > 0
            for rid in range(1, 6):
                await app.send(b.card, REQUEST, rid=rid, body=b"ping %d" % rid)
            got = {}
            for _ in range(5):
                p = await app.recv_type(REPLY, timeout_s=TIMEOUT_S)
                got[p["rid"]] = (p["body"], p["count"])
            assert got == {rid: (b"ping %d" % rid, 1) for rid in range(1, 6)}

    asyncio.run(go())


def test_card_to_card_over_tcp(two_hosts: list[HostProc]) -> None:
    a, b = two_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as alice, await AppClient.connect(b.socket) as bob:
            await login(alice, PINS["a"])
            await alice.send(a.card, SEND_NOTE, to=b.card, text="hello over TCP")
            await login(bob, PINS["b"])
            notes: list[dict[str, object]] = []
            for _ in range(100):  # the note travels card a -> host a -> host b -> card b
                await bob.send(b.card, READ_NOTES)
                notes = (await bob.recv_type(NOTES, timeout_s=TIMEOUT_S))["notes"]
                if notes:
                    break
                await asyncio.sleep(0.05)
            assert [(n["from"], n["text"]) for n in notes] == [(a.card, "hello over TCP")]

    asyncio.run(go())
    # the note_ack travels back card b -> host b -> host a -> card a, which then forgets its sent-record
    deadline = time.monotonic() + TIMEOUT_S
    pending: list[bytes] = [b"?"]
    while pending and time.monotonic() < deadline:
        time.sleep(1.0)  # the ack takes milliseconds; a stopped host would miss it
        a.stop()  # the host owns its card's store while it runs: look inside while it is stopped
        card_a = Card.open(f"sqlite:///{a.dir / 'a.card.db'}")
        try:
            pending = [k for (t, k) in card_a._mem if t == "a.notes" and k.startswith(b"sent:")]
        finally:
            card_a.close()
        if pending:
            a.restart()  # a card re-emits its unacknowledged note at restart; host b answers it again
    assert pending == [], f"card a never got the {NOTE_ACK.name} for {pending}"


def test_an_application_cannot_send_with_another_src(two_hosts: list[HostProc]) -> None:
    a, _ = two_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as honest, await AppClient.connect(a.socket) as thief:
            await login(honest, PINS["a"])
            forged = READ_NOTES.make(honest.uid, a.card)  # privileged, as the authenticated app
            await thief.send_message(forged)
            refused = await thief.recv_type(hm.REFUSED, timeout_s=TIMEOUT_S)
            assert refused["mtype"] == READ_NOTES.code and str(thief.uid) in refused["reason"]
            await thief.send(a.card, READ_NOTES)  # as itself: not authenticated
            r = await thief.recv_type(cm.REFUSED, timeout_s=TIMEOUT_S)
            assert r["reason"] == "privileged"

    asyncio.run(go())
    assert "tried to send as" in a.log()


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)


def test_remote_forgery_of_a_local_domain_is_dropped_by_the_guard(two_hosts: list[HostProc]) -> None:
    _, b = two_hosts

    async def go() -> None:
        async with await AppClient.connect(b.socket) as bob:
            await login(bob, PINS["b"])
            # A rogue remote host claims to be bob's authenticated app and asks b's card for the notes,
            # to be delivered to a port it hopes to reach.
            with _raw(b.port) as s:
                s.sendall(encode_frame(READ_NOTES.make(bob.uid, b.card)))
                await asyncio.sleep(0.5)
            # bob's own app never sees a notes answer it did not ask for
            with pytest.raises(TimeoutError):
                await bob.recv_type(NOTES, timeout_s=1.0)

    asyncio.run(go())
    assert "guard forged-local-domain dropped" in b.log()


def test_privileged_mtype_from_a_remote_sender_is_refused(two_hosts: list[HostProc]) -> None:
    a, b = two_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as app:
            await login(app, PINS["a"])  # authenticated on its own card a, not on b
            await app.send(b.card, READ_NOTES)
            r = await app.recv_type(cm.REFUSED, timeout_s=TIMEOUT_S)
            assert r["reason"] == "privileged" and r["mtype"] == READ_NOTES.code

    asyncio.run(go())


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 1 << 30),  # oversize length prefix
        struct.pack(">I", 10) + b"short",  # shorter than a header
        struct.pack(">I", 40) + b"\x00" * 20,  # truncated, then the connection closes
        b"GET / HTTP/1.1\r\n\r\n",  # not our protocol at all
    ],
)
def test_bad_frames_close_only_that_connection(two_hosts: list[HostProc], garbage: bytes) -> None:
    a, b = two_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as app:
            with _raw(b.port) as s:
                s.sendall(garbage)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(TIMEOUT_S)
                assert s.recv(100) == b""  # the host closed this connection
            await app.send(b.card, REQUEST, rid=1, body=b"still fine")  # a -> b still works
            assert (await app.recv_type(REPLY, timeout_s=TIMEOUT_S))["body"] == b"still fine"

    asyncio.run(go())
    assert b.proc is not None and b.proc.poll() is None


def test_undeliverable_gets_a_notice(two_hosts: list[HostProc]) -> None:
    a, _ = two_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as app:
            nowhere = Uid(b"\x42" * 12)
            await app.send(nowhere, REQUEST, rid=1, body=b"")
            n = await app.recv_type(hm.UNDELIVERABLE, timeout_s=TIMEOUT_S)
            assert n["dst"] == nowhere and "no route" in n["reason"]

    asyncio.run(go())


def test_message_from_remote_is_stepped_once_even_if_duplicated(two_hosts: list[HostProc]) -> None:
    a, b = two_hosts

    async def go() -> None:
        async with await AppClient.connect(a.socket) as app:
            msg = REQUEST.make(app.uid, b.card, rid=77, body=b"dup")
            await app.send_message(msg)
            await app.send_message(msg)
            counts = [(await app.recv_type(REPLY, timeout_s=TIMEOUT_S))["count"] for _ in range(2)]
            assert counts == [1, 1]

    asyncio.run(go())


def _cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_second_host_on_the_same_card_is_refused_at_once(two_hosts: list[HostProc]) -> None:
    """A card belongs to one host: a second `cardnet host run` (or `card show`) on its store is refused, not queued."""
    a, _ = two_hosts
    twin = HostProc("a-twin", a.dir, a.port + 1, a.domain)
    twin.config.write_text(a.config.read_text().replace('app_socket = "a.sock"', 'app_socket = "a-twin.sock"'))
    run = _cardnet("host", "run", "--config", str(twin.config))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert a.proc is not None  # the running host is named: its pid, where it listens, what to do
    named = f"a host 'a' (pid {a.proc.pid}, listening on 127.0.0.1:{a.port}) already runs on {a.dir / 'a.card.db'}"
    assert "in_use" in run.stderr and named in run.stderr and "stop it first" in run.stderr, run.stderr
    store = f"sqlite:///{a.dir / 'a.card.db'}"
    show = _cardnet("card", "show", "--store", store)
    assert show.returncode != 0 and "in_use" in show.stderr and "Traceback" not in show.stderr, show.stderr
    a.stop()  # once the host is gone the card can be looked at
    show = _cardnet("card", "show", "--store", store)
    assert show.returncode == 0, show.stderr
