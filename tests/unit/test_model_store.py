"""The model store in one process: file format, read-only guard, sharing on/off, GC and usage."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from fast_manager.model_store import ModelUsage, StoredModel, usage_by_device, usage_from_json, usage_to_json
from fast_manager.model_store_fs import collect, scan
from fastgshare.errors import ValidationError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "function_templates" / "python3-torch"))
import fastgshare_runtime as fr  # noqa: E402  (the template's module, a script folder)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)
        self.head = torch.nn.Linear(3, 3, bias=False)
        self.register_buffer("scale", torch.tensor(0.5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.bn(self.conv(x)).flatten(1))) * self.scale


def build() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"FASTGSHARE_MODEL": "tiny-seed0", "FASTGSHARE_MODEL_STORE_DIR": str(tmp_path / "store"),
            "FASTGSHARE_REPLICA": "r1", "FASTGSHARE_DEVICE": "cpu:0"}


@pytest.fixture(autouse=True)
def _fresh_store():
    fr._store = None
    yield
    fr.release_shared()
    fr._store = None


def _mapped_file(ptr: int) -> str:
    """The file behind the mapping that holds address ``ptr`` in this process ('' if anonymous)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= ptr < hi:
            return fields[5] if len(fields) > 5 else ""
    return ""


def _x() -> torch.Tensor:
    return torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def test_file_is_safetensors_with_tied_weights_stored_once(tmp_path: Path) -> None:
    from safetensors import safe_open

    m = build()
    m.head.weight = m.fc.weight if m.fc.weight.shape == m.head.weight.shape else m.head.weight
    tensors = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(3,
               dtype=torch.bfloat16), "i": torch.tensor([1, 2], dtype=torch.int64)}
    tensors["a_tied"] = tensors["a"]
    digest = fr.write_weights(tmp_path / "w.safetensors", tensors, {"fastgshare.model": "m"})
    assert len(digest) == 64
    with safe_open(tmp_path / "w.safetensors", framework="pt") as f:  # the real reader agrees
        assert set(f.keys()) == {"a", "b", "i"}
        assert torch.equal(f.get_tensor("b"), tensors["b"])
        assert f.metadata()["fastgshare.model"] == "m"
    mapped, meta = fr.map_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(mapped[k], v) for k, v in tensors.items())
    assert mapped["a_tied"].data_ptr() == mapped["a"].data_ptr()
    again = fr.write_weights(tmp_path / "w2.safetensors", tensors, {"fastgshare.model": "m"})
    assert again == digest  # content-addressed: same tensors, same name


def test_shared_model_matches_build_and_maps_one_file(env: dict[str, str]) -> None:
    a = fr.load_shared("tiny", build, env=env).eval()
    b = fr.load_shared("tiny", build, env=env).eval().to("cpu")
    ref = build().eval()
    with torch.inference_mode():
        assert torch.equal(a(_x()), ref(_x())) and torch.equal(b(_x()), ref(_x()))
    store = Path(env["FASTGSHARE_MODEL_STORE_DIR"])
    [weights] = store.glob("*.safetensors")
    for m in (a, b):  # both map the one file (no private copy)
        assert _mapped_file(m.fc.weight.data_ptr()) == str(weights)
        assert " r--s " in next(line for line in Path("/proc/self/maps").read_text().splitlines()
                                if line.endswith(str(weights)))  # read-only, shared mapping
    # No guard per forward: plain parameters over the read-only mapping, no __torch_function__.
    assert type(a.fc.weight) is torch.nn.Parameter and not a.fc.weight.requires_grad
    assert not torch.overrides.has_torch_function((a.fc.weight, a.conv.weight))
    files = sorted(p.name for p in store.glob("*.safetensors"))
    assert len(files) == 1 and files[0].startswith("tiny-seed0-")
    assert os.stat(store / files[0]).st_mode & 0o222 == 0  # the file itself is read-only
    [model] = scan(store)
    assert model.model == "tiny-seed0" and model.live_users == ("r1", "r1")


@pytest.mark.parametrize("write", [
    lambda m: m.fc.weight.add_(1),
    lambda m: m.fc.weight.data.mul_(2),
    lambda m: m.fc.bias.copy_(torch.zeros(3)),
    lambda m: m.conv.weight.view(-1)[:3].fill_(0),
    lambda m: m.fc.weight.t().zero_(),
    lambda m: m.fc.weight.__setitem__(0, 1.0),
    lambda m: torch.add(torch.zeros(3), 1, out=m.fc.bias),
    lambda m: m.load_state_dict(build().state_dict()),
    lambda m: m.train()(_x()),  # batch norm in training mode updates its running stats in place
], ids=["add_", "data.mul_", "copy_", "view.fill_", "t.zero_", "setitem", "out=", "load_state_dict",
        "train-mode-bn"])
def test_with_the_guard_writes_to_shared_weights_raise(env: dict[str, str], write) -> None:
    m = fr.load_shared("tiny", build, env=env | {"FASTGSHARE_MODEL_GUARD": "on"}).eval()
    with torch.no_grad(), pytest.raises((fr.ReadOnlyWeightError, RuntimeError),
                                        match="shared with other replicas"):
        write(m)
    ref = build().eval()
    with torch.inference_mode():
        assert torch.equal(m.eval()(_x()), ref(_x()))  # nothing changed


WRITE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import faulthandler, torch
import fastgshare_runtime as fr
faulthandler.enable()
torch.manual_seed(0)
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
m = fr.load_shared("tiny", build, env={"FASTGSHARE_MODEL": "w-seed0",
                                       "FASTGSHARE_MODEL_STORE_DIR": sys.argv[2]}).eval()
with torch.inference_mode():
    m(torch.ones(1, 3, 8, 8))  # reading is fine
print("read ok", flush=True)
with torch.no_grad():
    {write}
print("WRITTEN", flush=True)
"""


@pytest.mark.parametrize("write", [
    "m[0].weight.add_(1)",
    "m[0].bias.copy_(torch.zeros(4))",
    "m.load_state_dict(build().state_dict())",
    "m.train()(torch.ones(2, 3, 8, 8))",  # training-mode batch norm updates its running stats
    "m[0].weight.detach().numpy()[0, 0, 0, 0] = 1.0",
])
def test_without_the_guard_a_write_to_shared_weights_fails_loudly(tmp_path: Path, write) -> None:
    """The default: no Python check per op; the mapping is PROT_READ, so any write is a
    segmentation fault of the writing process (the worker's faulthandler says where)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", WRITE_SCRIPT.replace("{write}", write),
         str(REPO / "function_templates" / "python3-torch"), str(tmp_path / "store")],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "read ok" in proc.stdout and "WRITTEN" not in proc.stdout
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert proc.returncode == -11 or "read-only" in proc.stderr or "Segmentation" in proc.stderr, \
        (proc.returncode, proc.stderr[-2000:])


def test_reads_and_private_copies_still_work(env: dict[str, str]) -> None:
    m = fr.load_shared("tiny", build, env=env).eval()
    w = m.fc.weight.clone()
    w.add_(1)  # a private copy is a plain tensor
    assert type(w) is torch.Tensor and torch.allclose(w - 1, build().fc.weight.detach(), atol=1e-6)
    with torch.inference_mode():
        y = m(_x())
    assert type(y) is torch.Tensor  # activations are not guarded
    assert float(m.fc.weight.sum()) == pytest.approx(float(build().fc.weight.detach().sum()))


def test_opt_out_is_plain_build(env: dict[str, str]) -> None:
    for off in ({"FASTGSHARE_MODEL_SHARING": "off"}, {"FASTGSHARE_MODEL": ""}):
        m = fr.load_shared("tiny", build, env={**env, **off})
        assert type(m.fc.weight) is torch.nn.Parameter
        with torch.no_grad():
            m.fc.weight.add_(1)  # the replica's own copy: writable
    assert not Path(env["FASTGSHARE_MODEL_STORE_DIR"]).exists()


def test_weights_fn_and_version_name_the_store_entry(env: dict[str, str]) -> None:
    calls = []

    def weights():
        calls.append(1)
        return fr.module_tensors(build())

    a = fr.load_shared("tiny", build, weights, version="v1", env=env)
    b = fr.load_shared("tiny", build, weights, version="v1", env=env)
    assert calls == [1]  # only the writer materialises the weights
    assert _mapped_file(a.fc.weight.data_ptr()) == _mapped_file(b.fc.weight.data_ptr())
    c = fr.load_shared("tiny", build, weights, version="v2", env=env)  # same content, new version
    assert calls == [1, 1]
    store = Path(env["FASTGSHARE_MODEL_STORE_DIR"])
    assert len(list(store.glob("*.safetensors"))) == 1 and len(list(store.glob("*.ref"))) == 2
    assert _mapped_file(c.fc.weight.data_ptr()) == _mapped_file(a.fc.weight.data_ptr())


def test_release_frees_the_file_and_gc_removes_dead_users(env: dict[str, str]) -> None:
    fr.load_shared("tiny", build, env=env)
    store = Path(env["FASTGSHARE_MODEL_STORE_DIR"])
    [weights] = store.glob("*.safetensors")
    users = weights.with_suffix(".users")
    (users / "ghost@999999.json").write_text(json.dumps({"replica": "ghost", "device": "cpu:0"}))
    report = collect(store)  # the ghost holds no lock: dead; r1 is alive: the file stays
    assert report.dead_users == (f"{weights.name}:ghost@999999",) and weights.exists()
    assert [m.live_users for m in scan(store)] == [("r1",)]
    fr.release_shared()  # the last user leaves: the file goes at once
    assert not weights.exists() and not users.exists() and not list(store.glob("*.ref"))
    assert collect(store).deleted_files == ()


def test_gc_skips_while_a_writer_holds_the_store_lock(env: dict[str, str]) -> None:
    store = Path(env["FASTGSHARE_MODEL_STORE_DIR"])
    store.mkdir(parents=True)
    with fr._flock(store / fr.STORE_LOCK):
        assert collect(store).skipped


def test_meta_leftovers_are_refused(env: dict[str, str]) -> None:
    class Bad(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.table = torch.ones(2)  # neither parameter nor buffer: cannot be shared

    with pytest.raises(fr.ModelStoreError, match="register them as buffers"):
        fr.load_shared("bad", Bad, env=env)


def test_usage_by_device_and_codec() -> None:
    models = [StoredModel("a-1.safetensors", "a", 100, ("r1", "r2"), ("cpu:0", "cpu:0")),
              StoredModel("a-2.safetensors", "a", 50, ("r3",), ("gpu:X",)),
              StoredModel("b-1.safetensors", "b", 10, (), ()),
              StoredModel("c-1.safetensors", "c", 7, ("r4",), ())]
    usage = usage_by_device(models, "cpu:0")
    assert usage == {"cpu:0": {"a": ModelUsage(100, 2, ("a-1.safetensors",)),
                               "c": ModelUsage(7, 1, ("c-1.safetensors",))},
                     "gpu:X": {"a": ModelUsage(50, 1, ("a-2.safetensors",))}}
    u = usage["cpu:0"]["a"]
    assert usage_from_json(usage_to_json(u)) == u
    with pytest.raises(ValidationError, match="device model record"):
        usage_from_json(b"[1]")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the socket file another owner")
def test_a_gpu_holder_socket_of_another_user_is_not_trusted(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """What the holder sends is unpickled: a socket planted in the shared store by another
    function's user is ignored, never connected to."""
    import socket

    sock = tmp_path / "gpu-GPU-1.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as planted:
        planted.bind(str(sock))
        planted.listen(1)
        os.chown(sock, 2_000_000_123, 2_000_000_123)
        assert fr._gpu_tensors({"FASTGSHARE_DEVICE": "gpu:GPU-1"}, tmp_path / "m.safetensors") is None
    assert "owned by uid 2000000123" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to act as two function users")
def test_a_second_function_user_locks_the_store_the_first_one_made() -> None:
    """As root, each function runs as a user of its own: the store's lock file (and a model's
    user-record folder) made by one must serve the next (opened read-write, it was refused and the
    second function to load a model crash-looped)."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="store-users-"))  # pytest's own tmp root is root's alone
    top.chmod(0o755)
    store = top / "store"
    store.mkdir()
    store.chmod(0o1777)

    def as_user(uid: int) -> int:  # a forked child drops to ``uid`` and locks, as a replica does
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(uid)
                os.setuid(uid)
                with fr._flock(store / fr.STORE_LOCK, wait_s=5) as ok:
                    assert ok
                users = store / "m.users"
                try:
                    users.mkdir()
                    users.chmod(0o1777)
                except FileExistsError:
                    pass
                (users / f"rec-{uid}").write_text("x")
                os._exit(0)
            except BaseException:
                os._exit(1)
        return os.waitpid(pid, 0)[1]

    try:
        assert [as_user(uid) for uid in (2_000_009_001, 2_000_009_002)] == [0, 0]
        assert (store / fr.STORE_LOCK).stat().st_uid == 2_000_009_001  # the second used the first's
        assert len(list((store / "m.users").iterdir())) == 2
    finally:
        shutil.rmtree(top)
