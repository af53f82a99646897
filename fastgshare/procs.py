"""Whether a process is alive, from ``/proc`` (pure ground: no I/O library, importable anywhere)."""

from __future__ import annotations


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (exited, not yet reaped) is as good as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False
