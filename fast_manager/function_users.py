"""Who a function's workers run as, and what they can reach (local mode, platform run as root).

A function's code is someone else's: when the platform runs as root, each function's workers run
under a numeric uid of their own (no ``/etc/passwd`` entry needed), handed out once per function
on its first start from one registry for the whole machine (``UID_REGISTRY``: two platforms on
one machine, each with its own Redis, must not hand out the same uid), never reused, and
recorded in the platform's Redis (``keys.function_uids``) for status and tests. The sidecar stays
the platform's (it holds the Redis credential) and drops the worker to that uid between fork and
exec (``fast_manager.sidecar_worker``).

What a worker may reach lives in the *functions area*, outside the state directory (which, with
the admin password, the Redis credentials and data, stays the platform's alone)::

    AREA/              0711 root   (traversable, not listable)
      models/          1777 root   the model store (sticky: nobody replaces another's files)
      fn/              0711 root
        <uid>/         0700 uid    one function user's: nobody else gets in
          home/                    HOME of its workers
          secrets/<replica>/       its secrets, 0400
          code/<hash>/             a copy of its handler or template when the original is not
                                   readable by others (an upload under the state directory)

GPU replicas under MPS share one uid (``GPU_MPS_IDENTITY``): an MPS control daemon serves one
user at a time and would serialise the others, which is exactly the sharing this platform
exists for. Functions on one MPS GPU are therefore kept from the platform but not from each
other (docs/security.md). Must not run in a sidecar: the node agent (root) calls it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from fastgshare import keys

RUN_ROOT = Path("/run/fastgshare")
"""Where the functions area of a state directory goes when ``FASTGSHARE_FUNCTIONS_DIR`` is unset."""
UID_REGISTRY = RUN_ROOT / "uids.json"
"""The machine's function uids: ``{"next": n, "uids": {"<area>:<identity>": uid}}`` (root, 0600)."""
DEFAULT_UID_BASE = 2_000_000_000
"""Function uids are this plus 1, 2, ... (``FASTGSHARE_FUNCTION_UID_BASE``): far above the ranges
distributions give to users and to container user namespaces (``/etc/subuid``)."""
GPU_MPS_IDENTITY = "*gpu-mps"
"""The one identity of every worker on an MPS-shared GPU (see the module docstring)."""
_OFF = ("off", "0", "false", "no")


@dataclass(frozen=True)
class Isolation:
    """Where function users' files go and where their uids start."""

    area: Path
    """The functions area (layout in the module docstring)."""
    uid_base: int = DEFAULT_UID_BASE
    """Function uids are ``uid_base + n``, n = 1, 2, ..."""

    @property
    def models_dir(self) -> Path:
        return self.area / "models"

    def user_dir(self, uid: int) -> Path:
        return self.area / "fn" / str(uid)


log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def reachable_by_others(path: Path) -> bool:
    """Whether another user can pass through every folder down to ``path`` (o+x on each)."""
    try:
        return all(os.stat(d).st_mode & 0o001 for d in (path, *path.parents))
    except OSError:
        return False


def isolation_from_env(env: Mapping[str, str], euid: int, state_dir: Path,
                       project_root: Path = PROJECT_ROOT) -> Isolation | None:
    """Function users are on when the platform runs as root, unless
    ``FASTGSHARE_FUNCTION_USERS=off``, or the project itself lies where no other user can enter
    (a checkout under a 0700 folder: a function user could not reach the worker runtime); None:
    workers run as the platform's user (single-user trust model, README)."""
    if euid != 0 or env.get("FASTGSHARE_FUNCTION_USERS", "").strip().lower() in _OFF:
        return None
    if not reachable_by_others(project_root):
        log.warning("function users are off: %s lies under a folder other users cannot enter; "
                    "workers run as the platform's user (single-user trust model)", project_root)
        return None
    raw = env.get("FASTGSHARE_FUNCTIONS_DIR", "").strip()
    tag = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    area = Path(raw) if raw else RUN_ROOT / tag
    base = int(env.get("FASTGSHARE_FUNCTION_UID_BASE", "").strip() or DEFAULT_UID_BASE)
    return Isolation(area, base)


def identity(namespace: str, name: str, gpu_mps: bool) -> str:
    """Whose uid a replica's worker gets: the function's, or the shared MPS one."""
    return GPU_MPS_IDENTITY if gpu_mps else f"{namespace}/{name}"


def _taken_by_system(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def assign_uid(iso: Isolation, ident: str, registry: Path = UID_REGISTRY) -> int:
    """The uid of ``ident`` in the functions area ``iso.area``, handed out on first use from the
    machine's registry (under ``flock``: node agents of several platforms may ask at once).
    Entries of areas that are gone (their platform stopped) are dropped; their uids are not
    handed out again (the counter only grows)."""
    registry.parent.mkdir(parents=True, exist_ok=True)
    key = f"{iso.area}:{ident}"
    fd = os.open(registry, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        raw = f.read()
        data = json.loads(raw) if raw.strip() else {}
        uids: dict[str, int] = {k: int(v) for k, v in data.get("uids", {}).items()
                                if k == key or Path(k.rpartition(":")[0]).exists()}
        if key not in uids:
            n = int(data.get("next", 0))
            while True:
                n += 1
                if not _taken_by_system(iso.uid_base + n):
                    break
            uids[key] = iso.uid_base + n
            data["next"] = n
        data["uids"] = uids
        f.seek(0)
        f.truncate()
        f.write(json.dumps(data, indent=1))
        return uids[key]


def record_uid(client: redis.Redis, ident: str, uid: int) -> None:
    """Note in the platform's Redis which uid a function's workers run as."""
    client.hset(keys.function_uids(), ident, uid)


def prepare_area(iso: Isolation) -> None:
    """Create the functions area with its modes (idempotent; modes are reset every time)."""
    ours = [(iso.area, 0o711), (iso.area / "fn", 0o711), (iso.models_dir, 0o1777)]
    if iso.area.parent == RUN_ROOT:  # the default place; a configured one's parents are not ours
        ours.insert(0, (RUN_ROOT, 0o711))
    for path, mode in ours:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, 0, 0)
        path.chmod(mode)


def readable_by_anyone(path: Path) -> bool:
    """Whether every folder above ``path`` lets others through and ``path`` lets them read
    (mode bits only; what a uid with no groups gets)."""
    path = Path(path).resolve()
    try:
        for parent in reversed(path.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(path).st_mode
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    path.chmod(mode)


def _readable_copy(src: Path, user_dir: Path) -> Path:
    """``src`` itself when others can read it, else a root-owned, world-readable copy inside the
    user's own folder (refreshed at each start: an image re-registered under the same path)."""
    if readable_by_anyone(src):
        return src
    dest = user_dir / "code" / hashlib.sha256(str(Path(src).resolve()).encode()).hexdigest()[:16]
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, 0o644)
    (user_dir / "code").chmod(0o755)
    return dest


@dataclass(frozen=True)
class WorkerDirs:
    """What one replica's worker is given."""

    home: Path
    secrets_dir: Path
    handler_dir: Path
    template_dir: Path


def prepare_replica(iso: Isolation, uid: int, replica_id: str, secrets: Mapping[str, bytes],
                    handler_dir: Path, template_dir: Path) -> WorkerDirs:
    """The user's folder (0700, theirs), its home, this replica's secrets (0400, theirs), and
    readable handler and template folders."""
    user_dir = iso.user_dir(uid)
    user_dir.mkdir(parents=True, exist_ok=True)
    _own(user_dir, uid, uid, 0o700)
    home = user_dir / "home"
    home.mkdir(exist_ok=True)
    _own(home, uid, uid, 0o700)
    (user_dir / "secrets").mkdir(exist_ok=True)
    _own(user_dir / "secrets", uid, uid, 0o700)
    sec = user_dir / "secrets" / replica_id
    sec.mkdir(exist_ok=True)
    for name, raw in secrets.items():
        path = sec / name
        path.write_bytes(raw)
        _own(path, uid, uid, 0o400)
    _own(sec, uid, uid, 0o500)
    return WorkerDirs(home, sec, _readable_copy(Path(handler_dir), user_dir),
                      _readable_copy(Path(template_dir), user_dir))


def remove_replica_secrets(iso: Isolation, replica_id: str) -> None:
    """Delete a stopped replica's copy of its secrets (replica ids are unique on the node)."""
    for folder in (iso.area / "fn").glob(f"*/secrets/{replica_id}"):
        shutil.rmtree(folder, ignore_errors=True)
