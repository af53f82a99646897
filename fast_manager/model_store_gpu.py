"""The GPU model holder: one process per GPU keeps each shared model's weights on the device once
and hands CUDA IPC handles to the replicas that ask (``torch.multiprocessing`` tensor sharing).

Ran on an NVIDIA H200 once (``bench/gpu/model_sharing_gpu.py``, 2026-11-27, without MPS); no GPU
on the development machine. The node agent keeps one per GPU (``node_agent.GpuHolders``). Start
it with the GPU it serves as the only visible device, so that device index 0 means the same GPU in
the holder and in the replicas::

    CUDA_VISIBLE_DEVICES=<uuid> python -m fast_manager.model_store_gpu --socket STORE/gpu-<uuid>.sock

Protocol (one Unix-socket connection per replica and model): the replica sends one JSON line
``{"file": "<path of the model's safetensors file in the CPU store>"}``; the holder loads that file
onto the GPU unless it holds it already and answers ``<n>\\n`` + ``n`` bytes: a pickle of
``{name: (rebuild_fn, args)}`` from ``torch.multiprocessing.reductions.reduce_tensor``. The
connection then stays open: it is the replica's claim. When the last connection for a file
closes (the replica exited or crashed), the holder drops the tensors and returns the memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import socket
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fast_manager.logline import setup_logging

log = logging.getLogger("model_store_gpu")


MiB = 2**20
HOLDER_CONTEXT_BYTES = 540 * MiB
"""Device memory of a holder beyond the weights it holds: its own CUDA context (torch 2.x). Measured
on an H200 (bench/gpu/model_sharing_gpu.py): the holder of ResNet-50 (98 MiB of weights) used
636 MiB. It is paid once per GPU, from the first model the holder loads (CUDA is initialised
lazily: a holder that holds nothing has no context)."""


def holder_pays(models: Iterable[tuple[int, int]],
                context_bytes: int = HOLDER_CONTEXT_BYTES) -> bool:
    """Whether one holder on a GPU saves device memory, for ``models``: (replicas, weight bytes) of
    each model that would share it on that GPU.

    Without a holder every replica keeps its own copy; with one, the holder keeps one copy of each
    model plus its context, and the replicas none. So it pays when the copies it spares,
    ``sum((replicas - 1) * weights)``, exceed ``context_bytes``: for one model with
    ``context_bytes`` 540 MiB, from 7 replicas of ResNet-50 (98 MiB), 3 of BERT-base (418 MiB), 2
    of anything over 540 MiB. Not applied yet: the node agent starts a holder per GPU
    unconditionally (``node_agent.GpuHolders``); this is the rule a finer policy would use."""
    spared = sum(max(0, replicas - 1) * weights for replicas, weights in models)
    return spared > context_bytes


def read_safetensors_to(path: Path, device: str) -> dict[str, Any]:
    """Every tensor of the file on ``device``; aliases (tied weights) stay one tensor."""
    from fast_manager.weights_file import read_weights

    tensors, _ = read_weights(path)
    moved: dict[int, Any] = {}
    out: dict[str, Any] = {}
    for name, t in tensors.items():
        if id(t) not in moved:
            moved[id(t)] = t.to(device)
        out[name] = moved[id(t)]
    return out


class GpuHolder:
    """The models held on this process's GPU (index 0) and the connections that use them."""

    def __init__(self, device: str = "cuda:0") -> None:
        self.device = device
        self._lock = threading.Lock()
        self._models: dict[str, dict[str, Any]] = {}
        self._users: dict[str, int] = {}

    def claim(self, file: str) -> bytes:
        from torch.multiprocessing.reductions import reduce_tensor

        with self._lock:
            if file not in self._models:
                self._models[file] = read_safetensors_to(Path(file), self.device)
                log.info("holding %s on %s", Path(file).name, self.device)
            self._users[file] = self._users.get(file, 0) + 1
            return pickle.dumps({n: reduce_tensor(t) for n, t in self._models[file].items()})

    def release(self, file: str) -> None:
        import torch

        with self._lock:
            self._users[file] -= 1
            if self._users[file] > 0:
                return
            del self._users[file]
            self._models.pop(file, None)
            if self.device.startswith("cuda"):  # (a CPU holder serves the protocol's tests)
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            log.info("freed %s: no replica uses it", Path(file).name)

    def users(self) -> dict[str, int]:
        with self._lock:
            return dict(self._users)

    def serve_connection(self, conn: socket.socket) -> None:
        file = None
        try:
            f = conn.makefile("rb")
            request = json.loads(f.readline())
            file = str(Path(request["file"]).resolve())
            payload = self.claim(file)
            conn.sendall(f"{len(payload)}\n".encode() + payload)
            while conn.recv(4096):  # the claim lasts until the replica closes (or dies)
                pass
        except (OSError, ValueError, KeyError) as e:
            log.warning("connection failed: %s", e)
        finally:
            conn.close()
            if file is not None and file in self._users:
                self.release(file)


def serve(socket_path: Path, holder: GpuHolder, stop: threading.Event) -> None:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    # Function users (docs/security.md) connect too; what they may ask for is the shared store's.
    socket_path.chmod(0o666)
    server.listen(64)
    server.settimeout(0.5)
    log.info("GPU model holder on %s (CUDA_VISIBLE_DEVICES=%s)", socket_path,
             os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    try:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=holder.serve_connection, args=(conn,), daemon=True).start()
    finally:
        server.close()
        socket_path.unlink(missing_ok=True)


def socket_path_for(store_dir: Path, device_id: str) -> Path:
    """Where the holder of ``device_id`` (``gpu:<uuid>``) listens; the runtime computes the same."""
    uuid = device_id.partition(":")[2] or device_id
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uuid)
    return Path(store_dir) / f"gpu-{safe}.sock"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fast_manager.model_store_gpu",
                                     description="Hold shared model weights on one GPU and hand "
                                                 "CUDA IPC handles to replicas.")
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    args = parser.parse_args(argv)
    setup_logging()
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(args.socket, GpuHolder(), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
