"""Function users' pure parts: when they are on, where their files go, what the worker's mount
namespace exposes, and the Redis ACL rules' shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from fast_manager.function_users import (
    DEFAULT_UID_BASE,
    GPU_MPS_IDENTITY,
    RUN_ROOT,
    Isolation,
    assign_uid,
    identity,
    isolation_from_env,
    reachable_by_others,
)
from fast_manager.worker_sandbox import exposures
from fastgshare.redis_acl import (
    SIDECAR_COMMANDS,
    RedisPasswords,
    with_user,
    without_credentials,
)


@pytest.mark.parametrize("env, euid, on", [
    ({}, 0, True), ({}, 1000, False), ({"FASTGSHARE_FUNCTION_USERS": "off"}, 0, False),
    ({"FASTGSHARE_FUNCTION_USERS": "on"}, 1000, False),
])
def test_function_users_are_on_exactly_when_root(env, euid, on) -> None:
    assert (isolation_from_env(env, euid, Path("/s"), Path("/")) is not None) == on


def test_the_functions_area_is_per_state_dir_unless_configured() -> None:
    a, b = (isolation_from_env({}, 0, Path(p), Path("/")) for p in ("/s1", "/s2"))
    assert a and b and a.area != b.area and a.area.parent == RUN_ROOT
    assert a.uid_base == DEFAULT_UID_BASE and a.user_dir(7) == a.area / "fn" / "7"
    c = isolation_from_env({"FASTGSHARE_FUNCTIONS_DIR": "/x", "FASTGSHARE_FUNCTION_UID_BASE": "5"},
                           0, Path("/s1"), Path("/"))
    assert c and c.area == Path("/x") and c.uid_base == 5
    if not reachable_by_others(Path("/root")):  # 0700: a checkout there cannot host function users
        assert isolation_from_env({}, 0, Path("/s1"), Path("/root/repo")) is None


def test_mps_gpu_replicas_share_one_identity() -> None:
    assert identity("ns", "f", gpu_mps=True) == identity("ns", "g", gpu_mps=True) == GPU_MPS_IDENTITY
    assert identity("ns", "f", gpu_mps=False) != identity("ns", "g", gpu_mps=False)


def test_exposures_bind_back_only_the_children_under_a_closed_folder() -> None:
    closed = {Path("/root")}
    paths = [Path("/root/.pyenv/versions/3.11/bin/python3.11"), Path("/root/.pyenv/versions/3.11"),
             Path("/work/main/.venv"), Path("/root/venv/lib"), Path("/usr/lib/python3")]
    assert exposures(paths, lambda p: p not in closed) == (
        ("/root", "/root/.pyenv"), ("/root", "/root/venv"))
    assert exposures(paths, lambda p: True) == ()


def test_acl_file_turns_off_the_default_user_and_hides_passwords() -> None:
    text = RedisPasswords("plat-pw", "side-pw").acl_file()
    lines = {line.split()[1]: line for line in text.splitlines()}
    assert lines["default"].split()[2] == "off" and "nopass" not in text
    assert "plat-pw" not in text and "side-pw" not in text
    sidecar = lines["fastgshare-sidecar"]
    assert "-@all" in sidecar and "~*" not in sidecar and "+@all" not in sidecar
    for forbidden in ("flushall", "config", "keys", "acl", "debug", "module", "shutdown"):
        assert forbidden not in SIDECAR_COMMANDS


def test_urls_carry_and_drop_credentials() -> None:
    url = with_user("redis://old:x@127.0.0.1:6379/0", "u", "p/w")
    assert url == "redis://u:p%2Fw@127.0.0.1:6379/0"
    assert without_credentials(url) == "redis://127.0.0.1:6379/0"


def test_uids_are_unique_on_the_machine_stable_and_never_reused(tmp_path: Path) -> None:
    reg = tmp_path / "uids.json"
    a, b = Isolation(tmp_path / "a", 100), Isolation(tmp_path / "b", 100)
    a.area.mkdir()
    b.area.mkdir()
    ua, ub = assign_uid(a, "ns/f", reg), assign_uid(b, "ns/f", reg)  # two platforms, one name
    assert len({ua, ub}) == 2 and assign_uid(a, "ns/f", reg) == ua
    b.area.rmdir()  # b's platform stopped: its entry goes, its uid is not handed out again
    assert assign_uid(a, "ns/g", reg) not in (ua, ub)
    assert reg.stat().st_mode & 0o777 == 0o600


def test_a_worker_knows_who_is_on_the_other_end(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch"))
    from fastgshare_peers import _hex_endpoint, peer_uid

    assert _hex_endpoint("127.0.0.1", 5000) == "0100007F:1388"
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000  2000000001\n"
        "   1: 0100007F:D431 0100007F:1388 01 00000000:00000000 00:00000000 00000000  2000000002\n"
        "   2: 0100007F:1388 0100007F:D431 01 00000000:00000000 00:00000000 00000000  2000000001\n")
    server = ("127.0.0.1", 5000)
    assert peer_uid(("127.0.0.1", 0xD431), server, (str(table),)) == 2000000002
    assert peer_uid(("127.0.0.1", 1), server, (str(table),)) is None


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="chown needs root")
@pytest.mark.skipif(not reachable_by_others(Path(__file__).parent),
                    reason="the checkout lies under a folder other users cannot enter")
def test_a_replicas_files_are_its_users_alone(tmp_path: Path) -> None:
    import os

    from fast_manager.function_users import prepare_area, prepare_replica, remove_replica_secrets

    iso = Isolation(tmp_path / "area")
    prepare_area(iso)
    closed = tmp_path / "state"  # an upload under the state directory: others cannot enter
    (closed / "h").mkdir(parents=True)
    (closed / "h" / "handler.py").write_text("x = 1\n")
    closed.chmod(0o700)
    dirs = prepare_replica(iso, 2_000_000_555, "f-1", {"key": b"v"}, closed / "h",
                           Path(__file__).parent)
    st = os.stat(iso.user_dir(2_000_000_555))
    assert (st.st_uid, st.st_mode & 0o777) == (2_000_000_555, 0o700)
    secret = os.stat(dirs.secrets_dir / "key")
    assert (secret.st_uid, secret.st_mode & 0o777) == (2_000_000_555, 0o400)
    assert dirs.handler_dir != closed / "h" and (dirs.handler_dir / "handler.py").read_text() == "x = 1\n"
    assert os.stat(dirs.handler_dir / "handler.py").st_mode & 0o004
    assert dirs.template_dir == Path(__file__).parent  # readable where it is: used in place
    assert os.stat(iso.models_dir).st_mode & 0o7777 == 0o1777
    remove_replica_secrets(iso, "f-1")
    assert not dirs.secrets_dir.exists()
