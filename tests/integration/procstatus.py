"""A running process's figures as the kernel keeps them (``/proc/PID/status``): what the attack tests measure."""

from __future__ import annotations

from pathlib import Path


def proc_status(pid: int, key: str) -> int:
    """``key`` of ``/proc/PID/status`` (e.g. ``VmRSS``, the resident memory now, ``VmHWM``, its peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")
