"""bench.replica_start's reading of a replica's log: the end of each start phase."""

from __future__ import annotations

from datetime import datetime

from bench.replica_start import PHASES, _log_times

LOG = """\
2026-12-04T23:51:21.498149Z [sidecar] info: sidecar at nice 0
2026-12-04T23:51:21.510824Z [sidecar] info: sidecar for m replica m-1 listening on 127.0.0.1:1
2026-12-04T23:51:21.524734Z [sidecar.worker] info: worker pid 26532 started on port 34605, cores [0, 1]
2026-12-04T23:51:23.678905Z worker ready on 127.0.0.1:34605 in 2.09s, handler /x, cores [0, 1]
2026-12-04T23:51:23.700832Z [sidecar.worker] info: worker pid 26532 ready
2026-12-04T23:51:24.000000Z [sidecar.worker] info: worker pid 26532 ready
"""


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_each_phase_ends_at_its_first_line():
    times = _log_times(LOG)
    assert times == {
        "sidecar up": _t("2026-12-04T23:51:21.498149Z"),
        "listening": _t("2026-12-04T23:51:21.510824Z"),
        "worker spawn": _t("2026-12-04T23:51:21.524734Z"),
        "worker load": _t("2026-12-04T23:51:23.678905Z"),
        "noticed": _t("2026-12-04T23:51:23.700832Z"),  # the sidecar's line, not the worker's own
    }
    assert list(times) == [p for p in PHASES if p != "routed"]


def test_a_log_without_the_worker_has_only_the_early_phases():
    assert set(_log_times(LOG.splitlines(keepends=True)[0])) == {"sidecar up"}
