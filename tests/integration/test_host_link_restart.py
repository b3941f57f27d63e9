"""Every message a card emits reaches the remote card once, while the remote host is down, starts late or is killed.

Two real host processes over TCP, ``a`` and ``b``, with the ``notes`` applet (a card sends a signed note, the
receiving card keeps it once; nothing above the host resends it). An application on ``a`` has ``a``'s card send
notes to ``b``'s card one after another while ``b`` is started late and then killed (SIGKILL) and restarted again and
again. Afterwards ``b``'s card holds every note exactly once.

Before, a host acknowledged a card's output to its card as soon as the link to the remote host had queued it: what
the link wrote on a connection to a ``b`` about to die (in the kernel's buffers, or read by ``b`` but not yet
committed by its card) was lost for good (1 to 3 of 300 notes a run). Now ``b`` confirms, on the connection, the
messages it has taken (``host.taken``, once its card committed them), ``a`` acknowledges its card's outputs only
then, and what a connection that ended did not confirm is written first on the next (docs/host.md "Delivery").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hostprocs import PINS, HostProc, make_hosts

from cardnet.applets.notes import NOTES, READ_NOTES, SEND_NOTE
from cardnet.card import mtypes as cm
from cardnet.host.client import AppClient

TIMEOUT_S = 20.0
ROUNDS = 2
NOTES_A_ROUND = 300
KILLS = 4  # b killed and restarted this often a round, while a's card sends
SEND_EVERY_S = 0.005
WAIT_S = 60.0  # for the last notes (a connection's unconfirmed ones are sent again on the next at once)


async def login(app: AppClient, pin: str) -> None:
    await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=pin)
    assert (await app.recv_type(cm.PIN_RESULT, timeout_s=TIMEOUT_S))["ok"] is True


async def notes_on(b: HostProc) -> list[str]:
    async with await AppClient.connect(b.socket) as bob:
        await login(bob, PINS["b"])
        await bob.send(b.card, READ_NOTES)
        return [str(n["text"]) for n in (await bob.recv_type(NOTES, timeout_s=TIMEOUT_S))["notes"]]


def test_every_note_reaches_a_remote_card_once_while_its_host_starts_late_and_is_killed(tmp_path: Path) -> None:
    a, b = make_hosts(tmp_path, ["a", "b"], ["notes"])
    # a's card keeps every note (about 1.2 kB: it carries a's certificate) in its outbox until b's host took it: while
    # b is down that is a few hundred notes, more than the default capacity (256 KiB), beyond which the card refuses
    # to send more (out_of_memory, logged): room for them all
    a.config.write_text(
        a.config.read_text().replace('applets = ["notes"]', 'applets = ["notes"]\ncapacity_bytes = 8388608')
    )
    try:
        a.start()

        async def go() -> None:
            sent: list[str] = []
            for round_ in range(ROUNDS):
                async with await AppClient.connect(a.socket) as alice:
                    await login(alice, PINS["a"])

                    async def restarts(first: bool) -> None:
                        for k in range(KILLS):
                            if not (first and k == 0):  # the first time, b is not up yet: it starts late
                                await asyncio.sleep(0.4)
                                await asyncio.to_thread(b.kill)
                            await asyncio.sleep(0.3)
                            await asyncio.to_thread(b.start)

                    restarting = asyncio.create_task(restarts(round_ == 0))
                    for i in range(NOTES_A_ROUND):
                        text = f"round {round_} note {i}"
                        await alice.send(a.card, SEND_NOTE, to=b.card, text=text)
                        sent.append(text)
                        await asyncio.sleep(SEND_EVERY_S)
                    await restarting
            got: list[str] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while loop.time() < deadline:
                got = await notes_on(b)
                if len(got) >= len(sent):
                    break
                await asyncio.sleep(0.5)
            missing = sorted(set(sent) - set(got))
            assert not missing, f"{len(missing)} of {len(sent)} notes never reached b's card: {missing[:10]}"
            assert sorted(got) == sorted(sent), "a note was kept twice"
            assert "refused" not in a.log(), a.log_tail()  # (a's card sent every note it was asked to)

        asyncio.run(go())
    finally:
        a.stop()
        b.stop()
