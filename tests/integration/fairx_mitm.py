"""A man in the middle on the TCP links between host processes, for the fairx attack tests.

A :class:`Tap` is a TCP proxy put on one host's route to another host (its link to that host's port: hosts send
on their own outgoing links only, so one tap sees one direction of traffic). It decodes every frame (an eTP
message: source, destination, type and param are in the clear; a card-to-card session record's content is not)
and its ``rule`` decides what goes on: the message, an altered one, several, or nothing (dropped, or kept in
``held`` to be let go later). It can also send frames of its own (replays, injections) on the live connection or
on a new one, as any host on the network could.

:func:`tapped_net` builds a :class:`~cardnet.bench.trnnet.TrnNet` (wallet hosts ``a`` and ``b``, the authority's
host, the TTP on a host of its own) whose routes between the wallets and the TTP go through taps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

from cardnet.bench.procs import free_port
from cardnet.bench.trnnet import TrnNet
from cardnet.protocols import session as sess
from cardnet.transport.framing import FrameDecoder, encode_frame
from cardnet.wire import DecodeError, Message, Uid

Rule = Callable[[Message], list[Message]]
READ_BYTES = 1 << 16


def passes(msg: Message) -> list[Message]:
    return [msg]


def is_record(msg: Message) -> bool:
    return msg.mtype == sess.RECORD.code


def record_bytes(msg: Message) -> int:
    """The length of a session record's ciphertext (the inner message's size + the AEAD tag)."""
    return len(sess.RECORD.parse(msg)["ct"])


def altered(msg: Message) -> Message:
    """The same session record with one bit of its ciphertext flipped (counter and addresses kept)."""
    rec = sess.RECORD.parse(msg)
    ct = bytearray(rec["ct"])
    ct[len(ct) // 2] ^= 0x01
    return sess.RECORD.make(msg.src, msg.dst, ctr=rec["ctr"], ct=bytes(ct))


def failures(msgs: Sequence[Message], src: Uid) -> list[str]:
    """The reasons of the ``session.failed`` answers ``src`` sent among ``msgs``."""
    return [sess.FAILED.parse(m)["reason"] for m in msgs if m.mtype == sess.FAILED.code and m.src == src]


class Tap:
    """A TCP proxy in front of ``upstream`` (a host's port) that decodes, judges and forwards every frame."""

    def __init__(self, name: str, upstream: int) -> None:
        self.name = name
        self.port = free_port()
        self.upstream = upstream
        self.rule: Rule = passes
        self.seen: list[Message] = []  # every message that reached the tap, in order
        self.held: list[Message] = []  # what a rule kept back (see hold)
        self._ups: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def hold(self, msg: Message) -> list[Message]:
        """A rule: keep the message back (released later, or never)."""
        self.held.append(msg)
        return []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def inject(self, msgs: Sequence[Message], *, fresh: bool = False) -> None:
        """Send ``msgs`` to the host behind the tap: on the live connection, or on a new connection of its own."""
        data = b"".join(encode_frame(m) for m in msgs)
        if fresh:
            _, w = await asyncio.open_connection("127.0.0.1", self.upstream)
            w.write(data)
            await w.drain()
            await asyncio.sleep(0.2)  # (let the host read it before the connection ends)
            w.close()
            return
        assert self._ups, f"tap {self.name}: no live connection to inject on"
        self._ups[-1].write(data)
        await self._ups[-1].drain()

    async def release(self, change: Callable[[list[Message]], list[Message]] | None = None) -> list[Message]:
        """Let the held messages go on, in order (``change`` may alter the list first); returns what was sent."""
        held, self.held = self.held, []
        out = held if change is None else change(held)
        await self.inject(out)
        return out

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._pump(reader, writer)
        except asyncio.CancelledError:  # the tap closes
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:  # the host behind is down: so is this connection (the sender's link retries)
            writer.close()
            return
        self._ups.append(up_w)
        back = asyncio.ensure_future(self._back(up_r, writer))
        decoder = FrameDecoder()
        try:
            while data := await reader.read(READ_BYTES):
                for msg in decoder.feed(data):
                    self.seen.append(msg)
                    for out in self.rule(msg):
                        up_w.write(encode_frame(out))
                await up_w.drain()
        except (OSError, DecodeError):
            pass
        finally:
            back.cancel()
            self._ups.remove(up_w)
            up_w.close()
            writer.close()

    @staticmethod
    async def _back(up_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Whatever the host behind writes back goes back (hosts answer on their own links, so: nothing); when it
        goes away (killed), the sender's connection ends too, and its link reconnects."""
        with contextlib.suppress(OSError):
            while data := await up_r.read(READ_BYTES):
                writer.write(data)
                await writer.drain()
        writer.close()


def tap_route(net: TrnNet, frm: str, to: str) -> Tap:
    """Put a tap on host ``frm``'s route to card ``to``'s host (rewrites ``frm``'s config: before it starts)."""
    hp, target = net.hosts[frm], net.host_of(to)
    tap = Tap(f"{frm}->{to}", target.port)
    domain = net.uids[to].domain.hex()
    text = hp.config.read_text()
    line = f'"{domain}" = "127.0.0.1:{target.port}"'
    assert line in text, f"{hp.config} has no route {line}"
    hp.config.write_text(text.replace(line, f'"{domain}" = "127.0.0.1:{tap.port}"'))
    return tap


def tapped_net(tmp: Path) -> tuple[TrnNet, dict[str, Tap]]:
    """Wallet hosts ``a`` and ``b``, the authority's host and the TTP's host, not started, with a tap on every route
    between ``a``, ``b`` and ``ttp`` (named ``"a->b"``, ``"b->a"``, ``"a->ttp"``, ``"ttp->a"``, ...)."""
    net = TrnNet(tmp, ("a", "b"), ttp=True, ttp_host=True)
    taps = {}
    for frm, to in (("a", "b"), ("b", "a"), ("a", "ttp"), ("b", "ttp"), ("ttp", "a"), ("ttp", "b")):
        tap = tap_route(net, frm, to)
        taps[tap.name] = tap
    return net, taps
