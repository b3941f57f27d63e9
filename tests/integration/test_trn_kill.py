"""TRN across real host processes under SIGKILL, and the cloned-card attack over TCP.

**SIGKILL loops.** One token moves back and forth between wallet hosts a and b
(traced by the authority process). For each transfer the test orders
``trn.send`` on the holder's card, waits a random delay and SIGKILLs one
process — wallet host a, wallet host b or the authority host, 100 times each —
restarts it (same config, same stores) and drives recovery (``trn.recover``
to both wallets) until the token is enabled on exactly one card and the
authority's chain ends at that card.

How the checks avoid false alarms. ``trn.list`` on two cards is two instants,
not one, so the order of the reads matters. During one transfer from sender S
to receiver R (and nothing else is ordered until it settles):

* R's status only moves forward: none -> trustless_disabled -> trustless ->
  enabled; once R holds a usable copy (trustless or enabled) it keeps it.
* S is usable (enabled) only before it starts, or after a rollback, which is
  possible only while it still has the object O (before it sent ``commit``,
  hence before R can be usable); S forgets the token (none) only after R
  answered ``committed``, i.e. after R durably holds it.

So the test reads R, then S, then R again. *Doubled*: R usable at the first
read and S usable at the later read means both were usable at the moment of
the second read (R stays usable) — a real violation, never a false alarm.
*Lost*: S holding nothing at the second read means R committed before, so R
must hold the token at the third read. While a wallet host is dead its store
is frozen, so the dead card's store (read directly, read-only) together with
one ``trn.list`` of the live card is a consistent pair in either order; the
same two checks are made on it before the restart. After recovery: exactly one
enabled copy among the agent and both wallets, none elsewhere, and the chain's
last holder is that card.

**Cloned card.** Wallet host a is stopped while its card holds the enabled
token; its store file is copied and a second host process (a2) runs the copy.
The original sends the token to b (traced, enabled); then the clone sends the
same token to c. The authority sees the token leave a twice (a branch), blocks
a's Uid (both devices, they share it), its blocklist signer publishes a new
epoch with it, and c never gets an enabled token. A fresh wallet d then opens
a session with the authority (to trace another token), which hands d the new
blocklist; d's attempt to open a session with a is refused, and nothing d sends
ever reaches a.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import forkhost
import pytest
from forkhost import Forker
from killwindow import KillWindow
from test_trn_processes import OID, TrnNet
from waiting import WAIT_S, wait_for

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST, CHAIN, QUERY
from cardnet.applets.trn import CANCEL, LIST, MINT, RECOVER, RESULT, SEND, TOKENS
from cardnet.bench.procs import HostProc, free_port
from cardnet.bench.trnnet import ASK_TIMEOUT_S
from cardnet.card import Card
from cardnet.crypto import pki
from cardnet.host.client import AppClient
from cardnet.protocols import session as sess
from cardnet.protocols.trn import transfer as tr
from cardnet.store import SqliteStore
from cardnet.transport import TransportError
from cardnet.wire import MType

KILLS = 100
MAX_KILLS = 2 * KILLS  # a loaded machine may need more kills to land enough inside transfers (see kill_loop)
USABLE = ("enabled", "trustless")
OID2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def stored(tmp: Path, card: str, key: bytes) -> bytes | None:
    """One value of a card's trn applet state, read straight from its store (read-only, closed at once)."""
    c = Card(SqliteStore(str(tmp / f"{card}.card.db")))
    try:
        return c._mem.get(("a.trn", key))
    finally:
        c._store.close()  # no flush: leave the card exactly as found


def stored_status(tmp: Path, card: str, oid: bytes = OID) -> str | None:
    raw = stored(tmp, card, b"t:" + oid)
    return None if raw is None else tr.Holding.decode(oid, raw).state


async def setup(net: TrnNet, holder: str) -> None:
    await net.setup_trace()
    assert (await net.ask("agent", MINT, oid=OID, body=b"Final, seat 7"))["ok"]
    assert (await net.ask("agent", SEND, oid=OID, to=net.uids[holder]))["ok"]
    await net.settle(holder, OID)


async def status(net: TrnNet, card: str, oid: bytes = OID) -> str | None:
    return (await net.tokens(card)).get(oid)


def check_pair(kill: int, sender: str, s_status: str | None, receiver: str, r_usable: str | None,
               r_later: str | None) -> None:  # fmt: skip
    """``r_usable`` was read no later than ``s_status``, ``r_later`` no earlier (see the module docstring)."""
    where = f"kill {kill} ({sender}->{receiver})"
    assert not (r_usable in USABLE and s_status in USABLE), (
        f"{where}: doubled token: {receiver} {r_usable}, then {sender} {s_status}"
    )
    assert s_status is not None or r_later is not None, f"{where}: lost token: {sender} and {receiver} hold nothing"


def landed(victim_is_sender: bool, seen: str | None) -> tuple[bool, bool]:
    """(early, late) for a kill, from the status of the card it was judged on (the sender's when it was the victim)."""
    if victim_is_sender:
        return seen == "enabled", seen is None
    return seen is None, seen == "enabled"


class KillNet:
    """The test's reads and recovery orders, each card's over one logged-in application connection kept open (a new
    one per read cost a connection, a port and a PIN check on the card: some 20 ms, 7 of them a recovery round);
    :meth:`drop` forgets those of a killed host's cards."""

    def __init__(self, net: TrnNet) -> None:
        self.net = net
        self._apps: dict[str, AppClient] = {}

    async def ask(self, card: str, mtype: MType, reply: MType = RESULT, **fields: Any) -> dict[str, Any]:
        """As :meth:`TrnNet.ask`: ``card``'s reply to one command (none for trn.recover)."""
        if card not in self._apps:
            self._apps[card] = await self.net.app(card)
        app = self._apps[card]
        await app.send(self.net.uids[card], mtype, **fields)
        return {} if mtype is RECOVER else await app.recv_type(reply, timeout_s=ASK_TIMEOUT_S)

    async def status(self, card: str) -> str | None:
        return {t["oid"]: t["status"] for t in (await self.ask(card, LIST, TOKENS))["tokens"]}.get(OID)

    async def drop(self, host: str) -> None:
        """Close the connections to the cards of ``host`` (killed: the next read connects to its new process)."""
        for card in [c for c in self._apps if self.net.where[c] == host]:
            with contextlib.suppress(TransportError, OSError):
                await self._apps.pop(card).aclose()

    async def aclose(self) -> None:
        for host in {self.net.where[c] for c in self._apps}:
            await self.drop(host)

    async def order_send(self, sender: str, receiver: str) -> AppClient:
        """Order trn.send without waiting for the card's answer; the caller closes the client."""
        app = await self.net.app(sender)
        await app.send(self.net.uids[sender], SEND, oid=OID, to=self.net.uids[receiver])
        return app

    async def checked_views(self, kill: int, sender: str, receiver: str) -> dict[str, str | None]:
        r1 = await self.status(receiver)
        s = await self.status(sender)
        r2 = await self.status(receiver)
        check_pair(kill, sender, s, receiver, r1, r2)
        return {sender: s, receiver: r2}

    async def recover(self, kill: int, sender: str, receiver: str, timeout_s: float = 60.0) -> str:
        """Drive recovery, checking at every round; returns the card that ends up holding the token."""
        net = self.net
        async with asyncio.timeout(timeout_s):
            while True:
                for card in (sender, receiver):
                    await self.ask(card, RECOVER)
                views = await self.checked_views(kill, sender, receiver)
                views["agent"] = await self.status("agent")
                holders = [c for c, st in views.items() if st is not None]
                if len(holders) == 1 and views[holders[0]] == "enabled":
                    chain = await self.ask("authority", QUERY, CHAIN, oid=OID)
                    if chain["holders"][-1] == net.uids[holders[0]]:
                        return holders[0]
                await asyncio.sleep(0.02)


async def kill_loop(net: TrnNet, victim: str, seed: int) -> None:
    rng = random.Random(seed)
    kn = KillNet(net)
    await setup(net, "a")
    holder = "a"
    moved = 0
    in_flight = 0  # kills that found a transfer half done (seen in the dead store or right after restart)
    window = KillWindow(rng)
    kill = -1
    # KILLS kills, and more (up to MAX_KILLS) until enough landed inside a transfer and enough transfers completed
    while (kill := kill + 1) < KILLS or ((in_flight < KILLS // 10 or moved < KILLS // 10) and kill < MAX_KILLS):
        sender, receiver = holder, ("b" if holder == "a" else "a")
        app = await kn.order_send(sender, receiver)
        await asyncio.sleep(window.draw())
        hp = net.hosts[victim]
        hp.kill()
        with contextlib.suppress(TransportError, OSError):
            await app.aclose()
        await kn.drop(victim)
        if victim in ("a", "b"):  # the dead card's store is frozen: any read order is one instant for it
            dead = stored_status(net.tmp, victim)
            live = await kn.status(receiver if victim == sender else sender)
            s_st, r_st = (dead, live) if victim == sender else (live, dead)
            check_pair(kill, sender, s_st, receiver, r_st, r_st)
            half = (sender, s_st) if victim == sender else (receiver, r_st)
        hp.restart()
        if victim not in ("a", "b"):
            half = (receiver, await kn.status(receiver))
        in_flight += half[1] not in (None, "enabled")
        window.saw(*landed(half[0] == sender, half[1]))
        holder = await kn.recover(kill, sender, receiver)
        moved += holder == receiver
    await kn.aclose()
    chain = await net.ask("authority", QUERY, CHAIN, oid=OID)
    assert len(chain["holders"]) == 1 + moved, "the chain does not count every completed transfer once"
    print(
        f"victim {victim}: {in_flight} of {kill} kills hit a transfer in flight, {moved} moved;"
        f" kill window now {window.width_s * 1000:.1f} ms"
    )
    # The kills must have hit transfers in flight, not only before or after them.
    assert in_flight >= KILLS // 10, f"only {in_flight} kills hit a transfer in flight"
    assert moved >= KILLS // 10, f"only {moved} transfers completed"


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    with forkhost.forker() as f:
        yield f


@pytest.fixture
def net(tmp_path: Path, forker: Forker) -> Iterator[TrnNet]:
    n = TrnNet(tmp_path)
    forkhost.forked(n.hosts, forker)  # (the loop restarts hosts 100 times and more: see forkhost)
    with n:
        yield n


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["a", "b", "auth"])
def test_sigkill_during_transfers_never_doubles_or_loses_the_token(net: TrnNet, victim: str) -> None:
    asyncio.run(kill_loop(net, victim, seed={"a": 1, "b": 2, "auth": 3}[victim]))


def stored_blocklist(tmp: Path, card: str, table: str = "a.trn") -> pki.Blocklist | None:
    c = Card(SqliteStore(str(tmp / f"{card}.card.db")))
    try:
        raw = c._mem.get((table, b"bl"))
    finally:
        c._store.close()
    return None if raw is None else pki.Blocklist.decode(raw)


def add_clone(net: TrnNet, original: str, clone: str, port: int) -> HostProc:
    """A second host process running a copy of ``original``'s (stopped) card store."""
    for suffix in ("", "-wal"):
        src = net.tmp / f"{original}.card.db{suffix}"
        if src.exists():
            shutil.copyfile(src, net.tmp / f"{clone}.card.db{suffix}")
    old = net.hosts[net.where[original]]
    hp = HostProc(clone, net.tmp, port, old.domain)
    text = old.config.read_text()
    _, _, rest = text.partition("[[cards]]")
    hp.config.write_text(
        f'name = "{clone}"\nlisten = "127.0.0.1:{port}"\napp_socket = "{clone}.sock"\n\n[[cards]]'
        + rest.replace(f"sqlite:///{original}.card.db", f"sqlite:///{clone}.card.db")
    )
    net.hosts[clone] = hp
    net.where[clone] = clone
    net.uids[clone] = net.uids[original]
    return hp


def after_a_clone_spent_twice(net: TrnNet, then: Callable[[TrnNet], Awaitable[None]], timeout_s: float) -> None:
    """Run ``net`` with c reaching "a" at a clone of a's card (a free port): once the clone spent OID a second time
    and the authority blocked ``a`` (:func:`clone_spends_twice`, bounded by ``timeout_s``), ``then(net)``."""
    clone_port = free_port()
    route_to(net, "c", "a", clone_port)  # c reaches "a" at the clone's address

    async def go() -> None:
        await clone_spends_twice(net, clone_port, timeout_s)
        await then(net)

    with net:
        asyncio.run(go())


async def clone_spends_twice(net: TrnNet, clone_port: int, timeout_s: float = WAIT_S) -> None:
    """``a`` holds OID; a clone of its card (host ``a2`` on ``clone_port``) is made, ``a`` sends OID to ``b`` and the
    clone sends it again to ``c``; returns once the authority blocked ``a`` (the cards asked to recover meanwhile)."""
    await setup(net, "a")
    net.hosts["a"].stop()
    clone = add_clone(net, "a", "a2", clone_port)
    net.hosts["a"].restart()
    clone.start()
    assert (await net.ask("a", SEND, oid=OID, to=net.uids["b"]))["ok"]
    await net.settle("b", OID)
    assert (await net.ask("a2", SEND, oid=OID, to=net.uids["c"]))["ok"]  # the clone spends it again

    async def a_blocked() -> bool:
        for card in ("a2", "c"):
            await net.ask(card, RECOVER)
        return net.uids["a"] in (await net.ask("authority", BLOCKED_LIST, BLOCKED))["uids"]

    await wait_for("the authority to block a (the clone spent OID again)", a_blocked, timeout_s)


def route_to(net: TrnNet, host: str, card: str, port: int) -> None:
    """Rewrite ``host``'s route for ``card``'s domain (takes effect at its next start)."""
    cfg = net.hosts[host].config
    key = f'"{net.uids[card].domain.hex()}" = '
    lines = [f'{key}"127.0.0.1:{port}"' if ln.startswith(key) else ln for ln in cfg.read_text().splitlines()]
    assert any(ln.startswith(key) for ln in lines)
    cfg.write_text("\n".join(lines) + "\n")


@pytest.fixture
def clone_net(tmp_path: Path) -> Iterator[TrnNet]:
    # exclusive=False: the test reads the authority's and d's stores while their hosts run
    n = TrnNet(tmp_path, wallets=("a", "b", "c", "d"), exclusive=False)
    try:
        yield n
    finally:
        n.stop()


def test_cloned_card_is_caught_and_blocked_across_processes(clone_net: TrnNet) -> None:
    net = clone_net
    clone_port = free_port()  # c reaches "a" at the clone's address
    route_to(net, "c", "a", clone_port)
    net.start()
    a_uid = net.uids["a"]

    async def go() -> None:
        await setup(net, "a")
        # Clone a's card: stop its host while the card holds the enabled token, copy the store, run both.
        net.hosts["a"].stop()
        assert stored_status(net.tmp, "a") == "enabled"
        clone = add_clone(net, "a", "a2", clone_port)
        net.hosts["a"].restart()
        clone.start()
        assert await status(net, "a2") == "enabled"

        # The original spends the token first: b gets it, traced and enabled.
        assert (await net.ask("a", SEND, oid=OID, to=net.uids["b"]))["ok"]
        await net.settle("b", OID)
        # Then the clone spends the same token to c.
        assert (await net.ask("a2", SEND, oid=OID, to=net.uids["c"]))["ok"]
        c_seen: list[str | None] = []

        async def c_committed_and_a_blocked() -> bool:
            for card in ("a2", "c"):
                await net.ask(card, RECOVER)
            c_seen.append(await status(net, "c"))
            blocked = (await net.ask("authority", BLOCKED_LIST, BLOCKED))["uids"]
            return c_seen[-1] == "trustless" and a_uid in blocked

        await wait_for("c to hold the copy trustless and the authority to block a", c_committed_and_a_blocked)
        assert await status(net, "a2") is None, "the clone completed its send: it forgets the token"

        # The blocklist signer publishes a new epoch naming a, and hands it to the authority card.
        async def published() -> bool:
            bl = stored_blocklist(net.tmp, "authority", "a.authority")
            return bl is not None and bl.is_blocked(a_uid)

        await wait_for("a blocklist epoch naming a on the authority card", published)
        assert "blocklist epoch 1 signed: 1 blocked device(s)" in net.hosts["auth"].log()

        # A restarted authority (SIGKILL) signs above the epoch its card holds, or cards would ignore it.
        net.hosts["auth"].kill()
        net.hosts["auth"].restart()

        async def resigned() -> bool:
            bl = stored_blocklist(net.tmp, "authority", "a.authority")
            return bl is not None and bl.epoch == 2 and bl.is_blocked(a_uid)

        await wait_for("the restarted signer's epoch 2 on the authority card", resigned)
        assert "blocklist epoch 2 signed: 1 blocked device(s)" in net.hosts["auth"].log()

        # c keeps asking the authority: refused every time; c's copy never becomes enabled.
        for _ in range(10):
            await net.ask("c", RECOVER)
            c_seen.append(await status(net, "c"))
            await asyncio.sleep(0.05)
        assert "enabled" not in c_seen and c_seen[-1] == "trustless", c_seen
        assert await status(net, "b") == "enabled"
        chain = await net.ask("authority", QUERY, CHAIN, oid=OID)
        assert chain["holders"] == [a_uid, net.uids["b"]], "the clone's spend is not in the chain"

        # A fresh wallet d traces another token: its new session with the authority brings the blocklist.
        assert (await net.ask("agent", MINT, oid=OID2, body=b"Final, seat 8"))["ok"]
        assert (await net.ask("agent", SEND, oid=OID2, to=net.uids["d"]))["ok"]

        async def d_enabled() -> bool:
            for card in ("agent", "d"):
                await net.ask(card, RECOVER)
            return await status(net, "d", OID2) == "enabled"

        await wait_for("d to hold the second token enabled", d_enabled)
        d_bl = stored_blocklist(net.tmp, "d")
        assert d_bl is not None and d_bl.is_blocked(a_uid), "d did not get the new blocklist from the authority"

        # d now refuses a session with a: the token d sends never reaches a.
        assert (await net.ask("d", SEND, oid=OID2, to=a_uid))["ok"]
        for _ in range(15):
            await net.ask("d", RECOVER)  # retries the handshake
            await asyncio.sleep(0.05)
            assert await status(net, "a", OID2) is None, "a blocked device received a token"
            assert await status(net, "d", OID2) == "disabled+O", "the token left d without a session"
        raw = stored(net.tmp, "d", b"s:" + bytes(a_uid))
        assert raw is not None
        session = sess.decode_state(raw)
        assert session is not None and not session.open, "d opened a session with a blocked device"
        assert (await net.ask("d", CANCEL, oid=OID2))["ok"]
        assert await status(net, "d", OID2) == "enabled"

    asyncio.run(go())
