"""The blocklist signer and an authority card whose store cannot be written (a full disk) when it hands the card a
new blocklist (between the signer's poll and its order): the card never takes it, and the signer signs it again
once the card can, instead of taking it as delivered (the order has no answer) and never signing that blocked set
again: the cards the authority meets would go on without the blocked device on their blocklist.

Real host processes (the authority's host runs ``cardnet host run``; the signer, as ``cardnet authority run`` runs
it, is driven from this test, a poll at a time); the device is blocked for real (a clone of its card spends a
token twice). The fault is the kernel's: the running host's soft ``RLIMIT_FSIZE`` lowered to one byte with
``prlimit``, then raised again.
"""

from __future__ import annotations

from pathlib import Path

from diskfull import disk_full
from test_trn_kill import after_a_clone_spent_twice
from waiting import wait_for

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.host.client import AppClient
from cardnet.host.errors import HostError
from cardnet.services.authority import BlocklistSigner

WAIT_S = 30.0  # a bound far above what must happen; nothing is measured


def test_a_blocklist_the_card_could_not_take_is_signed_again_once_it_can(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a", "b", "c"))
    net.hosts["auth"].command = ("host", "run")  # the authority's host alone: its signer runs in this test
    after_a_clone_spent_twice(net, _then, WAIT_S)


async def _then(net: TrnNet) -> None:
    auth = net.hosts["auth"]
    assert auth.proc is not None
    pid = auth.proc.pid
    ca = pki.CertificateAuthority.load(net.tmp / "ca.cnca")
    signer = BlocklistSigner(ca, auth.socket, PIN, card=net.uids["authority"].domain)
    app = await AppClient.connect(auth.socket, card=net.uids["authority"].domain)
    try:
        await app.send(app.uid.card_uid(), cm.PIN_VERIFY, pin=PIN)
        assert (await app.recv_type(cm.PIN_RESULT))["ok"]
        polled = await signer.poll(app)  # a is blocked: a new epoch is due
        with disk_full(pid):  # the authority host's "disk" fails just then
            signed = await signer.hand(app, polled)  # signed and handed; the card cannot take it
            assert signed is not None and signed.is_blocked(net.uids["a"])
        for _ in range(2):  # the signer's next polls (its run loop logs in again after an error)
            try:
                await signer.once(app)
            except HostError as exc:  # the host's notice that the last order was not given to the card
                assert exc.reason == "undeliverable" and "cannot write its store" in str(exc)

        async def card_holds_it() -> bool:
            got = await net.ask("authority", BLOCKED_LIST, BLOCKED)
            return bool(got["epoch"] >= 1)

        await wait_for("the authority card to hold a blocklist with a on it", card_holds_it, WAIT_S)
    finally:
        await app.aclose()
