"""Fault tools for TRN tests on a :class:`~trnworld.TrnWorld`: guards that drop, hold or rewrite messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trnworld import TrnWorld, uid

from cardnet.applets.trn import RECOVER
from cardnet.host.core import Origin
from cardnet.host.guard import Guard, Verdict
from cardnet.protocols import session as sess
from cardnet.wire import Message, Uid


@dataclass
class Dropper:
    """Drops the ``nth`` (1-based) messages of ``mtype`` from ``src`` to ``dst`` (counting only those)."""

    src: Uid
    dst: Uid
    nth: set[int]
    mtype: int = sess.RECORD.code
    seen: int = 0
    dropped: list[Message] = field(default_factory=list)

    def check(self, msg: Message, origin: Origin) -> Verdict:
        if msg.src == self.src and msg.dst == self.dst and msg.mtype == self.mtype:
            self.seen += 1
            if self.seen in self.nth:
                self.dropped.append(msg)
                return Verdict.DROP
        return Verdict.PASS


def drop(w: TrnWorld, src: str, dst: str, *nth: int, mtype: int = sess.RECORD.code) -> Dropper:
    d = Dropper(uid(w, src), uid(w, dst), set(nth), mtype)
    w.host.guards.append(Guard(f"drop-{src}-{dst}", d.check))
    return d


def rewrite(w: TrnWorld, fn: Callable[[Message], Message | None]) -> list[Message]:
    """Let ``fn`` see every message; a non-None result is injected instead of the original (a malicious host)."""
    originals: list[Message] = []

    def check(msg: Message, origin: Origin) -> Verdict:
        if origin.kind == "host":
            return Verdict.PASS  # our own injection
        new = fn(msg)
        if new is None:
            return Verdict.PASS
        originals.append(msg)
        w.host.submit(new, Origin("host"))
        return Verdict.DROP

    w.host.guards.append(Guard("rewrite", check))
    return originals


def clear_guards(w: TrnWorld) -> None:
    del w.host.guards[1:]


def recover(w: TrnWorld, *names: str, times: int = 3) -> None:
    """The hosts' recovery timer: ``trn.recover`` on each card, a few rounds (a stale handshake needs two)."""
    for _ in range(times):
        for name in names:
            w.apps[name].send(uid(w, name), RECOVER)
        w.run(300)
        for name in names:
            w.apps[name].receive_all()


def status(w: TrnWorld, name: str, oid: bytes) -> str | None:
    item = w.tokens(name).get(oid)
    return None if item is None else str(item["status"])


def statuses(w: TrnWorld, oid: bytes, *names: str) -> dict[str, str | None]:
    return {n: status(w, n, oid) for n in names}
