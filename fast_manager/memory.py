"""A CPU replica's memory limit: where to enforce it, and how to tell that the worker passed it.

Three ways, best first, chosen once per sidecar (``MemoryGuard.open``) and reported in its log,
``/_/stats`` and metrics:

- ``cgroup-v2`` / ``cgroup-v1``: the worker runs in a child memory cgroup of the sidecar's own
  (``memory.max`` / ``memory.limit_in_bytes``, swap capped too where the kernel has the knob).
  The kernel OOM-kills the worker inside its cgroup, so no other process on the machine (and no
  other replica) is touched; the cgroup's ``oom_kill`` counter says afterwards that it happened.
- ``rss-watch``: no writable memory controller (an unprivileged container, a cgroup v2 node whose
  parent keeps processes): the sidecar samples the worker's resident set every
  ``RSS_POLL_S`` and kills it once it is over the limit. Best effort: an allocation faster than
  the sampling can overshoot for one period.
- ``off``: no limit set, or ``FASTGSHARE_MEM_ENFORCE=off``.

The GPU's limit is not here: on a GPU ``mem_bytes`` is device memory, enforced by MPS
(``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``) and torch's per-process fraction (``worker_env``).

The parsing functions are pure (text in, paths out); ``MemoryGuard`` does the file-system I/O.
Must not import torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

log = logging.getLogger("sidecar.memory")

RSS_POLL_S = 0.02
"""How often ``rss-watch`` samples the worker's resident set (one small /proc read)."""


class MemoryEnforcement(StrEnum):
    CGROUP_V2 = "cgroup-v2"
    """A child cgroup with ``memory.max`` (and ``memory.swap.max`` 0)."""
    CGROUP_V1 = "cgroup-v1"
    """A child of the v1 memory hierarchy with ``memory.limit_in_bytes`` (and memsw)."""
    RSS_WATCH = "rss-watch"
    """The sidecar samples the worker's RSS and kills it above the limit (best effort)."""
    OFF = "off"
    """No memory limit is enforced."""


@dataclass(frozen=True)
class CgroupSite:
    """Where the sidecar's own memory cgroup is on this machine."""

    version: int
    path: Path
    """The sidecar's own cgroup directory (children are created under it)."""


def find_memory_cgroup(mountinfo: str, proc_cgroup: str) -> CgroupSite | None:
    """The sidecar's memory cgroup from ``/proc/self/mountinfo`` and ``/proc/self/cgroup``.

    A v1 ``memory`` hierarchy wins over v2 (on a hybrid host the unified mount rarely has the
    memory controller). None when neither is mounted.
    """
    v1_mount = v2_mount = None
    v1_root = v2_root = "/"
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount, fstype, opts = fields[3], fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup" and "memory" in opts and v1_mount is None:
            v1_mount, v1_root = mount, root
        elif fstype == "cgroup2" and v2_mount is None:
            v2_mount, v2_root = mount, root
    v1_rel = v2_rel = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_rel = parts[2]
        elif "memory" in parts[1].split(","):
            v1_rel = parts[2]
    if v1_mount is not None and v1_rel is not None:
        return CgroupSite(1, _join(v1_mount, v1_root, v1_rel))
    if v2_mount is not None and v2_rel is not None:
        return CgroupSite(2, _join(v2_mount, v2_root, v2_rel))
    return None


def _join(mount: str, root: str, rel: str) -> Path:
    # Inside a cgroup namespace the mount's root and our path are both relative to the same place.
    if root != "/" and rel.startswith(root):
        rel = rel[len(root):]
    return Path(mount) / rel.lstrip("/")


def oom_kills(text: str) -> int:
    """The ``oom_kill`` count from ``memory.events`` (v2) or ``memory.oom_control`` (v1)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def rss_bytes(status_text: str) -> int:
    """``VmRSS`` from ``/proc/<pid>/status`` (0 when the process has gone)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class MemoryGuard:
    """The memory limit of one worker; survives its restarts; ``close`` removes the cgroup."""

    def __init__(self, mode: MemoryEnforcement, limit_bytes: int | None,
                 cgroup: Path | None = None, why: str = "") -> None:
        self.mode = mode
        self.limit_bytes = limit_bytes
        self.cgroup = cgroup
        self.why = why
        """Why this mode (e.g. why a cgroup could not be used), for the log."""
        self.breaches = 0
        """Workers killed for passing the limit, over this sidecar's life."""
        self._oom_base = 0
        self._watch_killed = False

    @classmethod
    def open(cls, limit_bytes: int | None, name: str, want: str = "auto",
             proc: Path = Path("/proc/self")) -> MemoryGuard:
        """Pick and set up enforcement for a CPU worker; never raises for a machine's refusal."""
        if limit_bytes is None or want == "off":
            return cls(MemoryEnforcement.OFF, None, why="no memory limit configured"
                       if limit_bytes is None else "FASTGSHARE_MEM_ENFORCE=off")
        if want == "rss":
            return cls(MemoryEnforcement.RSS_WATCH, limit_bytes, why="FASTGSHARE_MEM_ENFORCE=rss")
        try:
            site = find_memory_cgroup((proc / "mountinfo").read_text(),
                                      (proc / "cgroup").read_text())
        except OSError as e:
            site, why = None, f"cannot read cgroup membership ({e})"
        else:
            why = "no cgroup memory controller mounted"
        if site is not None:
            try:
                mode, path = _make_cgroup(site, name, limit_bytes)
                return cls(mode, limit_bytes, path)
            except OSError as e:
                why = f"cannot create a memory cgroup under {site.path} ({e.strerror or e})"
        if want == "cgroup":
            log.error("FASTGSHARE_MEM_ENFORCE=cgroup but %s; watching RSS instead", why)
        return cls(MemoryEnforcement.RSS_WATCH, limit_bytes, why=why)

    @property
    def is_cgroup(self) -> bool:
        return self.mode in (MemoryEnforcement.CGROUP_V1, MemoryEnforcement.CGROUP_V2)

    def describe(self) -> str:
        if self.mode is MemoryEnforcement.OFF:
            return f"memory limit: none ({self.why})"
        where = f" at {self.cgroup}" if self.cgroup else f" (best effort: {self.why})"
        return f"memory limit {mib(self.limit_bytes or 0)} enforced by {self.mode.value}{where}"

    def procs_file(self) -> str | None:
        """The file a starting worker writes ``0`` to (between fork and exec) to join."""
        return str(self.cgroup / "cgroup.procs") if self.is_cgroup and self.cgroup else None

    def worker_started(self) -> None:
        self._oom_base = self._oom_count()
        self._watch_killed = False

    def _oom_count(self) -> int:
        if not self.is_cgroup or self.cgroup is None:
            return 0
        name = "memory.events" if self.mode is MemoryEnforcement.CGROUP_V2 else "memory.oom_control"
        try:
            return oom_kills((self.cgroup / name).read_text())
        except (OSError, ValueError):
            return 0

    def breached(self) -> bool:
        """Whether the current worker was killed for passing its limit (since it started)."""
        return self._watch_killed or self._oom_count() > self._oom_base

    def message(self) -> str:
        return (f"the function worker exceeded its memory limit of {mib(self.limit_bytes or 0)} "
                f"({self.limit_bytes} bytes, enforced by {self.mode.value}) and was killed")

    def over_limit(self, pid: int) -> int | None:
        """rss-watch: the worker's RSS when it is over the limit, else None."""
        if self.mode is not MemoryEnforcement.RSS_WATCH or self.limit_bytes is None:
            return None
        try:
            rss = rss_bytes(Path(f"/proc/{pid}/status").read_text())
        except OSError:
            return None
        return rss if rss > self.limit_bytes else None

    def mark_watch_kill(self) -> None:
        self._watch_killed = True

    def count_breach(self) -> None:
        self.breaches += 1

    def close(self) -> None:
        if self.is_cgroup and self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()


def _make_cgroup(site: CgroupSite, name: str,
                 limit_bytes: int) -> tuple[MemoryEnforcement, Path]:
    path = site.path / name
    if site.version == 2:
        if not (path.exists() or _v2_can_limit(site.path)):
            raise OSError(0, "the memory controller is not enabled for children of "
                             f"{site.path} and cannot be (it has processes or is not delegated)")
        path.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(limit_bytes))
        with contextlib.suppress(OSError):
            (path / "memory.swap.max").write_text("0")
        return MemoryEnforcement.CGROUP_V2, path
    path.mkdir(exist_ok=True)
    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
    with contextlib.suppress(OSError):  # absent without swap accounting; must be >= the limit
        (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    return MemoryEnforcement.CGROUP_V1, path


def _v2_can_limit(parent: Path) -> bool:
    try:
        if "memory" in (parent / "cgroup.subtree_control").read_text().split():
            return True
        (parent / "cgroup.subtree_control").write_text("+memory")
        return True
    except OSError:
        return False


def join_cgroup(procs_file: str) -> None:
    """In the child between fork and exec: move this process into the worker's cgroup."""
    fd = os.open(procs_file, os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
