"""Open a store from a URL.

* ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``
  (as SQLAlchemy writes them), ``sqlite://:memory:`` for a throwaway store;
  ``?durable=0`` relaxes fsync to ``synchronous=NORMAL`` (tests, simulation).
* ``postgresql://...`` is served by :mod:`cardnet.store.postgres` (scale-out).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from cardnet.store.base import Store
from cardnet.store.errors import StoreError
from cardnet.store.sqlite import SqliteStore


def open_store(
    url: str, *, exclusive: bool = False, kind: str | None = None, version: int = 1, create: bool = True
) -> Store:
    """The store at ``url``. ``exclusive``: this connection alone may use the file while it is
    open (a card's store: one host owns the card); a second opener is refused with ``in_use``.
    ``kind``: the store must be (or, new, becomes) a store of this kind and layout ``version``
    (``foreign``, ``unknown_version`` otherwise). ``create=False``: open an existing store only
    (``missing`` otherwise), as read-only commands do."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        rest, _, query = rest.partition("?")
        opts = parse_qs(query)
        durable = opts.get("durable", ["1"])[0] not in ("0", "false", "no")
        if rest in (":memory:", "/:memory:", ""):
            return SqliteStore(":memory:", durable=durable, url=url, kind=kind, version=version)
        if not rest.startswith("/") or rest == "/":
            here = f"sqlite:///{rest.strip('/') or 'relative.db'}"
            raise StoreError(
                "bad_url",
                f"{url!r}: write sqlite:///relative.db or sqlite:////absolute.db",
                hint=f"three slashes before a path from here ({here}), four before an absolute path",
            )
        return SqliteStore(
            rest[1:], durable=durable, url=url, exclusive=exclusive, kind=kind, version=version, create=create
        )
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        raise StoreError("unsupported", "PostgreSQL stores arrive with the scale-out issue; use sqlite:/// for now")
    raise StoreError(
        "bad_url",
        f"{url!r} is not a store URL: use sqlite:///path.db",
        hint="write sqlite:///path.db (a path from here) or sqlite:////abs/path.db (an absolute one)",
    )
