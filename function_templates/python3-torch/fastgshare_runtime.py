"""Model sharing for python3-torch functions: ``load_shared`` maps one copy of a model's weights into
every replica of that model on the device.

A handler writes::

    from fastgshare_runtime import load_shared
    model = load_shared("resnet50", build=make_resnet).eval()

and gets the same module with and without sharing. Sharing is on when the replica has a model
identity (``FASTGSHARE_MODEL``, from the ``fastgshare/model`` annotation) and
``FASTGSHARE_MODEL_SHARING`` is not ``off``. Then the first replica that needs the model writes its
weights once into the device's store (``FASTGSHARE_MODEL_STORE_DIR``) as a safetensors file named by
the model identity and a hash of its content; every replica builds the module on the ``meta`` device
and points its parameters at a read-only mapping of that file, so the weights' pages exist once
in memory whatever the number of replicas. On a GPU, a holder process (``fast_manager.model_store_gpu``)
keeps the one device copy and replicas map it through CUDA IPC.

Shared weights are read-only by the mapping's protection: they are plain tensors viewing a
``PROT_READ`` mapping, so a forward pays nothing for sharing, and any write (an in-place torch op,
``load_state_dict``, training-mode batch norm, numpy, a raw pointer) faults and kills only the
offending replica (the runtime's faulthandler prints where); neighbours never see a modified
weight. ``FASTGSHARE_MODEL_GUARD=on`` (debugging) wraps them as ``SharedWeight`` instead, whose
``__torch_function__`` turns in-place torch ops into ``ReadOnlyWeightError`` at the price of one
Python dispatch per weight op of every forward. On a GPU (CUDA IPC) there is no page protection:
a write changes the holder's copy for every replica; the guard is the only check there.

The layout of the store (file names, locks, user records) is a contract with the node agent's
garbage collector (``fast_manager.model_store``); see ``docs/model_sharing.md``.

Stdlib, torch and the fastgshare package (which a function image installs for its sidecar); the
weights file format is ``fast_manager.weights_file`` (no safetensors package needed).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import inspect
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from fast_manager.model_store_fs import user_is_alive  # one liveness rule for replicas and GC
from fast_manager.weights_file import ModelStoreError as ModelStoreError  # re-exported
from fast_manager.weights_file import map_weights as map_weights
from fast_manager.weights_file import write_weights as write_weights

ENV_MODEL = "FASTGSHARE_MODEL"
ENV_SHARING = "FASTGSHARE_MODEL_SHARING"
ENV_STORE_DIR = "FASTGSHARE_MODEL_STORE_DIR"
ENV_GUARD = "FASTGSHARE_MODEL_GUARD"
STORE_LOCK = ".store.lock"
WEIGHTS_SUFFIX = ".safetensors"
USERS_SUFFIX = ".users"
REF_SUFFIX = ".ref"
HASH_CHARS = 16
"""Hex digits of the sha256 kept in file names (64 bits: collisions are not a practical concern)."""
RELEASE_LOCK_WAIT_S = 1.0
"""How long a replica leaving cleanly waits for the store lock before leaving cleanup to the GC."""



class ReadOnlyWeightError(RuntimeError):
    """A handler tried to modify weights that other replicas share."""


# ---- settings --------------------------------------------------------------------------------


def default_store_dir(env: Mapping[str, str]) -> Path:
    """``$FASTGSHARE_MODEL_STORE_DIR``, else ``$FASTGSHARE_STATE_DIR/models``, else /dev/shm."""
    if env.get(ENV_STORE_DIR):
        return Path(env[ENV_STORE_DIR])
    if env.get("FASTGSHARE_STATE_DIR"):
        return Path(env["FASTGSHARE_STATE_DIR"]) / "models"
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else Path(tempfile.gettempdir())
    return base / f"fastgshare-models-{os.getuid()}"


def sharing_enabled(env: Mapping[str, str]) -> bool:
    """Sharing needs a model identity and no opt-out."""
    off = env.get(ENV_SHARING, "on").strip().lower() in ("off", "0", "false", "no")
    return bool(env.get(ENV_MODEL, "").strip()) and not off


def safe_name(text: str) -> str:
    """A model identity as a file-name part: ``[A-Za-z0-9._-]`` only, never empty or hidden."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).lstrip(".")
    return out[:80] or "model"


# ---- read-only guard ---------------------------------------------------------------------------

_INPLACE_DUNDERS = frozenset({
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
    "__imod__", "__ipow__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__",
    "__irshift__",
})
_HARMLESS_UNDERSCORE = frozenset({"requires_grad_", "retain_grad", "share_memory_"})
_STAT_UPDATING = frozenset({"batch_norm", "instance_norm"})


def _is_shared(x: object) -> bool:
    return isinstance(x, SharedWeight)


def _mutates(name: str, args: tuple, kwargs: dict) -> bool:
    first = args[0] if args else None
    if _is_shared(first):
        if name in _INPLACE_DUNDERS:
            return True
        if name.endswith("_") and not name.startswith("_") and name not in _HARMLESS_UNDERSCORE:
            return True
    out = kwargs.get("out")
    if _is_shared(out) or (isinstance(out, (tuple, list)) and any(map(_is_shared, out))):
        return True
    if name in _STAT_UPDATING:  # training-mode norms update their running stats in place
        training = kwargs.get("training", kwargs.get("use_input_stats"))
        if training is None and len(args) > 5:
            training = args[5]
        stats = [kwargs.get("running_mean", args[1] if len(args) > 1 else None),
                 kwargs.get("running_var", args[2] if len(args) > 2 else None)]
        return bool(training) and any(map(_is_shared, stats))
    return False


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1


def _rewrap(out, shared_ptrs: set[int]):
    if isinstance(out, torch.Tensor) and not _is_shared(out):
        if _storage_ptr(out) in shared_ptrs:
            return out.as_subclass(SharedWeight)  # a view of shared memory stays guarded
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(_rewrap(o, shared_ptrs) for o in out)
    return out


class SharedWeight(torch.Tensor):
    """A tensor whose memory other replicas share: in-place torch ops on it (or on views of it)
    raise ``ReadOnlyWeightError``; everything else runs as on a plain tensor, and results that do
    not alias the shared memory are plain tensors (activations pay nothing)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # properties such as .data
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        if _mutates(name, args, kwargs):
            raise ReadOnlyWeightError(
                f"{name}: this weight is shared with other replicas of the model and is read-only; "
                "clone() it first, or opt out with FASTGSHARE_MODEL_SHARING=off")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            ptrs = {_storage_ptr(a) for a in (*args, *kwargs.values()) if _is_shared(a)}
        return _rewrap(out, ptrs) if ptrs else out


def guard(t: torch.Tensor) -> torch.Tensor:
    return t if _is_shared(t) else t.as_subclass(SharedWeight)


# ---- modules ---------------------------------------------------------------------------------


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not), tied ones under each of their names."""
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        out[name] = p.detach()
    for name, b in module.named_buffers(remove_duplicate=False):
        if b is not None:
            out[name] = b.detach()
    return out


def assign_tensors(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                   read_only: bool, guarded: bool = False) -> torch.nn.Module:
    """Point the module's parameters and buffers at ``tensors`` (no copy); all must be provided.
    ``read_only``: shared memory (no gradients); ``guarded``: also wrapped as ``SharedWeight``."""
    missing = []
    for name, current in list(module_tensors(module).items()):
        if name not in tensors:
            missing.append(name)
            continue
        new = tensors[name]
        if tuple(new.shape) != tuple(current.shape):
            raise ModelStoreError(f"{name}: stored shape {list(new.shape)} != module's "
                                  f"{list(current.shape)}")
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        new = guard(new) if guarded else new
        if leaf in owner._parameters:
            requires_grad = False if read_only else owner._parameters[leaf].requires_grad
            owner._parameters[leaf] = torch.nn.Parameter(new, requires_grad=requires_grad)
        else:
            owner._buffers[leaf] = new
    if missing:
        raise ModelStoreError(f"no stored tensor for {missing[:5]} ({len(missing)} missing)")
    left = [f"{type(m).__name__}.{k}" for m in module.modules() for k, v in vars(m).items()
            if isinstance(v, torch.Tensor) and v.is_meta]
    if left:
        raise ModelStoreError(f"tensors built outside parameters/buffers stay on meta: {left[:5]}; "
                              "register them as buffers so the store can share them")
    return module


_META_INIT_METHODS = frozenset({
    "normal_", "uniform_", "fill_", "zero_", "random_", "exponential_", "bernoulli_", "geometric_",
    "log_normal_", "cauchy_", "erfinv_", "clamp_", "clamp_min_", "clamp_max_", "mul_", "add_",
    "sub_", "div_", "copy_", "fmod_", "abs_", "sign_", "sqrt_", "exp_", "neg_",
})
"""Value-only in-place ops (no shape or stride change): on a ``meta`` tensor they have no effect."""
_META_INIT_FACTORIES = frozenset({"eye", "normal", "rand", "randn", "randint", "full"})
"""Factories that initialisation code calls with ``out=`` the weight (same shape)."""
_META_VIA_CPU = frozenset({"arange", "linspace", "logspace", "eye"})
"""Factories of small index buffers (``position_ids``) whose meta kernels are Python references:
computed on the CPU and moved to ``meta`` (their values are replaced from the store anyway)."""
_META_SAME_SHAPE = frozenset({"tril", "triu", "masked_fill"})
"""Out-of-place ops on a meta tensor that keep its shape and dtype (causal-mask buffers)."""


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Skips weight initialisation on ``meta`` tensors: it computes nothing there, and some of it
    is not free. ``Tensor.normal_`` on meta runs a Python reference (``torch._refs.normal_``) that
    imports ``torch._dynamo`` and with it sympy: ~70 MiB of private memory and ~2.5 s per replica
    (measured on BERT's embeddings, torch 2.13), i.e. an extra shared replica cost more than an
    unshared one's non-weight memory. ``torch.nn.init`` functions and the value-only in-place
    methods they use return their meta tensor unchanged; a few buffer factories that would run
    such references too (``_META_VIA_CPU``, ``_META_SAME_SHAPE``) are computed without them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        first = args[0] if args else kwargs.get("tensor")
        if isinstance(first, torch.Tensor) and first.is_meta and (
                getattr(func, "__module__", None) == "torch.nn.init" or name in _META_INIT_METHODS):
            return first
        out = kwargs.get("out")
        if isinstance(out, torch.Tensor) and out.is_meta and name in _META_INIT_FACTORIES:
            return out  # nn.init.eye_: torch.eye(*shape, out=tensor)
        if name in _META_VIA_CPU and out is None and kwargs.get("device") is None and not any(
                isinstance(a, torch.Tensor) for a in args):
            return func(*args, **kwargs, device="cpu").to("meta")
        if name in _META_SAME_SHAPE and isinstance(first, torch.Tensor) and first.is_meta:
            return torch.empty(tuple(first.shape), dtype=first.dtype, device="meta")
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` on the ``meta`` device, its weight initialisation skipped (``_SkipMetaInit``)."""
    with torch.device("meta"), _SkipMetaInit():
        return build()


# ---- the store -------------------------------------------------------------------------------


def open_lock_file(path: Path) -> int:
    """A descriptor of ``path`` to ``flock``, made if absent. Read-only: a lock needs no write
    access, and as root each function runs as a user of its own, so the store's lock file is
    usually another function's (opened read-write, the second function to load a model was
    refused and crash-looped)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        pass
    try:
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o644)
    except FileExistsError:  # made by another replica meanwhile
        return os.open(path, os.O_RDONLY)


@contextlib.contextmanager
def _flock(path: Path, wait_s: float | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields False if it could not be had within ``wait_s``."""
    fd = open_lock_file(path)
    try:
        if wait_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.02)
        yield True
    finally:
        os.close(fd)


class _Lease:
    """This process's claim on one weights file: an open, locked user record."""

    def __init__(self, store: ModelStore, weights: Path, user_file: Path, fd: int) -> None:
        self.store, self.weights, self.user_file, self._fd = store, weights, user_file, fd

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.user_file.unlink()
        os.close(self._fd)
        self._fd = -1
        self.store.collect(self.weights, RELEASE_LOCK_WAIT_S)


class ModelStore:
    """One device's store directory, as a replica sees it."""

    def __init__(self, root: Path, replica: str, device: str) -> None:
        self.root = Path(root)
        self.replica = replica
        self.device = device
        self.leases: list[_Lease] = []

    def _lock(self, wait_s: float | None = None):
        self.root.mkdir(parents=True, exist_ok=True)
        return _flock(self.root / STORE_LOCK, wait_s)

    def acquire(self, identity: str, fingerprint: str,
                weights: Callable[[], Mapping[str, torch.Tensor]]) -> tuple[Path, bool]:
        """The weights file for (identity, fingerprint), written now if absent, and this process
        registered as its user; (path, True) when this call wrote it."""
        stem = safe_name(identity)
        ref = self.root / f"{stem}@{fingerprint[:HASH_CHARS]}{REF_SUFFIX}"
        with self._lock():
            path = self._resolve(ref)
            created = path is None
            if path is None:
                tmp = self.root / f".{stem}.{os.getpid()}.tmp"
                digest = write_weights(tmp, weights(), {"fastgshare.model": identity,
                                                       "fastgshare.fingerprint": fingerprint})
                path = self.root / f"{stem}-{digest[:HASH_CHARS]}{WEIGHTS_SUFFIX}"
                if path.exists():  # same content under another fingerprint: keep the first file
                    tmp.unlink()
                else:
                    os.chmod(tmp, 0o444)
                    os.replace(tmp, path)
                _write_atomic(ref, path.name)
            self.leases.append(self._register(path, identity))
        return path, created

    def _resolve(self, ref: Path) -> Path | None:
        try:
            path = self.root / ref.read_text().strip()
        except FileNotFoundError:
            return None
        return path if path.is_file() else None

    def _register(self, path: Path, identity: str) -> _Lease:
        users = path.with_suffix(USERS_SUFFIX)
        try:  # every function that uses the model records itself here, each as its own user
            users.mkdir()
            os.chmod(users, 0o1777)
        except FileExistsError:
            pass
        # One record per claim: a process that loads two models (or one twice) holds two locks.
        user_file = users / f"{safe_name(self.replica)}@{os.getpid()}-{len(self.leases)}.json"
        fd = os.open(user_file, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"model": identity, "replica": self.replica, "pid": os.getpid(),
                                 "device": self.device, "bytes": path.stat().st_size,
                                 "file": path.name}).encode())
        return _Lease(self, path, user_file, fd)

    def collect(self, weights: Path, wait_s: float | None = None) -> bool:
        """Delete ``weights`` (and its refs and user records) if no live replica uses it."""
        with self._lock(wait_s) as locked:
            if not locked:
                return False
            return collect_unlocked(self.root, weights)

    def release_all(self) -> None:
        while self.leases:
            self.leases.pop().release()


def collect_unlocked(root: Path, weights: Path) -> bool:
    """The GC step for one weights file; the caller holds the store lock."""
    users = weights.with_suffix(USERS_SUFFIX)
    live = False
    for user_file in sorted(users.glob("*.json")) if users.is_dir() else []:
        if user_is_alive(user_file):
            live = True
        else:
            with contextlib.suppress(FileNotFoundError):
                user_file.unlink()
    if live:
        return False
    for ref in root.glob(f"*{REF_SUFFIX}"):
        with contextlib.suppress(OSError):
            if ref.read_text().strip() == weights.name:
                ref.unlink()
    with contextlib.suppress(FileNotFoundError):
        weights.unlink()
    with contextlib.suppress(OSError):
        users.rmdir()
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_store: ModelStore | None = None


def _process_store(env: Mapping[str, str]) -> ModelStore:
    global _store
    if _store is None:
        replica = env.get("FASTGSHARE_REPLICA") or f"pid{os.getpid()}"
        _store = ModelStore(default_store_dir(env), replica, env.get("FASTGSHARE_DEVICE", "cpu:0"))
        atexit.register(_store.release_all)
    return _store


def release_shared() -> None:
    """Give up this process's claims now (the runtime calls it on SIGTERM; atexit does too)."""
    if _store is not None:
        _store.release_all()


def default_fingerprint(model_id: str, build: Callable, version: str | None) -> str:
    """What identifies a model's weights before they exist: its name in the handler plus the
    caller's ``version``, else the source file of the code that builds them (a changed handler
    never maps stale weights)."""
    digest = hashlib.sha256(f"id:{model_id}\n".encode())
    if version is not None:
        digest.update(f"v:{version}".encode())
    else:
        try:
            digest.update(Path(inspect.getsourcefile(build) or "").read_bytes())
        except (OSError, TypeError):
            digest.update(repr(build).encode())
    return digest.hexdigest()


def load_shared(model_id: str, build: Callable[[], torch.nn.Module],
                weights: Callable[[], Mapping[str, torch.Tensor]] | None = None, *,
                version: str | None = None, device: str = "cpu",
                env: Mapping[str, str] | None = None) -> torch.nn.Module:
    """The model, its weights shared with every other replica of it on this device when sharing
    is on; exactly ``build()`` (plus ``weights()``) when it is off.

    ``build()`` constructs the module; under sharing it runs on the ``meta`` device, so it must not
    read weights itself. ``weights()`` returns every parameter and buffer by name (default: those of
    a ``build()`` on the CPU); only the replica that writes the store file calls it. ``version``
    identifies the weights before they exist (default: the source of ``build``'s file).
    ``device`` ``cuda`` maps the GPU holder's copy through CUDA IPC when one answers.

    The store identity is the replica's ``fastgshare/model``; ``model_id`` names this model within
    the handler (a function with two models calls this twice) and enters the fingerprint.
    """
    env = os.environ if env is None else env
    if not sharing_enabled(env):
        if weights is None:
            return build()
        return assign_tensors(build_on_meta(build), dict(weights()), read_only=False)
    if weights is None:
        def weights() -> dict[str, torch.Tensor]:
            return module_tensors(build())
    identity = env[ENV_MODEL].strip()
    store = _process_store(env)
    path, _ = store.acquire(identity, default_fingerprint(model_id, build, version), weights)
    guarded = env.get(ENV_GUARD, "off").strip().lower() in ("on", "1", "true", "yes")
    if device.startswith("cuda"):
        from_gpu = _gpu_tensors(env, path)
        if from_gpu is not None:
            return assign_tensors(build_on_meta(build), from_gpu, read_only=True, guarded=guarded)
        print(f"fastgshare: no GPU model holder for {identity}; mapping the CPU copy",
              file=sys.stderr, flush=True)
    tensors, _ = map_weights(path)
    return assign_tensors(build_on_meta(build), tensors, read_only=True, guarded=guarded)


def _gpu_tensors(env: Mapping[str, str], path: Path) -> dict[str, torch.Tensor] | None:
    """The GPU holder's tensors for ``path`` through CUDA IPC, or None if no holder answers.

    Ran on an NVIDIA H200 (bench/gpu/model_sharing_gpu.py, 2026-11-27); no GPU on the development machine.
    """
    import pickle
    import socket

    uuid = env.get("FASTGSHARE_DEVICE", "").partition(":")[2]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uuid)
    sock_path = Path(env.get("FASTGSHARE_MODEL_GPU_SOCKET") or path.parent / f"gpu-{safe}.sock")
    try:
        owner = sock_path.stat().st_uid
    except OSError:
        return None
    if owner not in (0, os.geteuid()):  # what it sends is unpickled: only the node agent's
        print(f"fastgshare: ignoring {sock_path}: owned by uid {owner}, not the node agent",
              file=sys.stderr, flush=True)
        return None
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock_path))
        s.sendall(json.dumps({"file": str(path)}).encode() + b"\n")
        f = s.makefile("rb")
        n = int(f.readline())
        reduced = pickle.loads(f.read(n))  # noqa: S301 - a local socket owned by our node agent
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        print(f"fastgshare: GPU model holder failed: {e}", file=sys.stderr, flush=True)
        return None
    _gpu_connections.append(s)  # the holder counts this replica as a user while it stays open
    return {name: fn(*args) for name, (fn, args) in reduced.items()}


_gpu_connections: list = []
