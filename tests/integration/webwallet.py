"""The web wallet's API (``cardnet wallet ui``) as its page uses it, for tests: log in with the one-time link, and
poll the list of what is under way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from cardnet.web.wallet import Served

Row = dict[str, Any] | None  # a row of the list under way (None: no such row)


async def log_in(client: httpx.AsyncClient, served: Served) -> None:
    """Log ``client`` in as the page does: the one-time token of ``served``'s login link, for a session it then
    sends with each request."""
    token = served.login_url.partition("#login=")[2]
    session = (await client.post("/api/login", json={"token": token})).json()["session"]
    client.headers["Authorization"] = f"Bearer {session}"


async def under_way_row(
    client: httpx.AsyncClient, what: str, rid: str, wanted: Callable[[Row], bool], *, tries: int,
    failure: Callable[[Row], str],
) -> Any:  # fmt: skip
    """The page's poll (``/api/state``, at most ``tries`` times 0.1 s apart) until the row under way of ``what``
    ``rid`` is ``wanted``: that row. If it never is, ``AssertionError(failure(the last row seen))``."""
    got: Row = None
    for _ in range(tries):
        state = (await client.get("/api/state")).json()
        got = next((r for r in state["under_way"] if r["what"] == what and r["id"] == rid), None)
        if wanted(got):
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(failure(got))
