"""Real minilm replicas (the python3-torch runtime, real packaged weights) sharing one copy.

Three workers start at once on one store: two with ``fastgshare/model`` (they race for the store
lock; one writes the file, the other maps it) and one with sharing off. Checked: identical outputs,
PSS that shows one copy, the node agent's view in Redis, and that the file goes with its last user
whether that user exits cleanly or is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from fast_manager.devices import cpu_device
from fast_manager.model_store_fs import collect, scan
from fast_manager.model_store_redis import read_device_models
from fast_manager.node_agent import maintain_model_store
from fastgshare.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "function_templates" / "python3-torch" / "index.py"
MODEL = "all-minilm-l6-v2"
TEXTS = ["GPUs are shared in space and time.", "A cat sits on the mat."]
MiB = 2**20


def _start(store: Path, replica: str, logs: Path, sharing: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
    env.update({"FASTGSHARE_HANDLER_DIR": str(REPO / "functions" / "minilm"),
                "FASTGSHARE_WORKER_PORT": str(port), "FASTGSHARE_REPLICA": replica,
                "FASTGSHARE_DEVICE": "cpu:0", "FASTGSHARE_MODEL": MODEL,
                "FASTGSHARE_MODEL_STORE_DIR": str(store), "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    if not sharing:
        env["FASTGSHARE_MODEL_SHARING"] = "off"
    out = open(logs / f"{replica}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, str(RUNTIME)], env=env, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(replicas: dict[str, tuple[subprocess.Popen, str]], logs: Path,
                timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(replicas)
    while pending:
        for name in sorted(pending):
            proc, url = replicas[name]
            assert proc.poll() is None, (logs / f"{name}.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/_/ready", timeout=5).status_code == 200:
                    pending.discard(name)
            except (requests.ConnectionError, requests.Timeout):  # loading: busy cores
                pass
        assert time.monotonic() < deadline, f"not ready: {pending}"
        time.sleep(0.2)


def _smaps(pid: int) -> list[dict]:
    """Per mapping: path and its kB fields."""
    out: list[dict] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            out.append({"path": head[5] if len(head) > 5 else "", "perms": head[1]})
        elif head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            out[-1][head[0][:-1]] = int(head[1]) * 1024
    return out


def _rollup(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _embed(url: str) -> list:
    r = requests.post(url, json={"texts": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    assert float(r.headers["X-Fastgshare-Busy-Ms"]) >= 0
    return r.json()["embeddings"]


@pytest.mark.slow
def test_minilm_replicas_share_one_read_only_copy(tmp_path: Path, redis_client: redis.Redis) -> None:
    store, logs = tmp_path / "models", tmp_path / "logs"
    logs.mkdir()
    reps = {"s1": _start(store, "s1", logs, True), "s2": _start(store, "s2", logs, True),
            "u": _start(store, "u", logs, False)}
    try:
        _wait_ready(reps, logs, timeout_s=75)
        outputs = {name: _embed(url) for name, (_, url) in reps.items()}
        assert outputs["s1"] == outputs["s2"] == outputs["u"]  # bit-identical after rounding
        assert len(outputs["u"][0]) == 384

        [weights] = store.glob("*.safetensors")
        size = weights.stat().st_size
        assert size > 80 * MiB
        maps = {n: [m for m in _smaps(reps[n][0].pid) if m["path"] == str(weights)]
                for n in ("s1", "s2")}
        for name, ms in maps.items():
            assert ms, f"{name} does not map the store file"
            for m in ms:  # read-only shared mapping, no copy-on-write pages
                assert m["perms"].startswith("r--s"), m
                assert m["Private_Dirty"] == 0 and m["Anonymous"] == 0, m
        assert not [m for m in _smaps(reps["u"][0].pid) if m["path"] == str(weights)]
        # The file's resident pages are counted once across the two replicas: the sum of their
        # PSS is the union of the pages they touched. An extra replica's model memory is what it
        # adds to that union plus any private (anonymous) copy, measured against the unshared
        # replica of the same handler (whose weights transformers maps from the package file).
        pss = sum(m["Pss"] for ms in maps.values() for m in ms)
        rss = max(sum(m["Rss"] for m in ms) for ms in maps.values())
        extra_file = max(0, pss - rss)
        anon = {n: _rollup(reps[n][0].pid, "Pss_Anon") for n in reps}
        anon_extra = max(0, min(anon["s1"], anon["s2"]) - anon["u"])  # the replica that mapped
        print(f"weights {size / MiB:.1f} MiB; file PSS s1+s2 {pss / MiB:.1f} MiB, max RSS "
              f"{rss / MiB:.1f} MiB; anon s1 {anon['s1'] / MiB:.1f} s2 {anon['s2'] / MiB:.1f} "
              f"u {anon['u'] / MiB:.1f} MiB; extra replica {(extra_file + anon_extra) / MiB:.1f} MiB")
        assert extra_file + anon_extra <= 0.10 * size + 8 * MiB

        device = cpu_device("n1", "cpu", (0,), 1 << 30, 0.0)
        maintain_model_store(redis_client, store, [device])
        usage = read_device_models(redis_client, "cpu:0")
        assert usage[MODEL].users == 2 and usage[MODEL].bytes == size

        os.kill(reps["s2"][0].pid, signal.SIGKILL)  # a crash: its record stays until the GC
        reps["s2"][0].wait(10)
        assert collect(store).dead_users and weights.exists()  # s1 still uses it
        assert [m.live_users for m in scan(store)] == [("s1",)]
        maintain_model_store(redis_client, store, [device])
        assert read_device_models(redis_client, "cpu:0")[MODEL].users == 1

        reps["s1"][0].send_signal(signal.SIGTERM)  # the last user leaves cleanly: file freed now
        reps["s1"][0].wait(20)
        assert not weights.exists() and not list(store.glob("*.ref"))
        maintain_model_store(redis_client, store, [device])
        assert read_device_models(redis_client, "cpu:0") == {}
    finally:
        for proc, _ in reps.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


WRITER_HANDLER = '''
import torch
from fastgshare_runtime import load_shared

model = None

def build():
    torch.manual_seed(0)
    return torch.nn.Linear(256, 256)

def load():
    global model
    model = load_shared("writer", build).eval()

def handle(event, context):
    if event.path == "/write":
        with torch.no_grad():
            model.weight.add_(1.0)
    with torch.inference_mode():
        return {"y": float(model(torch.ones(1, 256)).sum())}
'''


@pytest.mark.slow
@pytest.mark.parametrize("guard", ["off", "on"])
def test_a_handler_writing_shared_weights_fails_loudly_and_last_crash_frees(tmp_path: Path,
                                                                            guard: str) -> None:
    """Default (no guard per op): the write faults on the PROT_READ mapping and kills only the
    writer, whose log says where; with FASTGSHARE_MODEL_GUARD=on it is a 500 naming the error."""
    handler = tmp_path / "writer"
    handler.mkdir()
    (handler / "handler.py").write_text(WRITER_HANDLER)
    store, logs = tmp_path / "models", tmp_path / "logs"
    logs.mkdir()
    reps = {}
    for name in ("w1", "w2"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
        port = free_port()
        env.update({"FASTGSHARE_HANDLER_DIR": str(handler), "FASTGSHARE_WORKER_PORT": str(port),
                    "FASTGSHARE_REPLICA": name, "FASTGSHARE_MODEL": "writer-seed0",
                    "FASTGSHARE_MODEL_STORE_DIR": str(store), "OMP_NUM_THREADS": "1",
                    "FASTGSHARE_MODEL_GUARD": guard})
        with open(logs / f"{name}.log", "wb") as out:
            reps[name] = (subprocess.Popen([sys.executable, str(RUNTIME)], env=env, stdout=out,
                                           stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}")
    try:
        _wait_ready(reps, logs, timeout_s=60)
        before = requests.post(reps["w2"][1], timeout=30).json()["y"]
        if guard == "on":
            r = requests.post(f"{reps['w1'][1]}/write", timeout=30)
            assert r.status_code == 500 and "ReadOnlyWeightError" in r.text and "read-only" in r.text
            assert requests.post(reps["w1"][1], timeout=30).json()["y"] == before  # writer intact
        else:
            with pytest.raises(requests.ConnectionError):
                requests.post(f"{reps['w1'][1]}/write", timeout=30)
            assert reps["w1"][0].wait(10) == -signal.SIGSEGV  # the writer died ...
            assert "Segmentation fault" in (logs / "w1.log").read_text()  # ... saying where
        assert requests.post(reps["w2"][1], timeout=30).json()["y"] == before  # neighbour intact
        [weights] = store.glob("*.safetensors")
        for proc, _ in reps.values():  # every replica crashes: nothing released cleanly
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert weights.exists()
        report = collect(store)  # the node agent's GC
        assert weights.name in report.deleted_files and len(report.dead_users) == 2
        assert not weights.exists() and not list(store.iterdir())[1:]  # only .store.lock left
    finally:
        for proc, _ in reps.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
