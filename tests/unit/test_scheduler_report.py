"""``fast_scheduler.report``: the scheduler's decisions as status rows (pure part and Redis read)."""

from __future__ import annotations

import json

from fast_scheduler.report import HEADERS, decision_rows, rows_from
from fastgshare import keys

REC = {"function": "paced", "at_s": 100.0, "replicas": 3,
       "configs": [{"smPct": 50, "quotaRequest": 1.0, "quotaLimit": 1.0, "batch": 1, "count": 2},
                   {"smPct": 50, "quotaRequest": 0.4, "quotaLimit": 1.0, "batch": 1, "count": 1}],
       "summary": "", "reason": "rate 20.0 rps; " + "x" * 200, "feasible": True, "changed": True,
       "target_rps": 22.0, "observed_rps": 20.0, "capacity_rps": 40.0, "predicted_utilisation": 0.5,
       "predicted_p99_ms": 120.0, "slo_ms": 600.0}


def test_rows_from_formats_each_decision() -> None:
    rows = rows_from({"openfaas-fn/paced": json.dumps(REC), "openfaas-fn/bad": b"{nope",
                      "openfaas-fn/inf": json.dumps({**REC, "predicted_utilisation": None,
                                                     "feasible": False})}, now_s=112.0)
    assert [r[0] for r in rows] == ["openfaas-fn/bad", "openfaas-fn/inf", "openfaas-fn/paced"]
    assert all(len(r) == len(HEADERS) for r in rows)
    bad, inf, ok = rows
    assert bad[-1] == "unreadable decision record"
    assert inf[4] == "-" and inf[6] == "NO"
    assert ok[1] == 3
    assert ok[2] == "2x sm50 q1/1 b1, 1x sm50 q0.4/1 b1"
    assert ok[3] == "20.0/22.0/40.0" and ok[4] == "50%" and ok[5] == "120/600"
    assert ok[7] == "12" and len(ok[8]) == 80 and ok[8].endswith("...")


def test_decision_rows_reads_redis(redis_url, redis_client) -> None:
    assert decision_rows(redis_url) == []
    redis_client.hset(keys.scheduler_decisions(), "openfaas-fn/paced", json.dumps(REC))
    rows = decision_rows(redis_url)
    assert len(rows) == 1 and rows[0][0] == "openfaas-fn/paced" and rows[0][1] == 3
