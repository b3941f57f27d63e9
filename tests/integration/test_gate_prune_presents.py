"""After ``gate.prune`` a holder presents again and is decided at once (processes on 127.0.0.1: ``cardnet gate run``
beside ``cardnet authority run`` and a wallet host).

The prune ends the gate card's idle session with the holder's card. The holder's card did not know: its next
presentation went in the ended session, the gate refused the record (``no_session``) and the copy waited for the
holder card's recovery tick (``trn.recover``, 2 s by default) to be sent again. Here the recovery ticks of the
wallet's and the gate's cards are an hour apart (they run once at start, before anything is presented) and the
wallet library's own resending too: a presentation decided at all was decided without any recovery round. The
prune tells the holder's card that its session ended (``session.failed``); the test waits until the card dropped it
(read from its store), then presents.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from test_gate_processes import give
from waiting import wait_for

from cardnet.applets.gate import PRUNE, PRUNED, SETUP, STATE
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.services.wallet import Wallet

T1, T2 = bytes([0x71]) * 16, bytes([0x72]) * 16
NEVER_S = 3600.0  # recovery ticks and the wallet's resending: not within the test
ANSWER_S = 30.0  # how long a presentation may take before the wallet takes the ticket back (no_answer)


def holds_session(net: TrnNet, card: str, peer: str) -> bool:
    """Whether ``card``'s store (read by this process, beside its host's) holds a session with ``peer``'s card."""
    uri = f"file:{net.tmp / f'{card}.card.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        key = b"a.trn\x00s:" + bytes(net.uids[peer])  # (the trn applet's row s:<peer>, in the card's table)
        return db.execute("SELECT 1 FROM kv WHERE tbl = 'card' AND k = ?", (key,)).fetchone() is not None


async def _not(held: bool) -> bool:
    return not held


def test_a_presentation_after_a_prune_is_decided_without_a_recovery_round(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",), gate_refresh_s=0.5, exclusive=False)  # (read by the test)
    for name, ticks in (("a", f'"trn.recover" = {NEVER_S}'), ("g", f'"trn.recover" = {NEVER_S}, "gate.tick" = 0.25')):
        config = net.hosts[name].config
        text = config.read_text()
        assert text.count("exclusive = ") == 1, text
        config.write_text(text.replace("exclusive = ", f"ticks = {{ {ticks} }}\nexclusive = "))
    with net:
        asyncio.run(_present_prune_present(net))


async def _present_prune_present(net: TrnNet) -> None:
    await net.setup_trace()
    await net.setup_gates(wait_ms=2500)
    await give(net, T1, "a", b"Final, seat 7")
    await give(net, T2, "a", b"Final, seat 8")

    async def final(admitted: int) -> bool:
        s = await net.ask("g", SETUP, STATE)
        return bool(s["admitted"] == admitted and s["pending"] == 0 and s["reports_waiting"] == 0)

    async with await Wallet.open(net.hosts["a"].socket, pin=PIN) as wallet:
        first = await wallet.redeem(T1, net.uids["g"], timeout_s=ANSWER_S, recover_every_s=NEVER_S)
        assert first.taken, first
        await wait_for("T1 admitted and reported", lambda: final(1), every_s=0.1)
        assert holds_session(net, "a", "g")
        pruned = await net.ask("g", PRUNE, PRUNED, before_ms=2**62)
        assert pruned["pruned"] == 1 and pruned["sessions"] == 1, pruned  # it ended the session with a's card
        # the gate told a's card (session.failed): its next presentation opens a new session
        await wait_for("a's card to drop its session with the gate", lambda: _not(holds_session(net, "a", "g")))
        second = await wallet.redeem(T2, net.uids["g"], timeout_s=ANSWER_S, recover_every_s=NEVER_S)
        assert second.taken, (second, net.logs())
    await wait_for("T2 admitted and reported", lambda: final(2), every_s=0.1)
