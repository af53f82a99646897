"""Invocation counts summed over provider worker processes (prometheus multiprocess mode): what
one process counted is seen at once from another, and a removed function starts from zero."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import sys
    from prometheus_client import CollectorRegistry
    from gateway_plugin.metrics import ProviderMetrics, multiprocess_dir
    from tests.fakes import FakeBackend
    assert multiprocess_dir()
    m = ProviderMetrics(CollectorRegistry(), FakeBackend())
    action, n = sys.argv[1], int(sys.argv[2])
    if action == "count":
        for _ in range(n):
            m.observe_started("f.ns")
            m.observe_invocation("f.ns", 200, 0.003)
    elif action == "forget":
        m.forget("f.ns")
    print(m.invocation_count("f.ns"), m.started_count("f.ns"))
""")


def run(tmp_path: Path, *args: str) -> tuple[float, float]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", WORKER, *args], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def test_counts_are_summed_over_processes_and_forgotten_together(tmp_path: Path):
    assert run(tmp_path, "count", "3") == (3.0, 3.0)
    assert run(tmp_path, "count", "4") == (7.0, 7.0)  # another process sees the first one's
    assert run(tmp_path, "forget", "0") == (0.0, 0.0)
    assert run(tmp_path, "count", "2") == (2.0, 2.0)
