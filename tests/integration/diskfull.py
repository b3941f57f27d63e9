"""A full disk for one running process, made by the kernel: the store-failure tests' fault."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def disk_full(pid: int) -> Iterator[None]:
    """While inside, no write of process ``pid`` to a file succeeds: its soft ``RLIMIT_FSIZE`` is 1 byte (set from
    outside with ``prlimit``), so the kernel refuses its writes (``EFBIG``) as SQLite's writes to a full disk are
    refused; on the way out its limit is what it was (the "disk" mended)."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
