"""Dynamic batching: the worker runtime's batcher, the sidecar keeping a batch in flight, and the
example handlers' ``handle_batch`` giving each request what ``handle`` gives it alone (real torch)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from fast_manager.settings import sidecar_settings_from_env
from fast_manager.sidecar import start_sidecar, stop_sidecar
from fast_manager.tokens import Lease, TokenMode

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "function_templates" / "python3-torch"
sys.path.insert(0, str(TEMPLATE))
import fastgshare_batch_policy as policy  # noqa: E402
import index  # noqa: E402  (the worker runtime, a script folder rather than a package)
from fastgshare_batcher import Batcher  # noqa: E402

# A handler whose batch costs the same whatever its size (a device with spare parallelism).
BATCH_HANDLER = """
import json, time

def handle(event, context):
    time.sleep(0.1)
    return {"n": 1, "x": json.loads(event.body or b"{}").get("x")}

def handle_batch(events, context):
    time.sleep(0.1)
    out = []
    for e in events:
        x = json.loads(e.body or b"{}").get("x")
        out.append({"statusCode": 400, "body": "bad"} if x == "bad" else {"n": len(events), "x": x})
    return out
"""


# ---- the runtime's batcher, in-process -----------------------------------------------------


def _event(body: bytes) -> index.Event:
    return index.make_event("POST", "/", {}, body)


def _fake(batch_fn=None) -> SimpleNamespace:
    seen: list[int] = []

    def handle(event, context):
        seen.append(1)
        return {"x": json.loads(event.body)["x"]}

    def handle_batch(events, context):
        seen.append(len(events))
        if batch_fn is not None:
            return batch_fn(events)
        return [{"x": json.loads(e.body)["x"], "n": len(events)} for e in events]

    return SimpleNamespace(handle=handle, handle_batch=handle_batch, seen=seen)


def test_batch_settings_from_the_environment() -> None:
    s = index.batch_settings({})
    assert (s.max_batch, s.slo_ms, s.fixed_delay_ms) == (1, None, 2.0)
    s = index.batch_settings({"FASTGSHARE_BATCH": "8", "FASTGSHARE_BATCH_DELAY_MS": "5"})
    assert (s.max_batch, s.adaptive, s.fixed_delay_ms) == (8, False, 5.0)
    s = index.batch_settings({"FASTGSHARE_BATCH": "x", "FASTGSHARE_BATCH_DELAY_MS": "y"})
    assert (s.max_batch, s.fixed_delay_ms) == (1, 2.0)
    assert index.batch_settings({"FASTGSHARE_BATCH": "0"}).max_batch == 1
    # An SLO alone turns batching on, up to the default B_max ...
    s = index.batch_settings({"FASTGSHARE_SLO_MS": "100"})
    assert (s.max_batch, s.adaptive, s.budget_ms) == (policy.DEFAULT_MAX_BATCH, True, 90.0)
    # ... or the largest profiled size whose execution fits half the budget, under FASTGSHARE_BATCH
    prof = "1:10,4:20,8:40,16:90"
    assert index.batch_settings({"FASTGSHARE_SLO_MS": "100", "FASTGSHARE_BATCH_PROFILE_MS": prof}
                                ).max_batch == 8
    assert index.batch_settings({"FASTGSHARE_SLO_MS": "100", "FASTGSHARE_BATCH_PROFILE_MS": prof,
                                 "FASTGSHARE_BATCH": "4"}).max_batch == 4
    assert index.batch_settings({"FASTGSHARE_SLO_MS": "100", "FASTGSHARE_BATCH": "1"}).max_batch == 1


class ManualClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _manual_batcher(settings: policy.BatchSettings, run=None) -> tuple[Batcher, ManualClock]:
    clock = ManualClock()
    run = run or (lambda events: [(200, {}, e.body, 1.0) for e in events])
    return Batcher(run, settings, clock=clock, start=False), clock


def test_batcher_takes_what_is_queued_up_to_the_batch_size() -> None:
    b, _ = _manual_batcher(policy.BatchSettings(max_batch=3, fixed_delay_ms=0.0))
    for i in range(5):
        b.put(_event(json.dumps({"x": i}).encode()))
    sizes = []
    for _ in range(2):
        batch = b.take(block=False)
        sizes.append(len(batch))
        b.run_one_batch(batch)
    assert sizes == [3, 2]


def test_a_lone_request_never_waits_past_its_slack() -> None:
    """The batcher's queue and clock with the real policy: a lone request at low load runs at
    once; at high load it waits for company, but never past its deadline minus the execution of
    the batch it would form."""
    settings = policy.BatchSettings(max_batch=8, slo_ms=100.0)
    b, clock = _manual_batcher(settings)
    b.state = replace(b.state, exec_ms=((1, 10.0), (2, 12.0)))
    # low load: one request every 400 ms
    for _ in range(3):
        b.put(_event(b"{}"))
        batch = b.take(block=False)
        assert len(batch) == 1  # at the same instant: no wait at all
        b.run_one_batch(batch)
        clock.now_s += 0.4
    # high load (arrivals 5 ms apart so far), then a lone request
    b.state = replace(b.state, gap_s=0.005, last_arrival_s=clock.now_s - 0.005)
    arrival = clock.now_s
    b.put(_event(b"{}"))
    assert b.take(block=False) == []  # it waits for company ...
    latest = arrival + settings.budget_ms / 1000.0 - 0.012  # deadline minus exec(2)
    while clock.now_s <= latest + 1e-9:
        got = b.take(block=False)
        if got:
            break
        clock.now_s += 0.001
    assert got and len(got) == 1 and clock.now_s <= latest + 1e-9  # ... never past its slack


def test_a_lone_request_runs_in_its_own_thread() -> None:
    """Nothing running or queued and the policy says go: no hand-off to the batcher thread."""
    threads = []

    def run(events):
        threads.append(threading.current_thread().name)
        return [(200, {}, e.body, 1.0) for e in events]

    b = Batcher(run, policy.BatchSettings(max_batch=8, slo_ms=100.0))
    item = b.submit(_event(b"{}"))
    assert item.answer is not None and item.size == 1
    assert threads == [threading.current_thread().name]


def test_runtime_batches_concurrent_requests_and_splits_busy_time() -> None:
    module = _fake()
    rt = index.Runtime(module, index.Context("/x"), policy.BatchSettings(max_batch=4,
                                                                         fixed_delay_ms=1000.0))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: rt.execute("POST", "/", {}, json.dumps({"x": i}).encode()),
                                range(4)))
    assert module.seen == [4]  # one call for the four
    for i, (status, _, body, _busy, size) in enumerate(answers):
        assert status == 200 and json.loads(body) == {"x": i, "n": 4} and size == 4
    assert len({a[3] for a in answers}) == 1  # each carries the same share of the batch's time
    assert rt.batching()["sizes"] == {"4": 1}


def test_an_slo_alone_forms_batches_under_concurrency() -> None:
    """No batch size given, only an SLO: concurrent requests are served in batches (the first
    runs alone, the others queue behind it and go together)."""
    def slow(events):
        time.sleep(0.05)
        return [{"x": json.loads(e.body)["x"], "n": len(events)} for e in events]

    module = _fake(slow)
    fast_handle = module.handle
    module.handle = lambda event, context: (time.sleep(0.05), fast_handle(event, context))[1]
    rt = index.Runtime(module, index.Context("/x"), index.batch_settings({"FASTGSHARE_SLO_MS": "1000"}))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: rt.execute("POST", "/", {}, json.dumps({"x": i}).encode()),
                                range(8)))
    assert [json.loads(a[2])["x"] for a in answers] == list(range(8))
    assert max(a[4] for a in answers) > 1 and len(module.seen) < 8
    assert sum(module.seen) == 8
    stats = rt.batching()
    assert stats["mode"] == "slo" and stats["requests"] == 8


def test_a_failing_batch_is_retried_one_request_at_a_time() -> None:
    def boom(events):
        raise RuntimeError("bad batch")

    module = _fake(boom)
    out = index.run_batch(module, index.Context("/x"), [_event(b'{"x": 1}'), _event(b'{"x": 2}')])
    assert [(st, json.loads(b)) for st, _, b, _ in out] == [(200, {"x": 1}), (200, {"x": 2})]
    assert module.seen == [2, 1, 1]
    short = _fake(lambda events: [{"x": 0}])  # wrong number of answers: also retried singly
    out = index.run_batch(short, index.Context("/x"), [_event(b'{"x": 1}'), _event(b'{"x": 2}')])
    assert [json.loads(b) for _, _, b, _ in out] == [{"x": 1}, {"x": 2}]


def test_without_handle_batch_the_runtime_serves_one_at_a_time() -> None:
    module = SimpleNamespace(handle=lambda e, c: {"ok": True})
    rt = index.Runtime(module, index.Context("/x"), policy.BatchSettings(max_batch=4))
    assert rt.batcher is None
    assert rt.execute("POST", "/", {}, b"{}")[4] == 1


# ---- the sidecar keeps a batch in flight, one token per batch --------------------------------


class CountingTokens:
    mode = TokenMode.SHARED

    def __init__(self) -> None:
        self.acquired = 0
        self.released: list[float] = []
        self.held = False

    async def acquire(self, timeout_s: float) -> Lease | None:
        while self.held:  # one token per replica at a time, like the arbiter's client
            await asyncio.sleep(0.001)
        self.held = True
        self.acquired += 1
        return Lease("t", 1000.0, time.time() + 10)

    async def release(self, lease: Lease, busy_ms: float, next_waiting: bool = False) -> None:
        self.held = False
        self.released.append(busy_ms)

    async def close(self) -> None:
        return None


def _serve_batched(tmp_path: Path, tokens: CountingTokens, bodies: list[bytes], batch: int | None,
                   **extra_env: str) -> dict:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(textwrap.dedent(BATCH_HANDLER))
    env = dict(os.environ, FASTGSHARE_PORT="0", FASTGSHARE_HANDLER_DIR=str(fn),
               FASTGSHARE_BATCH_DELAY_MS="20", **extra_env)
    env.pop("FASTGSHARE_BATCH", None)
    if batch is not None:
        env["FASTGSHARE_BATCH"] = str(batch)
    settings = sidecar_settings_from_env(env)
    out: dict = {}

    async def main() -> None:
        sidecar, runner, port = await start_sidecar(settings, env, tokens=tokens)
        try:
            assert await sidecar.worker.wait_ready(30)
            url = f"http://127.0.0.1:{port}/"

            def post(body: bytes) -> requests.Response:
                return requests.post(url, data=body, timeout=20)

            t0 = time.monotonic()
            with ThreadPoolExecutor(len(bodies)) as pool:
                out["answers"] = await asyncio.gather(
                    *(asyncio.get_running_loop().run_in_executor(pool, post, b) for b in bodies))
            out["seconds"] = time.monotonic() - t0
            out["stats"] = await asyncio.to_thread(
                lambda: requests.get(f"http://127.0.0.1:{port}/_/stats", timeout=5).json())
        finally:
            await stop_sidecar(sidecar, runner)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    thread.join(90)
    return out


@pytest.mark.slow
def test_sidecar_forwards_a_batch_at_once_and_charges_it_once(tmp_path: Path) -> None:
    tokens = CountingTokens()
    bodies = [json.dumps({"x": i}).encode() for i in range(8)]
    bodies[5] = b'{"x": "bad"}'
    out = _serve_batched(tmp_path, tokens, bodies, batch=4)
    answers = out["answers"]
    assert [r.status_code for r in answers] == [400 if i == 5 else 200 for i in range(8)]
    for i, r in enumerate(answers):
        if i != 5:
            assert r.json()["x"] == i  # each request its own answer
    sizes = [int(r.headers.get("X-Fastgshare-Batch", "1")) for r in answers]
    assert max(sizes) >= 3 and all(s <= 4 for s in sizes)
    n_batches = sum(1 / s for s in sizes)
    # 8 requests in batches: far less than 8 x 100 ms, and device time counted once per batch.
    assert out["seconds"] < 0.65
    busy = out["stats"]["busy_ms_total"]
    assert busy == pytest.approx(100 * n_batches, rel=0.3)
    assert busy < 100 * 8 / 2
    assert sum(float(r.headers["X-Fastgshare-Busy-Ms"]) for r in answers) == pytest.approx(busy, rel=0.01)
    # One token per batch in flight, released with the batch's busy time.
    assert tokens.acquired == len(tokens.released) < 8
    assert sum(tokens.released) == pytest.approx(busy, rel=0.01)


@pytest.mark.slow
def test_an_slo_alone_batches_through_the_sidecar(tmp_path: Path) -> None:
    """Only FASTGSHARE_SLO_MS: the sidecar admits 2 x the default B_max, the worker batches, and
    the batch sizes show in the answers' header and the sidecar's /_/stats."""
    tokens = CountingTokens()
    out = _serve_batched(tmp_path, tokens, [json.dumps({"x": i}).encode() for i in range(12)],
                         None, FASTGSHARE_SLO_MS="2000")
    answers = out["answers"]
    assert [r.json()["x"] for r in answers] == list(range(12))
    sizes = [int(r.headers["X-Fastgshare-Batch"]) for r in answers]
    assert max(sizes) > 1
    batching = out["stats"]["batching"]
    assert batching["inflight_bound"] == 32 and batching["max_batch"] == 16
    assert sum(batching["requests_by_size"].values()) == 12
    assert batching["requests_by_size"] == {str(s): sizes.count(s) for s in sorted(set(sizes))}


@pytest.mark.slow
def test_sidecar_without_batching_stays_serial(tmp_path: Path) -> None:
    tokens = CountingTokens()
    out = _serve_batched(tmp_path, tokens, [b"{}"] * 4, batch=1)
    assert all(r.status_code == 200 and r.json()["n"] == 1 for r in out["answers"])
    assert out["seconds"] >= 0.38
    assert tokens.acquired == len(tokens.released) == 4


# ---- the example handlers: a batch answers what each request gets alone ----------------------


def _flat(x) -> list:
    if isinstance(x, dict):
        return [v for k in sorted(x) for v in _flat(x[k])]
    if isinstance(x, list):
        return [v for i in x for v in _flat(i)]
    return [x]


def _check_batch_equals_single(name: str, bodies: list[bytes]) -> None:
    module = index.import_handler(REPO / "functions" / name, f"fn_batch_{name}")
    module.load()
    ctx = index.Context("/nonexistent")
    events = [_event(b) for b in bodies]
    single = [index.as_response(module.handle(e, ctx)) for e in events]
    batched = [index.as_response(r) for r in module.handle_batch(events, ctx)]
    assert len(batched) == len(single)
    for one, many in zip(single, batched, strict=True):
        assert one[0] == many[0]
        a, b = _flat(json.loads(one[2])), _flat(json.loads(many[2]))
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float):
                # Outputs are rounded to 6 decimals; batched kernels may flip the last digit.
                assert abs(x - y) <= 1.5e-6, (name, x, y)
            else:
                assert x == y, (name, x, y)


def test_mobilenet_batch_equals_single() -> None:
    import torch

    t = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(3)).tolist()
    _check_batch_equals_single("mobilenet", [b"{}", json.dumps({"tensor": t}).encode(), b'{"tensor": [1]}',
                                             b"{}"])


@pytest.mark.slow
def test_resnet50_batch_equals_single() -> None:
    import torch

    t = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(3)).tolist()
    _check_batch_equals_single("resnet50", [json.dumps({"tensor": t}).encode(), b'{"tensor": [1, 2]}', b"{}"])


@pytest.mark.slow
def test_bert_batch_equals_single() -> None:
    _check_batch_equals_single("bert", [b"{}", b'{"text": "hello world"}', b'{"text": ""}',
                                        b'{"text": "a longer sentence, with punctuation and more words"}'])


@pytest.mark.slow
def test_minilm_batch_equals_single() -> None:
    _check_batch_equals_single("minilm", [b'{"text": "hi"}', b"{}", b'{"texts": ["a b c", "hello there"]}',
                                          b'{"text": 3}'])


@pytest.mark.slow
def test_a_running_replicas_batch_is_raised_at_run_time_by_its_control_token(tmp_path: Path) -> None:
    """``PUT /_/batch`` (the node agent's, with the replica's token): a replica started at batch 1
    serves a burst one at a time, then, with no restart, in batches; the worker's own route is
    not reachable through the sidecar, and a wrong token or value changes nothing."""
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(textwrap.dedent(BATCH_HANDLER))
    env = dict(os.environ, FASTGSHARE_PORT="0", FASTGSHARE_HANDLER_DIR=str(fn),
               FASTGSHARE_BATCH_DELAY_MS="20", FASTGSHARE_CONTROL_TOKEN="tok-1")
    env.pop("FASTGSHARE_BATCH", None)
    settings = sidecar_settings_from_env(env)
    out: dict = {}

    async def main() -> None:
        sidecar, server, port = await start_sidecar(settings, env, tokens=CountingTokens())
        try:
            assert await sidecar.worker.wait_ready(30)
            url = f"http://127.0.0.1:{port}"

            def burst() -> list[int]:
                with ThreadPoolExecutor(6) as pool:
                    answers = list(pool.map(lambda i: requests.post(
                        f"{url}/", json={"x": i}, timeout=20), range(6)))
                assert all(r.status_code == 200 for r in answers)
                return [int(r.headers.get("X-Fastgshare-Batch", "1")) for r in answers]

            def put(body: object, token: str | None) -> requests.Response:
                headers = {"X-Fastgshare-Control": token} if token is not None else {}
                return requests.put(f"{url}/_/batch", json=body, headers=headers, timeout=10)

            out["before"] = await asyncio.to_thread(burst)
            out["refused"] = [(await asyncio.to_thread(put, {"maxBatch": 4}, t)).status_code
                              for t in (None, "tok-2")]
            out["bad"] = [(await asyncio.to_thread(put, b, "tok-1")).status_code
                          for b in ({"maxBatch": 0}, {"maxBatch": "4"}, {"maxBatch": True}, [4])]
            out["worker_route"] = (await asyncio.to_thread(
                lambda: requests.put(f"{url}/_/batching", json={"max_batch": 8}, timeout=10)
            )).status_code
            out["set"] = await asyncio.to_thread(lambda: put({"maxBatch": 4}, "tok-1").json())
            out["pid"] = sidecar.worker.pid
            out["after"] = await asyncio.to_thread(burst)
            out["pid_after"] = sidecar.worker.pid
            out["stats"] = await asyncio.to_thread(
                lambda: requests.get(f"{url}/_/stats", timeout=5).json())
        finally:
            await stop_sidecar(sidecar, server)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    thread.join(120)
    assert out["before"] == [1] * 6  # batch 1: one at a time
    assert out["refused"] == [403, 403]
    assert out["bad"] == [400, 400, 400, 400]
    assert out["worker_route"] == 404
    assert out["set"] == {"maxBatch": 4, "inflightBound": 8}
    assert max(out["after"]) >= 3 and all(s <= 4 for s in out["after"])
    assert out["pid_after"] == out["pid"]  # the same worker process: no restart
    assert out["stats"]["batching"]["max_batch"] == 4


def test_the_worker_takes_a_new_batch_at_run_time(tmp_path: Path) -> None:
    """``Runtime.set_max_batch``: a handler that can batch starts batching (or stops); one that
    cannot is refused with 409 and keeps serving one at a time."""
    batching = SimpleNamespace(handle=lambda e, c: {"n": 1},
                               handle_batch=lambda es, c: [{"n": len(es)} for _ in es])
    rt = index.Runtime(batching, index.Context(), policy.BatchSettings(max_batch=1))
    assert rt.batcher is None
    status, state = rt.set_max_batch(8)
    assert status == 200 and rt.batcher is not None and state["max_batch"] == 8
    assert rt.set_max_batch(2)[0] == 200 and rt.batcher.settings.max_batch == 2
    assert rt.batcher.state.cap <= 2
    single = SimpleNamespace(handle=lambda e, c: {"n": 1})
    rt = index.Runtime(single, index.Context(), policy.BatchSettings(max_batch=1))
    status, state = rt.set_max_batch(4)
    assert status == 409 and "handle_batch" in state["error"] and rt.batcher is None
    assert rt.set_max_batch(1)[0] == 200
