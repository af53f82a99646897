"""What a worker that runs as a function user must be able to reach, and how it is let through.

A worker dropped to a function's uid (``fast_manager.function_users``) must still run the
platform's interpreter and import the runtime. When those live under a folder others cannot
enter (typically ``/root``, 0700, holding a pyenv or a virtual environment), the worker gets a
private mount namespace in which that folder is an empty tmpfs (0711) with only the needed
subfolders bound back in: what the worker sees is what ``chmod o+x`` on that folder would have
shown for those subfolders, and nothing else of it (``~/.ssh`` and the like stay out of sight),
while the machine's own permissions are left alone. The namespace is made between fork and exec,
before the user change (it needs root), and dies with the worker.

``exposures`` is pure; ``needed_paths`` and ``traversable`` read the filesystem in the sidecar;
``enter`` runs in the child (no locks, no logging).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18


def exposures(paths: Iterable[Path], traversable: Callable[[Path], bool]
              ) -> tuple[tuple[str, str], ...]:
    """For each absolute path, the first folder on the way down to it that others cannot enter
    and that folder's child on the way (``/root``, ``/root/.pyenv``): what to bind back in.
    Paths that others can already reach need nothing."""
    out: dict[tuple[str, str], None] = {}
    for path in paths:
        parts = Path(path).parts
        for depth in range(1, len(parts)):
            folder = Path(*parts[:depth])
            if not traversable(folder):
                out[(str(folder), str(Path(*parts[:depth + 1])))] = None
                break
    return tuple(out)


def traversable(folder: Path) -> bool:
    """Whether a uid with no groups may pass through ``folder`` (mode bits)."""
    try:
        return bool(os.stat(folder).st_mode & stat.S_IXOTH)
    except OSError:
        return True  # nothing to expose: the worker gets the same error the sidecar would


def needed_paths(runtime: Path) -> list[Path]:
    """What the worker's interpreter and runtime read: this interpreter (the sidecar's), its
    prefixes and import path, and the runtime's folder."""
    found = [Path(os.path.realpath(sys.executable)), Path(sys.prefix), Path(sys.base_prefix),
             Path(runtime).resolve().parent]
    found += [Path(p) for p in sys.path if p and os.path.isabs(p)]
    return [p for p in found if p.exists()]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"worker sandbox: {what}: {os.strerror(errno)}")


def enter(binds: tuple[tuple[str, str], ...]) -> None:
    """In the child, as root: a private mount namespace where each blocked folder is a 0711
    tmpfs holding only its exposed children (bound from the originals through an O_PATH fd)."""
    if not binds:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    by_folder: dict[str, list[str]] = {}
    for folder, child in binds:
        by_folder.setdefault(folder, []).append(child)
    for folder, children in by_folder.items():
        fds = [(child, os.open(child, os.O_PATH | os.O_DIRECTORY)) for child in children
               if os.path.isdir(child)]
        _check(libc.mount(b"tmpfs", folder.encode(), b"tmpfs", 0, b"mode=0711,size=64k"),
               f"tmpfs over {folder}")
        for child, fd in fds:
            os.mkdir(child, 0o755)
            _check(libc.mount(f"/proc/self/fd/{fd}".encode(), child.encode(), None,
                              _MS_BIND | _MS_REC, None), f"bind {child}")
            os.close(fd)
