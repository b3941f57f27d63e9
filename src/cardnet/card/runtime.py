"""The card: a sealed object whose only way in is a message.

Theory of operation
-------------------
``Card.step_many(msgs, now)`` handles each message with the applet registered
for its mtype. Each applet call writes into a private overlay; if it raises,
the overlay is dropped (the message had no effect) and the sender gets a
``card.refused`` notice. The overlays of the successful messages and their
outputs (the *transactional outbox*) are then written in **one** storage
transaction. Only after it commits are outputs released, volatile effects
applied, and the in-memory mirror of the card's state updated. A crash at any
instant therefore leaves the card before or after the whole group of steps,
never between, and nothing that left the card is forgotten.

Outputs stay in the outbox until the host acknowledges them (``ack``); after
a restart ``outbox()`` re-emits every unacknowledged output, so every protocol
must tolerate duplicates. Acknowledgements are applied with the next
transaction (or ``flush()``): an ack lost in a crash only causes a duplicate.

The card's whole state is small (it has a capacity in bytes) and is mirrored
in memory, so a step never reads the disk: one transaction = one write.
Refusals (``card.refused``) are not stored: resending the message re-creates
them.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cardnet.card import mtypes as cm
from cardnet.card.applet import SYS, Applet, StepContext, overlay_scan
from cardnet.card.errors import CardError
from cardnet.card.manager import CardManager
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.errors import CardnetError
from cardnet.store import Store, StoreError, open_store
from cardnet.store.base import claim_kind
from cardnet.wire import DecodeError, Message, MType, Uid
from cardnet.wire.cbor import dumps, loads_one

log = logging.getLogger("cardnet.card")

DEFAULT_CAPACITY = 256 * 1024
DEFAULT_PIN_TRIES = 3
STORE_TABLE = "card"
OUT = "out"  # the outbox: 8-byte big-endian seq -> encoded message
NEXT = "outn"  # the next outbox seq; its store key sorts right after the outbox rows (same page: one WAL page a step)
UNCOUNTED = (SYS, NEXT)  # system rows do not count against the capacity
_SEP = b"\x00"

TableKey = tuple[str, bytes]


class Outgoing(NamedTuple):
    """A message leaving the card. ``seq`` is its outbox number (ack it once
    delivered), or None for a refusal notice that is not stored."""

    seq: int | None
    msg: Message


_PREFIXES: dict[str, bytes] = {}


def _skey(tk: TableKey) -> bytes:
    prefix = _PREFIXES.get(tk[0])
    if prefix is None:
        prefix = _PREFIXES.setdefault(tk[0], tk[0].encode() + _SEP)
    return prefix + tk[1]


def _split(raw: bytes) -> TableKey:
    table, _, key = raw.partition(_SEP)
    return table.decode(), key


class Card:
    """A card (secure element) whose EEPROM is a :class:`Store`.

    In-process use is *trusted embedding*: Python cannot seal an object, so
    untrusted applications must talk to a card through a host process (see
    docs/host.md). No method returns the private key.
    """

    def __init__(
        self,
        store: Store,
        *,
        rng: profile.Rng = profile.system_rng,
        capacity_bytes: int = DEFAULT_CAPACITY,
        applets: Iterable[Applet] = (),
    ) -> None:
        self._store = store
        self._rng = rng
        self.capacity_bytes = capacity_bytes
        self._authenticated: set[Uid] = set()
        self._auth_pending: dict[Uid, bool] = {}  # changes by this group's steps, applied at commit
        self._applets: dict[int, tuple[Applet, str, MType]] = {}
        self._pending: dict[TableKey, bytes | None] = {}
        self._pending_used = 0
        self._acks: set[int] = set()
        self._mem: dict[TableKey, bytes] = {}
        # Each scanned table's keys in order, kept with the mirror from its first scan on: a scan reads only the
        # keys with its prefix, not the whole card (see _scan).
        self._index: dict[str, list[bytes]] = {}
        self._roots: tuple[bytes, list[bytes]] | None = None  # the roots row and its decoded list (see roots_der)
        self._where = store.url
        with store.transaction() as txn:
            claim_kind(txn, STORE_KIND, STORE_VERSION, self._where)
            rows = txn.scan(STORE_TABLE)
            if rows:
                self._mac = self._load(rows)
            else:  # manufacture: the key and the store's integrity key are born on the card
                key = profile.generate_private_key(rng)
                mac_key = rng(32)
                self._mac = profile.RecordMac(mac_key)
                for tk, v in ((_MAC_TK, mac_key), ((SYS, b"key"), profile.private_to_der(key))):
                    sk = _skey(tk)
                    txn.put(STORE_TABLE, sk, self._mac.tag(sk, v) + v)
                    self._mem[tk] = v
        self._private = profile.private_from_der(self._mem[(SYS, b"key")])
        self.public_key: profile.PublicKey = self._private.public_key()
        self._used = sum(len(k) + len(v) for (t, k), v in self._mem.items() if t not in UNCOUNTED)
        # The outbox: one row per commit, holding that commit's outputs (consecutive seqs).
        self._rows: dict[int, list[tuple[int, bytes]]] = {}  # first seq -> [(seq, encoded message)]
        self._row_of: dict[int, int] = {}  # seq -> first seq of its row
        self._row_left: dict[int, int] = {}  # first seq -> outputs of the row not yet acknowledged
        self._done: set[int] = set()  # rows whose outputs are all acknowledged (deleted in batches)
        for (t, k), v in self._mem.items():
            if t == OUT:
                self._load_row(int.from_bytes(k, "big"), v)
        stored_next = self._mem.get((NEXT, b""))
        self._next_seq = max([*self._row_of, int.from_bytes(stored_next, "big") - 1 if stored_next else 0]) + 1
        self._uid: Uid | None = self._check_identity()
        self.install(CardManager())
        for applet in applets:
            self.install(applet)

    @classmethod
    def open(cls, url: str, *, create: bool = True, **kwargs: Any) -> Card:
        """Open (or manufacture) the card whose EEPROM is the store at ``url``; the card holds
        the store alone while it is open (a second opener is refused with ``in_use``).
        ``create=False``: only an existing store (read-only commands make no files)."""
        return cls(open_store(url, exclusive=True, create=create), **kwargs)

    # -- integrity of the store ----------------------------------------------------
    def _load(self, rows: list[tuple[bytes, bytes]]) -> profile.RecordMac:
        """Check every record's tag under the card's integrity key and fill the mirror."""
        raw_key = dict(rows).get(_MAC_KEY)
        if raw_key is None or len(raw_key) <= RECORD_TAG:
            raise self._damaged("its integrity key record is missing")
        mac = profile.RecordMac(raw_key[RECORD_TAG:])
        mem = self._mem
        for sk, v in rows:
            if len(v) < RECORD_TAG or not mac.check(sk, v[RECORD_TAG:], v[:RECORD_TAG]):
                table, key = _split(sk)
                raise self._damaged(f"its record {table}/{key.hex() or '-'} fails its integrity check")
            mem[_split(sk)] = v[RECORD_TAG:]
        if (SYS, b"key") not in mem:
            raise self._damaged("its key record is missing")
        return mac

    def _check_identity(self) -> Uid | None:
        """The card's Uid, checked against its certificate (None before personalisation)."""
        raw_uid = self._mem.get((SYS, b"uid"))
        raw_cert = self._mem.get((SYS, b"cert"))
        if raw_uid is None and raw_cert is None:
            return None
        if raw_uid is None or raw_cert is None:
            raise self._damaged("it has a Uid without a certificate or a certificate without a Uid")
        try:
            uid = Uid.from_bytes(raw_uid)
            cert = pki.cert_from_der(raw_cert)
            matches = pki.uid_of(cert) == uid and self._certifies_me(cert)
        except (ValueError, DecodeError, CardnetError):
            matches = False
        if not matches:
            raise self._damaged(f"its Uid record {raw_uid.hex()} does not match its certificate")
        return uid

    def _certifies_me(self, cert: x509.Certificate) -> bool:
        """Is ``cert`` for this card's own public key?"""
        key = cert.public_key()
        return isinstance(key, ec.EllipticCurvePublicKey) and profile.public_bytes(key) == profile.public_bytes(
            self.public_key
        )

    def _damaged(self, what: str) -> CardError:
        return CardError(
            "damaged",
            f"card store {self._where}: {what}: the file was damaged or edited; "
            "restore it from a backup (never personalise it again: the card's key is in it)",
        )

    # -- identity ----------------------------------------------------------------
    @property
    def personalised(self) -> bool:
        return self._uid is not None

    @property
    def uid(self) -> Uid:
        if self._uid is None:
            raise CardError("not_personalised", "this card has no identity yet: personalise it with a CA first")
        return self._uid

    @property
    def certificate_der(self) -> bytes:
        cert = self._mem.get((SYS, b"cert"))
        if cert is None:
            raise CardError("not_personalised", "this card has no certificate yet: personalise it with a CA first")
        return cert

    @property
    def roots_der(self) -> list[bytes]:
        raw = self._mem.get((SYS, b"roots"))
        if raw is None:
            return []
        memo = self._roots
        if memo is None or memo[0] is not raw:  # decoded once per row written, not on every read
            memo = self._roots = (raw, _unpack_list(raw))
        return list(memo[1])

    def renew_certificate(self, certificate_der: bytes, now: datetime) -> None:
        """Replace this card's certificate by a renewed one: for this card's key and Uid, in the same role, under
        the card's trusted roots, valid at ``now``, and lasting longer than the one it replaces (so an old
        certificate cannot be put back). Everything else of the card stays: its key, tokens, PIN and records.

        A certificate runs out (``personalise`` gives three years): then every peer refuses the card. The CA that
        certified it renews it before that (``cardnet card renew``, docs/card.md "Renewal").
        """
        if self._uid is None:
            raise CardError("not_personalised", "this card has no certificate yet: personalise it with a CA first")
        try:
            cert = pki.cert_from_der(certificate_der)
            old = pki.cert_from_der(self.certificate_der)
            if not self._certifies_me(cert):
                raise CardError("refused", "the new certificate is for another key: certify this card's public_key")
            if pki.uid_of(cert) != self._uid:
                raise CardError("refused", f"the new certificate names {pki.uid_of(cert)}, this card is {self._uid}")
            role = pki.role_of(old)
            pki.verify_chain([cert], [pki.cert_from_der(r) for r in self.roots_der], now=now, role=role, uid=self._uid)
        except PkiError as exc:
            raise CardError("refused", f"the new certificate is not acceptable: {exc}") from None
        if cert.not_valid_after_utc <= old.not_valid_after_utc:
            raise CardError(
                "refused",
                f"the new certificate ends {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not after the current one "
                f"({old.not_valid_after_utc:%Y-%m-%d %H:%M} UTC): a renewal must last longer",
            )
        sk, der = _skey((SYS, b"cert")), bytes(certificate_der)
        with self._store.transaction() as txn:
            txn.put(STORE_TABLE, sk, self._mac.tag(sk, der) + der)
        self._mem_put({(SYS, b"cert"): der})

    @property
    def used_bytes(self) -> int:
        return self._used

    def personalise(
        self, certificate_der: bytes, roots_der: Sequence[bytes], pin: str, *, pin_tries: int = 3, policy: bytes = b""
    ) -> Uid:
        """Install the CA's certificate for this card's key, the trusted roots and the PIN.

        The certificate must certify this card's own public key; its Uid
        becomes the card's identity. A card is personalised once. ``policy``
        (the system row ``policy``: an encoded session freshness policy,
        docs/trn.md) is written once here; applets may only tighten it.
        """
        if self._uid is not None:
            raise CardError("already_personalised", f"card {self._uid} is already personalised")
        cert = pki.cert_from_der(certificate_der)
        if not self._certifies_me(cert):
            raise CardError("refused", "the certificate is for another key: certify this card's public_key")
        uid = pki.uid_of(cert)
        if not uid.is_card:
            raise CardError("refused", f"a card's certificate must name port 0, got {uid}")
        if not 1 <= len(pin.encode()) <= cm.PIN_MAX_BYTES:
            raise CardError("bad_pin", f"a PIN is 1 to {cm.PIN_MAX_BYTES} bytes")
        salt = self._rng(16)
        rows = {
            (SYS, b"uid"): bytes(uid),
            (SYS, b"cert"): certificate_der,
            (SYS, b"roots"): _pack_list(list(roots_der)),
            (SYS, b"pin_salt"): salt,
            (SYS, b"pin_mac"): profile.hmac_sha256(salt, pin.encode()),
            (SYS, b"pin_max"): bytes([pin_tries]),
            (SYS, b"pin_left"): bytes([pin_tries]),
            (SYS, b"next_port"): (1).to_bytes(4, "big"),
        }
        if policy:
            rows[(SYS, b"policy")] = policy
        with self._store.transaction() as txn:
            for tk, v in rows.items():
                sk = _skey(tk)
                txn.put(STORE_TABLE, sk, self._mac.tag(sk, v) + v)
        self._mem_put(rows)
        self._uid = uid
        return uid

    # -- applets -----------------------------------------------------------------
    def install(self, applet: Applet) -> None:
        """Register ``applet`` for its mtypes (applets are code: install them at every open)."""
        table = "a." + applet.name if applet.name != "card" else SYS
        for mt in applet.handles:
            old = self._applets.get(mt.code)
            if old is not None and old[0].name != applet.name:
                raise CardError("refused", f"{mt.name} is already handled by applet {old[0].name}")
            self._applets[mt.code] = (applet, table, mt)

    # -- stepping ----------------------------------------------------------------
    def step(self, msg: Message, now: float) -> list[Outgoing]:
        """Handle one message in its own durable transaction.

        ``step_many([msg], now)[0]`` for one message, without the group's loops and lists (the hot path
        of a card stepped message by message): same checks, same transaction, same results.
        """
        ctx, refusal = self._run(msg, now)
        pending = self._pending
        first_seq = self._next_seq
        if ctx is None:
            outs = [] if refusal is _SILENT or refusal is None else [Outgoing(None, refusal)]
            row: list[tuple[int, bytes]] = []
        else:
            if ctx._overlay:  # (before the outbox row, as in step_many: the same order of puts)
                pending.update(ctx._overlay)
            outs = []
            out_msgs = ctx._out
            if len(out_msgs) == 1:  # the common case: one output, its row is one length and the message
                out = out_msgs[0]
                raw = out.encode()
                row = [(first_seq, raw)]
                outs.append(_outgoing(Outgoing, (first_seq, out)))
                value = len(raw).to_bytes(4, "big") + raw
                self._next_seq = first_seq + 1
                pending[(OUT, first_seq.to_bytes(8, "big"))] = value
                self._pending_used += ctx._used + 8 + len(value) - (len(raw) + _OUT_RESERVE)
            else:
                row = []
                seq = first_seq
                reserved = 0
                for out in out_msgs:
                    raw = out.encode()
                    row.append((seq, raw))
                    outs.append(_outgoing(Outgoing, (seq, out)))
                    seq += 1
                    reserved += len(raw) + _OUT_RESERVE
                self._pending_used += ctx._used
                if row:
                    self._next_seq = seq
                    value = _pack_row(row)
                    pending[(OUT, first_seq.to_bytes(8, "big"))] = value
                    self._pending_used += 8 + len(value) - reserved
            if ctx._auth:
                self._auth_pending.update(ctx._auth)
        self._settle(row, first_seq)
        if ctx is not None and ctx._after:
            for fn in ctx._after:
                fn()
        return outs

    def step_many(self, msgs: Sequence[Message], now: float) -> list[list[Outgoing]]:
        """Group commit: handle ``msgs`` in order, all in one transaction.

        Each message is all-or-nothing on its own (a refused message leaves no
        trace); the group's outputs are released only after the commit.
        """
        results: list[list[Outgoing]] = []
        after: list[Any] = []
        row: list[tuple[int, bytes]] = []
        pending = self._pending
        first_seq = seq = self._next_seq
        reserved = 0
        for msg in msgs:
            ctx, refusal = self._run(msg, now)
            if ctx is None:
                results.append([] if refusal is _SILENT or refusal is None else [Outgoing(None, refusal)])
                continue
            outs = []
            for out in ctx._out:
                raw = out.encode()
                row.append((seq, raw))
                outs.append(_outgoing(Outgoing, (seq, out)))  # Outgoing(seq, out) without its Python __new__
                seq += 1
                reserved += len(raw) + _OUT_RESERVE
            if ctx._overlay:
                pending.update(ctx._overlay)
            self._pending_used += ctx._used
            if ctx._auth:
                self._auth_pending.update(ctx._auth)
            if ctx._after:
                after.extend(ctx._after)
            results.append(outs)
        self._next_seq = seq
        if row:
            value = _pack_row(row)
            pending[(OUT, first_seq.to_bytes(8, "big"))] = value
            self._pending_used += 8 + len(value) - reserved  # exact size instead of the per-output reservation
        self._settle(row, first_seq)
        for fn in after:
            fn()
        return results

    def _settle(self, row: list[tuple[int, bytes]], first_seq: int) -> None:
        """Commit what the step (or group) left pending, then make its authentication changes the card's; if the
        commit fails, nothing of it happened (the outputs from ``first_seq`` on are not the card's)."""
        if self._pending or self._done:
            try:
                self._commit(row)
            except BaseException:
                self._pending.clear()
                self._pending_used = 0
                self._auth_pending.clear()
                self._next_seq = first_seq
                raise
        if self._auth_pending:
            for uid, member in self._auth_pending.items():
                if member:
                    self._authenticated.add(uid)
                else:
                    self._authenticated.discard(uid)
            self._auth_pending.clear()

    def _run(self, msg: Message, now: float) -> tuple[StepContext | None, Message | None]:
        """Run one message's applet into an overlay; return (ctx, None) or (None, refusal)."""
        if msg.mtype == _REFUSED_CODE and msg.mtype not in self._applets:
            return None, _SILENT  # never answer a refusal with a refusal
        uid = self._uid
        if uid is None:
            return None, self._refusal(msg, "not_personalised", "the card has no identity yet")
        if msg.dst.raw != uid.raw:  # (the wire forms: a bytes comparison instead of the dataclass __eq__)
            return None, self._refusal(msg, "not_for_this_card", f"this card is {uid}, not {msg.dst}")
        entry = self._applets.get(msg.mtype)
        if entry is None:
            return None, self._refusal(msg, "no_applet", f"no applet on this card handles mtype 0x{msg.mtype:04x}")
        applet, table, mt = entry
        if mt.privileged and not self._is_authenticated(msg.src):
            return None, self._refusal(
                msg, "privileged", f"{mt.name} is privileged: only an application that verified the PIN may send it"
            )
        try:
            params = mt.schema.decode(msg.param)
        except DecodeError as exc:
            return None, self._refusal(msg, "bad_param", str(exc))
        ctx = StepContext(self, table, msg, now)
        try:
            applet.handle(ctx, msg, params)
        except CardError as exc:
            return None, self._refusal(msg, exc.reason, str(exc))
        except DecodeError as exc:
            return None, self._refusal(msg, "bad_param", str(exc))
        except Exception as exc:  # an applet bug must not take the card down
            log.exception("applet %s failed on %s", applet.name, mt.name)
            return None, self._refusal(msg, "applet_error", f"{type(exc).__name__}: {exc}")
        return ctx, None

    def _refusal(self, msg: Message, reason: str, detail: str) -> Message:
        src = self._uid if self._uid is not None else Uid(msg.dst.domain, 0)
        return cm.REFUSED.make(src, msg.src, mtype=msg.mtype, reason=_clip(reason, 64), detail=_clip(detail, 500))

    def _commit(self, row: list[tuple[int, bytes]] | None = None, *, force: bool = False) -> None:
        """Write the pending overlay, the new outbox row and finished outbox rows' deletion in one transaction.

        Fully acknowledged outbox rows are deleted in batches (``DELETE_BATCH`` of
        them, or at once under memory pressure or when ``force``d by ``flush``):
        most steps then write two rows and delete none. Until deleted, a finished
        row still counts against the capacity and is re-emitted after a crash
        (duplicates, never losses). The next sequence number is written with every
        deletion, before the row holding the highest seq can disappear.
        """
        pending = self._pending
        freed = 0
        done_rows: list[int] = []
        if self._done and (
            force or len(self._done) >= DELETE_BATCH or 2 * (self._used + self._pending_used) > self.capacity_bytes
        ):
            done_rows = sorted(self._done)
            for first in done_rows:
                tk = (OUT, first.to_bytes(8, "big"))
                old = self._mem.get(tk)
                if old is not None and tk not in pending:
                    pending[tk] = None
                    freed += len(old) + 8
        if not pending:
            return  # acknowledgements only, none due yet: nothing to write
        write_next = bool(done_rows) or _NEXT_TK not in self._mem
        puts = []
        dels = []
        tag = self._mac.tag  # each written record carries its integrity tag (checked when the card loads)
        prefixes = _PREFIXES
        for tk, v in pending.items():
            prefix = prefixes.get(tk[0])
            sk = _skey(tk) if prefix is None else prefix + tk[1]
            if v is None:
                dels.append(sk)
            else:
                puts.append((sk, tag(sk, v) + v))
        if write_next:
            next_raw = self._next_seq.to_bytes(8, "big")
            puts.append((_NEXT_KEY, tag(_NEXT_KEY, next_raw) + next_raw))
        try:
            self._store.write(STORE_TABLE, puts, dels)
        except BaseException:
            for first in done_rows:  # the deletions did not happen
                pending.pop((OUT, first.to_bytes(8, "big")), None)
            raise
        # durable: now update the mirror
        mem = self._mem
        if dels:
            for tk, v in pending.items():
                if v is None:
                    if mem.pop(tk, None) is not None and tk[0] in self._index:
                        self._unindex(tk)
                else:
                    if tk not in mem and tk[0] in self._index:
                        insort(self._index[tk[0]], tk[1])
                    mem[tk] = v
        elif self._index:
            self._mem_put(pending)  # type: ignore[arg-type]  # no None values: no deletions
        else:
            mem.update(pending)  # type: ignore[arg-type]  # (nothing scanned yet: no index to keep)
        if write_next:
            if _NEXT_TK not in mem and NEXT in self._index:
                insort(self._index[NEXT], _NEXT_TK[1])
            mem[_NEXT_TK] = next_raw
        for first in done_rows:
            for seq, _ in self._rows.pop(first):
                self._acks.discard(seq)
                del self._row_of[seq]
            del self._row_left[first]
            self._done.discard(first)
        if row:
            self._add_row(row)
        self._used += self._pending_used - freed
        pending.clear()
        self._pending_used = 0

    def _load_row(self, first: int, value: bytes) -> None:
        self._add_row(_unpack_row(first, value))

    def _add_row(self, row: list[tuple[int, bytes]]) -> None:
        first = row[0][0]
        self._rows[first] = row
        self._row_left[first] = len(row)
        for seq, _ in row:
            self._row_of[seq] = first

    # -- outbox --------------------------------------------------------------------
    def outbox(self) -> list[Outgoing]:
        """Every stored output not yet acknowledged, oldest first (re-emit after a restart)."""
        return [
            Outgoing(seq, Message.decode(raw))
            for first in sorted(self._rows)
            for seq, raw in self._rows[first]
            if seq not in self._acks
        ]

    def ack(self, seqs: Iterable[int]) -> None:
        """The host delivered these outputs; they leave the outbox with the next transaction.

        A commit's outputs share one outbox row, deleted once all of them are
        acknowledged; until then a crash re-emits the row's unacknowledged and
        acknowledged outputs alike (duplicates, never losses).
        """
        for seq in seqs:
            first = self._row_of.get(seq)
            if first is not None and seq not in self._acks:
                self._acks.add(seq)
                self._row_left[first] -= 1
                if self._row_left[first] == 0:
                    self._done.add(first)

    def flush(self) -> None:
        """Delete every fully acknowledged outbox row now (normally done in batches with later steps)."""
        if self._done:
            self._commit(force=True)

    # -- internals for StepContext -----------------------------------------------------
    def _key(self) -> profile.PrivateKey:
        return self._private

    def _is_authenticated(self, uid: Uid) -> bool:
        return self._auth_pending.get(uid, uid in self._authenticated)

    def _read(self, tk: TableKey) -> bytes | None:
        if tk in self._pending:
            return self._pending[tk]
        return self._mem.get(tk)

    def _scan(self, table: str, prefix: bytes) -> dict[bytes, bytes]:
        """Committed entries of ``table`` with ``prefix`` (in key order), with this group's pending writes applied.

        Read through the table's sorted keys (made at its first scan, then kept by every commit): the cost is the
        entries found, not the card's size (an authority's or a gate's card holds many thousands of records).
        """
        keys = self._index.get(table)
        mem = self._mem
        if keys is None:
            keys = self._index[table] = sorted(k for t, k in mem if t == table)
        base = {}
        i, n = bisect_left(keys, prefix), len(keys)
        while i < n:
            k = keys[i]
            if not k.startswith(prefix):
                break
            base[k] = mem[(table, k)]
            i += 1
        return overlay_scan(base, self._pending, table, prefix)

    def _keys_after(self, table: str, prefix: bytes, after: bytes | None, limit: int) -> list[bytes]:
        """At most ``limit`` committed keys of ``table`` with ``prefix`` above ``after`` (all if None), in order, read
        through the table's sorted keys: the cost is the keys returned, not how many the prefix holds."""
        keys = self._index.get(table)
        if keys is None:
            keys = self._index[table] = sorted(k for t, k in self._mem if t == table)
        i = bisect_right(keys, after) if after is not None and after >= prefix else bisect_left(keys, prefix)
        out: list[bytes] = []
        for k in keys[i : i + limit]:
            if not k.startswith(prefix):
                break
            out.append(k)
        return out

    def _mem_put(self, rows: dict[TableKey, bytes]) -> None:
        """Write ``rows`` into the mirror, adding new keys to the index of each scanned table."""
        mem, index = self._mem, self._index
        for tk, v in rows.items():
            if tk not in mem and tk[0] in index:
                insort(index[tk[0]], tk[1])
            mem[tk] = v

    def _unindex(self, tk: TableKey) -> None:
        keys = self._index[tk[0]]
        i = bisect_left(keys, tk[1])
        if i < len(keys) and keys[i] == tk[1]:
            del keys[i]

    def _reserve(self, step_delta: int) -> None:
        total = self._used + self._pending_used + step_delta
        if total > self.capacity_bytes:
            raise CardError(
                "out_of_memory",
                f"the card would hold {total} bytes, its capacity is {self.capacity_bytes}: "
                "free tokens or acknowledge outputs",
            )

    def pki_time(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, UTC)

    def close(self) -> None:
        try:
            self.flush()
        except StoreError:
            log.warning("could not write acknowledgements while closing the card")
        self._store.close()


_outgoing = tuple.__new__
_REFUSED_CODE = cm.REFUSED.code
_SILENT = Message(Uid(bytes(12)), Uid(bytes(12)), cm.REFUSED.code, b"")


_NEXT_TK: TableKey = (NEXT, b"")
_NEXT_KEY = _skey(_NEXT_TK)
_MAC_TK: TableKey = (SYS, b"mac")  # the store's integrity key: every record is tagged with it
_MAC_KEY = _skey(_MAC_TK)
RECORD_TAG = profile.RECORD_TAG_BYTES  # a stored card record is tag(RECORD_TAG) || value
STORE_KIND = "card"
STORE_VERSION = 1  # records are tag(16) || value
DELETE_BATCH = 32  # finished outbox rows deleted together (one delete per 32 steps, not one per step)
_OUT_RESERVE = 8  # bytes reserved per output besides its size (its share of the row: 4-byte length, row key)


def _clip(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of UTF-8, cut at a character boundary: a refusal must always encode,
    even when its text quotes a sender's non-ASCII garbage."""
    return text.encode("utf-8", "replace")[:max_bytes].decode("utf-8", "ignore")


def _pack_row(row: list[tuple[int, bytes]]) -> bytes:
    """A commit's outputs: consecutive seqs, each message as 4-byte length + bytes."""
    return b"".join(len(raw).to_bytes(4, "big") + raw for _, raw in row)


def _unpack_row(first: int, value: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    seq = first
    while pos < len(value):
        n = int.from_bytes(value[pos : pos + 4], "big")
        out.append((seq, value[pos + 4 : pos + 4 + n]))
        pos += 4 + n
        seq += 1
    return out


def _pack_list(items: list[bytes]) -> bytes:
    return dumps(items)


def _unpack_list(raw: bytes) -> list[bytes]:
    obj = loads_one(raw)
    assert isinstance(obj, list)
    return [bytes(x) for x in obj]


__all__ = ["Card", "MType", "Outgoing"]
