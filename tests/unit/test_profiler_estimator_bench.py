"""bench/profiler_estimator: the simulated queue it searches on, and a short run end to end."""

import json

import numpy as np

from bench import profiler_estimator as pe
from fastgshare.stats import percentile


def test_queue_is_a_fifo_single_server():
    # At a light rate nobody waits: latency is service + path; past saturation the wait grows
    # request after request (each arrival finds the previous ones still queued).
    q = pe.Queue(np.random.default_rng(0))
    light = q.run(1.0, 200)
    assert max(light) < pe.SERVICE_MS + 6 * pe.SERVICE_SD_MS + pe.PATH_MS + 20 * pe.PATH_EXP_MS
    q = pe.Queue(np.random.default_rng(0))
    over = q.run(2 * 1000.0 / pe.SERVICE_MS, 400)
    assert np.mean(over[300:]) > 10 * np.mean(over[:20]) and q.wait_ms > 1000.0
    # the queue carries over between steps
    q2 = pe.Queue(np.random.default_rng(1), wait_ms=500.0)
    assert q2.run(1e6, 1)[0] > 500.0


def test_long_run_p99_rises_with_the_rate():
    rng = np.random.default_rng(2)
    p99 = []
    for r in (30.0, 45.0, 55.0):
        q = pe.Queue(rng)
        p99.append(percentile(q.run(r, 20_000), 99))
    assert p99[0] < p99[1] < p99[2]


def test_quick_run_writes_its_table(tmp_path, capsys):
    out = tmp_path / "pe.json"
    assert pe.main(["--quick", "--runs", "6", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert {v["variant"] for v in d["variants"]} >= {"this project (default): search",
                                                  "this project (default): search + queue model"}
    for v in d["variants"]:
        assert v["load_seconds_per_config"] > 0 and v["median_rps"] > 0
        assert 0.0 <= v["p_pair_over_10pct"] <= 1.0
    assert 30.0 < d["true_rps"] < 1000.0 / pe.SERVICE_MS
    assert "true rate at p99 = SLO" in capsys.readouterr().out
