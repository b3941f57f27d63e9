"""What the Millicent wallet says when no piece of scrip covers a price: what is missing, and what to do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cardnet.protocols import millicent as mc
from cardnet.services.millicent.wallet import SCRIP, Wallet, WalletError
from cardnet.store import SqliteStore

VID = bytes.fromhex("00000000000000a1")
NOW = 1_800_000_000


def short(wallet: Wallet, price: int) -> str:
    with pytest.raises(WalletError) as err:  # refused before anything is sent: no vendor, no broker needed
        asyncio.run(wallet.spend(VID, "127.0.0.1:9", "report", price, NOW, top_up=0))
    assert err.value.reason == "short"
    return str(err.value)


def test_no_piece_covers_the_price_says_what_is_missing_and_what_to_do(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path / "w.db")) as store:
        wallet = Wallet(store)
        said = short(wallet, 500)
        assert "no piece of vendor 00000000000000a1's scrip covers the price, 500 units of its scrip" in said
        assert "you hold none" in said and "buy a piece worth at least 500 from the broker" in said
        for value, expiry in ((97, NOW + 3600), (400, NOW + 30)):  # the 400 expires too soon to be spent
            s = mc.mint({0: bytes(32)}, index=0, vendor=VID, value=value, serial=value, customer_id=bytes(8),
                        expiry=expiry)  # fmt: skip
            with store.transaction() as txn:
                txn.put(SCRIP, VID + s.scrip_id, s.encode())
        assert "(the largest you hold is worth 97; a purchase is paid with one piece" in short(wallet, 500)
        assert wallet.pending() == []
