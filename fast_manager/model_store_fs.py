"""The node agent's side of a device's model store directory: scan it and collect garbage.

Replicas write and map the files (``function_templates/python3-torch/fastgshare_runtime.py``); this
module only reads them and deletes what no live replica uses. The layout is the contract between
the two (``docs/model_sharing.md``):

- ``<identity>-<hash16>.safetensors``: the weights, written once, read-only;
- ``<identity>-<hash16>.users/<replica>@<pid>.json``: one record per user, which its process holds
  locked (``flock``) for as long as it lives: the kernel drops the lock when the process exits,
  crashes included, so a record whose lock can be taken belongs to a dead replica;
- ``<identity>@<fingerprint16>.ref``: the name of the weights file for that fingerprint;
- ``.store.lock``: held by whoever creates, registers or deletes.

No torch import: the node agent runs without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fast_manager.model_store import StoredModel

STORE_LOCK = ".store.lock"
WEIGHTS_SUFFIX = ".safetensors"
USERS_SUFFIX = ".users"
REF_SUFFIX = ".ref"
MODEL_STORE_DIR_ENV = "FASTGSHARE_MODEL_STORE_DIR"


def store_dir_from_env(env: dict[str, str] | os._Environ[str]) -> Path | None:
    """The store directory replicas use: ``$FASTGSHARE_MODEL_STORE_DIR``, else
    ``$FASTGSHARE_STATE_DIR/models``; None if neither is set."""
    if env.get(MODEL_STORE_DIR_ENV):
        return Path(env[MODEL_STORE_DIR_ENV])
    if env.get("FASTGSHARE_STATE_DIR"):
        return Path(env["FASTGSHARE_STATE_DIR"]) / "models"
    return None


@dataclass(frozen=True)
class GcReport:
    """What one collection did."""

    deleted_files: tuple[str, ...] = ()
    """Weights files deleted because no live replica used them."""
    dead_users: tuple[str, ...] = ()
    """User records of replicas that died without releasing (crashes, SIGKILL)."""
    skipped: bool = False
    """True when the store lock was busy (a replica writing a model): try again next round."""


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    try:  # read-only: the lock file is usually a function user's (see the runtime's open_lock_file)
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def user_is_alive(user_file: Path) -> bool:
    """Alive while its owner holds the record's lock."""
    try:
        fd = os.open(user_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _read_user(user_file: Path) -> dict[str, object]:
    try:
        data = json.loads(user_file.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _model_of(weights: Path) -> str:
    """The identity recorded in the file's safetensors metadata (the file name as a fallback)."""
    try:
        with open(weights, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(min(n, 1 << 24))).get("__metadata__") or {}
        return str(meta.get("fastgshare.model") or weights.stem.rsplit("-", 1)[0])
    except (OSError, ValueError):
        return weights.stem.rsplit("-", 1)[0]


def scan(root: Path) -> list[StoredModel]:
    """Every weights file in the store with its live users (a read; deletes nothing)."""
    out = []
    for weights in sorted(Path(root).glob(f"*{WEIGHTS_SUFFIX}")):
        users_dir = weights.with_suffix(USERS_SUFFIX)
        live, devices = [], []
        for user_file in sorted(users_dir.glob("*.json")) if users_dir.is_dir() else []:
            if user_is_alive(user_file):
                rec = _read_user(user_file)
                live.append(str(rec.get("replica") or user_file.stem))
                if rec.get("device"):
                    devices.append(str(rec["device"]))
        try:
            size = weights.stat().st_size
        except FileNotFoundError:
            continue
        out.append(StoredModel(weights.name, _model_of(weights), size, tuple(live),
                               tuple(devices)))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(root: Path) -> GcReport:
    """Delete user records of dead replicas, then weights (with their refs) that nobody uses.

    Never blocks: if a replica holds the store lock (it is writing a model), nothing is done.
    """
    root = Path(root)
    if not root.is_dir():
        return GcReport()
    with _try_lock(root / STORE_LOCK) as locked:
        if not locked:
            return GcReport(skipped=True)
        deleted, dead = [], []
        for weights in sorted(root.glob(f"*{WEIGHTS_SUFFIX}")):
            users_dir = weights.with_suffix(USERS_SUFFIX)
            live = False
            for user_file in sorted(users_dir.glob("*.json")) if users_dir.is_dir() else []:
                if user_is_alive(user_file):
                    live = True
                else:
                    dead.append(f"{weights.name}:{user_file.stem}")
                    with contextlib.suppress(FileNotFoundError):
                        user_file.unlink()
            if live:
                continue
            with contextlib.suppress(FileNotFoundError):
                weights.unlink()
            with contextlib.suppress(OSError):
                users_dir.rmdir()
            deleted.append(weights.name)
        for ref in root.glob(f"*{REF_SUFFIX}"):  # refs whose weights are gone
            with contextlib.suppress(OSError):
                if not (root / ref.read_text().strip()).is_file():
                    ref.unlink()
        for users_dir in root.glob(f"*{USERS_SUFFIX}"):  # left by a crash between two steps
            if not users_dir.with_suffix(WEIGHTS_SUFFIX).exists():
                for f in users_dir.glob("*.json"):
                    if not user_is_alive(f):
                        f.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    users_dir.rmdir()
        for tmp in root.glob(".*.tmp"):  # a writer that died mid-write: ".<stem>.<pid>.tmp"
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
        return GcReport(tuple(deleted), tuple(dead))
