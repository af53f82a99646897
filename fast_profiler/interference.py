"""Other load on the node while a step runs: CPU time used outside the profiled platform.

On a shared node someone else's job stretches the function's executions and the platform's
request path and fails steps the function alone would pass (a repeat of MobileNet at one core
measured 17.5 to 46 rps as another job came and went). The sidecar's busy time per request shows
only part of it (the platform's own processes and the load generator are slowed too); the node's
CPU accounting shows all of it: ``foreign`` = the CPU time all processes used (``/proc/stat``) minus
what the profiled platform's processes used (the process tree under ``root_pid``, which is the
embedded platform's parent in ``bench.profiler`` and the tests). Linux only; where ``/proc`` is not
readable the monitor reports nothing (``sample`` returns None) and the runner judges by busy time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuSample:
    wall_s: float
    busy_s: float
    """CPU seconds the whole node spent busy (all cores)."""
    own_s: float
    """CPU seconds the processes of the profiled platform spent (its live process tree)."""


def foreign_cores(a: CpuSample, b: CpuSample) -> float:
    """Cores' worth of CPU used by other processes between two samples (0 when none)."""
    dt = b.wall_s - a.wall_s
    if dt <= 0:
        return 0.0
    return max(0.0, ((b.busy_s - a.busy_s) - (b.own_s - a.own_s)) / dt)


def _node_busy_s(proc: Path, tick: float) -> float:
    fields = (proc / "stat").read_text().split("\n", 1)[0].split()[1:]
    vals = [int(x) for x in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) * tick


def _tree_cpu_s(proc: Path, root: int, tick: float) -> float:
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) "
        pid = int(d.name)
        parent[pid] = int(rest[1])
        cpu[pid] = (int(rest[11]) + int(rest[12])) * tick  # utime + stime
    children: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


class CpuMonitor:
    """Samples the node's busy CPU time and the platform's share of it."""

    def __init__(self, root_pid: int | None = None, *, proc: Path = PROC,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root_pid = root_pid if root_pid is not None else os.getpid()
        self.proc = proc
        self.clock = clock
        self.tick = 1.0 / os.sysconf("SC_CLK_TCK")

    def sample(self) -> CpuSample | None:
        try:
            return CpuSample(self.clock(), _node_busy_s(self.proc, self.tick),
                             _tree_cpu_s(self.proc, self.root_pid, self.tick))
        except (OSError, ValueError, IndexError):
            return None
