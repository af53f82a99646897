"""Where a replica's memory cgroup is, and how a breach is read back (pure parsing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fast_manager.memory import CgroupSite, find_memory_cgroup, oom_kills, rss_bytes

V1_MOUNTS = """\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "29 23 0:25 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
NS_MOUNTS = "29 23 0:25 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize(("mounts", "cgroup", "expected"), [
    (V1_MOUNTS, "4:memory:/process_api/abc\n0::/\n",
     CgroupSite(1, Path("/sys/fs/cgroup/memory/process_api/abc"))),
    (V2_MOUNTS, "0::/system.slice/x.service\n",
     CgroupSite(2, Path("/sys/fs/cgroup/system.slice/x.service"))),
    (NS_MOUNTS, "0::/kubepods/pod1/c1\n", CgroupSite(2, Path("/sys/fs/cgroup/c1"))),
    (V1_MOUNTS.splitlines()[1], "0::/\n", CgroupSite(2, Path("/sys/fs/cgroup/unified"))),
    ("", "0::/\n", None),
])
def test_find_memory_cgroup(mounts: str, cgroup: str, expected: CgroupSite | None) -> None:
    assert find_memory_cgroup(mounts, cgroup) == expected


def test_oom_kill_counters_of_both_versions() -> None:
    assert oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3  # v1 oom_control
    assert oom_kills("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n") == 2  # v2
    assert oom_kills("oom_kill_disable 0\nunder_oom 0\n") == 0  # old kernels: no counter


def test_rss_bytes() -> None:
    assert rss_bytes("Name:\tpython\nVmRSS:\t  20480 kB\n") == 20480 * 1024
    assert rss_bytes("Name:\tpython\n") == 0
