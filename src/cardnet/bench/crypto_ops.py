"""What a unit of work costs in cryptography: counting the operations one run makes, timing each here, and the
bounds they give (shared by the benchmarks of fair exchange, SPEED and ticketing).

* :func:`counting`: counts, in this process, the signatures, verifications, certificate-chain checks, HPKE seals
  and opens, AES-GCM record seals and opens and durable SQLite commits made meanwhile: ``commit`` for the card
  steps' writes (``SqliteStore.write``), ``service_commit`` for the services' transactions that changed a row
  (a vendor's, a broker's store; read-only transactions are not counted);
* :func:`op_rates`: each operation's rate on this machine, one core, on inputs of a protocol message's sizes;
* :func:`bounds`: the *crypto bound* (that CPU time spread over the machine's cores: what group commit leaves
  as the limit) and the *serial bound* (one core, plus one durable commit per write, nothing overlapped).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from cardnet.bench.timing import rate
from cardnet.crypto import pki, profile
from cardnet.protocols.trn.token import mint
from cardnet.store import SqliteStore
from cardnet.wire import Uid

OPS = ("sign", "verify", "cert_verify", "hpke_seal", "hpke_open", "aead_seal", "aead_open")


@contextlib.contextmanager
def counting() -> Iterator[Counter[str]]:
    """Count the crypto operations and durable card writes made in this process meanwhile."""
    counts: Counter[str] = Counter()
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)
        saved.append((owner, name, original))

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)

    wrap(profile, "sign", "sign")
    wrap(profile, "verify", "verify")
    wrap(pki, "verify_chain", "cert_verify")
    wrap(profile, "hpke_seal", "hpke_seal")
    wrap(profile, "hpke_open", "hpke_open")
    wrap(profile.CounterAead, "seal", "aead_seal")
    wrap(profile.CounterAead, "open", "aead_open")
    wrap(SqliteStore, "write", "commit")
    transaction = SqliteStore.transaction
    saved.append((SqliteStore, "transaction", transaction))

    @contextlib.contextmanager
    def counted_transaction(store: SqliteStore) -> Iterator[Any]:
        before = store._c.total_changes
        with transaction(store) as txn:
            yield txn
        if store._c.total_changes != before:
            counts["service_commit"] += 1

    SqliteStore.transaction = counted_transaction  # type: ignore[assignment,method-assign]
    try:
        yield counts
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def op_rates(seconds: float) -> dict[str, float]:
    """Operations per second on this machine (one core), on inputs of an exchange's sizes."""
    now = datetime.now(UTC)
    ca = pki.CertificateAuthority.create("bench fairx rates CA", now=now)
    key = profile.generate_private_key()
    cert = ca.issue(pki.Role.DEVICE, Uid(bytes(12)), key.public_key(), now=now)
    roots = [ca.certificate]
    data = b"x" * 200
    sig = profile.sign(key, data)
    voucher = mint(bytes(16), Uid(bytes(12)), b"x" * 64, lambda d: profile.sign(key, d)).encode()
    sealed = profile.hpke_seal(key.public_key(), voucher, b"info")
    aead = profile.CounterAead(bytes(32))
    record = b"r" * 400
    ctr = [0]

    def once(fn: Callable[[], Any]) -> Callable[[], int]:
        def op() -> int:
            fn()
            return 1

        return op

    def seal() -> int:
        ctr[0] += 1
        aead.seal(ctr[0], record)
        return 1

    boxed = aead.seal(1, record)
    opener = profile.CounterAead(bytes(32))
    return {
        "sign": rate(once(lambda: profile.sign(key, data)), seconds),
        "verify": rate(once(lambda: profile.verify(key.public_key(), sig, data)), seconds),
        "cert_verify": rate(once(lambda: pki.verify_chain([cert], roots, now=now)), seconds),
        "hpke_seal": rate(once(lambda: profile.hpke_seal(key.public_key(), voucher, b"info")), seconds),
        "hpke_open": rate(once(lambda: profile.hpke_open(key, sealed, b"info")), seconds),
        "aead_seal": rate(seal, seconds),
        "aead_open": rate(once(lambda: opener.open(1, boxed)), seconds),
    }


def bounds(
    ops: dict[str, int],
    rates: dict[str, float],
    commit_rate: float,
    cpus: int,
    *,
    commits: tuple[str, ...] = ("commit",),
) -> tuple[float, float]:
    """(crypto bound, serial bound) in units of work per second; the serial bound adds one durable commit per
    counted operation named in ``commits``."""
    crypto_s = sum(ops[op] / rates[op] for op in OPS if ops.get(op))
    return cpus / crypto_s, 1.0 / (crypto_s + sum(ops.get(c, 0) for c in commits) / commit_rate)
