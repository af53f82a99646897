"""The GPU model holder's protocol and reference counting, and when a holder pays, on the CPU.

A holder on ``cpu`` with a stand-in for ``reduce_tensor`` (CUDA IPC needs a GPU) serves a real Unix
socket to the template runtime's client (``fastgshare_runtime._gpu_tensors``).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

from fast_manager import model_store_gpu as gpu
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "function_templates" / "python3-torch"))
import fastgshare_runtime as fr  # noqa: E402  (the template's module, a script folder)

MiB = 2**20


def test_holder_pays_from_the_copies_it_spares() -> None:
    ctx = 540 * MiB
    assert not gpu.holder_pays([], ctx)
    assert not gpu.holder_pays([(1, 10_000 * MiB)], ctx)  # one replica: nothing to spare
    assert [n for n in range(1, 10) if gpu.holder_pays([(n, 98 * MiB)], ctx)][0] == 7  # ResNet-50
    assert [n for n in range(1, 10) if gpu.holder_pays([(n, 418 * MiB)], ctx)][0] == 3  # BERT-base
    assert gpu.holder_pays([(2, 600 * MiB)], ctx)
    # One context serves every model on the GPU: models that do not pay alone may together.
    assert not gpu.holder_pays([(3, 200 * MiB)], ctx) and not gpu.holder_pays([(2, 200 * MiB)], ctx)
    assert gpu.holder_pays([(3, 200 * MiB), (2, 200 * MiB)], ctx)
    assert gpu.holder_pays([(3, 98 * MiB)], 100 * MiB)  # a smaller context pays sooner


@pytest.fixture
def holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from torch.multiprocessing import reductions

    # CUDA IPC stand-in: the "handle" is the tensor itself (pickled by value).
    monkeypatch.setattr(reductions, "reduce_tensor", lambda t: (torch.clone, (t,)))
    h = gpu.GpuHolder(device="cpu")
    sock = gpu.socket_path_for(tmp_path, "gpu:GPU-1234")
    stop = threading.Event()
    server = threading.Thread(target=gpu.serve, args=(sock, h, stop), daemon=True)
    server.start()
    wait_for(sock.exists, timeout_s=10)
    yield h, sock
    stop.set()
    server.join(10)
    fr._gpu_connections.clear()


def test_replicas_share_one_held_copy_until_the_last_leaves(tmp_path: Path, holder) -> None:
    h, sock = holder
    weights = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(4)}
    weights["a_tied"] = weights["a"]
    path = tmp_path / "m-0123.safetensors"
    fr.write_weights(path, weights, {"fastgshare.model": "m"})
    env = {"FASTGSHARE_DEVICE": "gpu:GPU-1234"}
    assert sock.parent == path.parent  # the runtime finds the socket next to the store file
    got = [fr._gpu_tensors(env, path) for _ in range(2)]
    for tensors in got:
        assert tensors is not None
        assert all(torch.equal(tensors[k], v) for k, v in weights.items())
    assert h.users() == {str(path.resolve()): 2}
    conns = list(fr._gpu_connections)
    conns[0].close()  # a replica exits (or crashes): the kernel closes its connection
    wait_for(lambda: h.users() == {str(path.resolve()): 1}, timeout_s=10)
    assert h._models
    conns[1].close()
    wait_for(lambda: h.users() == {}, timeout_s=10)
    assert h._models == {}  # the last user gone, the weights are freed


def test_no_holder_means_the_cpu_copy(tmp_path: Path) -> None:
    assert fr._gpu_tensors({"FASTGSHARE_DEVICE": "gpu:GPU-none"}, tmp_path / "x.safetensors") is None
