"""The wallet's memory of its own admissions (docs/wallet.md, "Walk through a gate"; docs/decisions.md).

A gate's card takes a ticket for good: once admitted the ticket is no longer on the holder's card, and the
gate's records are on the gate's host. So that the holder can still be told "ticket OID was admitted at gate G
at T", :meth:`Wallet.redeem <cardnet.services.wallet.Wallet.redeem>` writes each admission it saw (the card's
domain, the ticket's oid, the gate's Uid, the holder's time, the verdict) to one small JSON file beside the
wallet config: written whole (a temporary file, fsync, rename, the folder fsynced), readable by its owner alone
(0600), the last :data:`KEEP` admissions kept. Writers take an exclusive ``flock`` on the file's lock file, so two
``cardnet wallet enter`` at once keep both records.

This is the holder's own memory, not proof: nothing signs it, the holder can edit it, and an admission made by
another program on the same card (``cardnet trn send`` to a gate without ``--gate``) is not in it. Only the gate's
records (and the authority's trace) prove an admission.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cardnet.errors import CardnetError

FILE = "admissions.json"
KEEP = 1000  # admissions remembered (the oldest is forgotten first): about 200 bytes each
MAX_BYTES = 1 << 20  # a larger file is not this wallet's memory: refused as damaged
VERSION = 1


class AdmissionsError(CardnetError):
    """The memory cannot be read (``damaged``) or written (``unwritable``); ``str`` says which file and why."""


@dataclass(frozen=True)
class Admission:
    """One admission as the holder's wallet saw it: card ``card`` (domain, hex) gave ticket ``oid`` (hex) to gate
    ``gate`` (its Uid as text) at ``at`` (UTC, ISO 8601, the holder's clock); ``verdict`` ``admitted``, or
    ``admitted_unacknowledged`` (the gate took it and the commit was sent; its acknowledgement was on its way)."""

    card: str
    oid: str
    gate: str
    at: str
    verdict: str

    def words(self) -> str:
        """The admission in the holder's words."""
        return f"ticket {self.oid} was admitted at gate {self.gate} at {self.at}"

    def fields(self) -> dict[str, str]:
        """The admission as a JSON field (``--json``): gate, at, verdict and where it comes from."""
        return {"gate": self.gate, "at": self.at, "verdict": self.verdict, "source": "this wallet's own record"}


class AdmissionMemory:
    """The admissions file at ``path`` (:data:`FILE` beside the wallet config)."""

    def __init__(self, path: Path, keep: int = KEEP) -> None:
        self.path = path
        self.keep = keep

    def record(self, card: bytes, oid: bytes, gate: str, verdict: str, at: datetime | None = None) -> Admission:
        """Remember an admission (now, unless ``at``); the oldest beyond :attr:`keep` are forgotten."""
        when = (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = Admission(card.hex(), oid.hex(), gate, when, verdict)
        with self._locked():
            kept = [a for a in self._read() if (a.card, a.oid) != (entry.card, entry.oid)]
            self._write([*kept, entry][-self.keep :])
        return entry

    def find(self, card: bytes, oid: bytes) -> Admission | None:
        """What this wallet remembers of card ``card`` giving ticket ``oid`` to a gate, if anything."""
        for a in reversed(self._read()):
            if (a.card, a.oid) == (card.hex(), oid.hex()):
                return a
        return None

    def of_card(self, card: bytes) -> list[Admission]:
        """Every admission remembered for card ``card``, oldest first."""
        return [a for a in self._read() if a.card == card.hex()]

    def _read(self) -> list[Admission]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AdmissionsError("damaged", f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            if len(raw) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            data: Any = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"not version {VERSION} of the admissions file")
            return [Admission(**{k: str(row[k]) for k in Admission.__dataclass_fields__}) for row in data["admissions"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise AdmissionsError("damaged", f"{self.path} is damaged ({exc}): move it away") from None

    def _write(self, rows: list[Admission]) -> None:
        text = json.dumps({"version": VERSION, "admissions": [asdict(a) for a in rows]}, indent=1) + "\n"
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as fh:
                    os.fchmod(fh.fileno(), 0o600)
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            raise AdmissionsError("unwritable", f"cannot write {self.path}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AdmissionsError("unwritable", f"cannot write {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
