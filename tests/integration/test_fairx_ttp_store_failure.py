"""A TTP whose store cannot be written (a full disk) while both parties of a stuck exchange ask it to settle.

Wallet hosts ``a`` and ``b``, the authority's host and the TTP's host (``cardnet ttp run``) are OS processes over
TCP, each card in its own durable store. The exchange is stuck after m2 (a tap holds every record a sends b, so
m3 never arrives): a's owner resolves, b's owner aborts, while the TTP host's "disk" is full: the kernel refuses
its writes (its soft ``RLIMIT_FSIZE`` lowered to one byte with ``prlimit``), so the TTP card cannot take a
decision. Then the disk is mended.

What must hold:
- each owner's :meth:`Wallet.wait` (and ``cardnet exchange resolve --wait``) stops at once with
  ``ttp_store_failed``, naming the TTP (not the other party, whose card is fine) and saying that nothing was lost,
  instead of waiting out its whole timeout;
- the TTP decides nothing while it cannot write (neither side ends);
- once mended, both requests reach it again (the cards resend them): one decision for both sides, and each
  voucher usable on exactly one card.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from diskfull import disk_full
from fairx_mitm import is_record
from test_fairx_attacks_tcp import T1, T2, WAIT_S, Scene, _all_phases, holding, offered, run
from test_trn_cli import args, cli, error_json
from waiting import wait_for
from webwallet import log_in, under_way_row

from cardnet.bench.trnnet import PIN
from cardnet.services.wallet import TTP_STORE_FAILED, Wallet, WalletError
from cardnet.web.wallet import WalletWeb

NOTICE_WAIT_S = 20.0  # far above a notice's way back (a few seconds at most); nothing is measured


def test_a_ttp_that_cannot_write_is_named_at_once_and_settles_the_exchange_once_mended(tmp_path: Path) -> None:
    async def body(s: Scene) -> None:
        ab = s.taps["a->b"]
        n1 = await offered(s, T1, T2)
        ab.rule = holding(ab, is_record)  # m3 never reaches b
        assert (await s.b.accept(n1)).phase == "agreed"
        await wait_for("a confirmed, no m3", lambda: _all_phases(s, [n1], "confirmed", "agreed"))
        ttp = s.net.hosts["ttp"]
        assert ttp.proc is not None
        with disk_full(ttp.proc.pid):
            assert (await s.a.resolve(n1)).phase == "resolving"
            assert (await s.b.abort(n1)).phase == "aborting"
            for w in (s.a, s.b):
                with pytest.raises(WalletError) as err:
                    await w.wait(n1, timeout_s=NOTICE_WAIT_S)
                assert err.value.reason == TTP_STORE_FAILED
                words = str(err.value)
                assert str(s.uid("ttp")) in words and "TTP" in words and "nothing was lost" in words, words
            # the same from the command line: a's owner asks again and waits
            order = ("exchange", "resolve", *args(s.net, "a"), "--id", n1.hex(), "--wait", str(NOTICE_WAIT_S))
            err_json = error_json(await asyncio.to_thread(cli, *order, "--json"))
            assert err_json["reason"] == TTP_STORE_FAILED and "TTP's operator" in err_json["hint"], err_json
            human = await asyncio.to_thread(cli, *order)
            assert human.returncode != 0 and "Traceback" not in human.stderr + human.stdout
            assert "cannot write its store" in human.stderr + human.stdout, (human.stdout, human.stderr)
            assert (await s.a.status(n1)).phase == "resolving"
            assert (await s.b.status(n1)).phase == "aborting"
            row = await _web_row(s, n1)  # the web wallet's list under way says the same
            assert row["error"] == TTP_STORE_FAILED and str(s.uid("ttp")) in row["problem"], row
        got = await asyncio.gather(s.a.wait(n1, timeout_s=WAIT_S), s.b.wait(n1, timeout_s=WAIT_S))
        phases = {x.phase for x in got}
        assert len(phases) == 1 and phases <= {"done", "aborted"}, [x.phase for x in got]
        swapped = phases == {"done"}
        await s.ends({T1: "b" if swapped else "a", T2: "a" if swapped else "b"})

    run(tmp_path, {T1: "a", T2: "b"}, body)


async def _web_row(s: Scene, n1: bytes) -> dict[str, Any]:
    """Exchange ``n1``'s row under way in a's web wallet (``cardnet wallet ui``'s server on a's real host), once
    it carries an error."""

    async def open_wallet() -> Wallet:
        return await Wallet.open(s.net.hosts["a"].socket, pin=PIN)

    web = WalletWeb(open_wallet, None, app_socket=s.net.hosts["a"].socket, refresh_s=0.2)
    served = await web.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
            await log_in(client, served)
            row: dict[str, Any] = await under_way_row(  # the page's poll, until the row says what went wrong
                client, "exchange", n1.hex(), lambda got: got is not None and bool(got.get("error")), tries=200,
                failure=lambda got: f"no error on the exchange's row: {got}",
            )  # fmt: skip
            return row
    finally:
        await web.aclose()
