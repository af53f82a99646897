from pathlib import Path

from tests.log_warnings import new_warnings

REDIS_PY = ("/x/redis/asyncio/client.py:276: UserWarning: retry is a redis.retry.Retry; "
            "the asyncio client needs redis.asyncio.retry.Retry")


def test_finds_a_warning_written_since_the_last_scan_and_only_once(tmp_path: Path):
    log = tmp_path / "logs" / "default" / "fn" / "r1.log"
    log.parent.mkdir(parents=True)
    log.write_text("[sidecar] ready\n")
    offsets: dict[Path, int] = {}
    assert new_warnings(tmp_path, offsets) == []
    with open(log, "a") as f:
        f.write(REDIS_PY + "\n  conn = aioredis.Redis.from_url(...)\n")
    found = new_warnings(tmp_path, offsets)
    assert len(found) == 1 and "UserWarning" in found[0] and str(log) in found[0]
    assert new_warnings(tmp_path, offsets) == []


def test_ignores_operational_log_lines_and_partial_lines(tmp_path: Path):
    log = tmp_path / "provider.log"
    log.write_text("2026-12-04 WARNING node agent: MPS is not running; SM shares are not enforced\n"
                   "1:M 04 Dec 2026 20:00:00.000 # WARNING Memory overcommit must be enabled!\n"
                   + REDIS_PY)  # no newline yet: still being written
    offsets: dict[Path, int] = {}
    assert new_warnings(tmp_path, offsets) == []
    with open(log, "a") as f:
        f.write("\n")
    assert len(new_warnings(tmp_path, offsets)) == 1
