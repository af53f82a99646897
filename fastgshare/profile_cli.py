"""``fastgshare profile NAME``: follow a background profile with a progress bar, or run one in the foreground.

``profile_main(argv)`` is the whole command (``fastgshare`` hands it the arguments after
``profile``). Without ``--foreground`` it follows the status the watcher writes to Redis; when no
watcher has picked the function up (no status), it profiles in the foreground itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import redis
from tqdm import tqdm

from fast_profiler import store
from fast_profiler.errors import ProfileCancelled
from fast_profiler.gateway import Gateway
from fast_profiler.jobs import profile_and_store
from fast_profiler.planner import GridSpec
from fast_profiler.runner import Progress, RunSettings, grid_for_device
from fast_profiler.search import QUICK_SEARCH
from fast_profiler.store import ProfileState
from fast_profiler.table import device_type_of, summary

DEFAULT_STATE_DIR = Path(os.environ.get("FASTGSHARE_STATE_DIR", ".fastgshare"))



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgshare profile",
                                description="Profile a deployed function (throughput and latency per "
                                            "SM share x quota x batch) or follow a running profile.")
    p.add_argument("name")
    p.add_argument("--namespace", default="openfaas-fn")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="state dir of a running `fastgshare up` (gateway, credentials, Redis)")
    p.add_argument("--gateway", help="provider URL (with --redis-url; default: from the state dir)")
    p.add_argument("--redis-url", help="the platform's Redis (default: from the state dir)")
    p.add_argument("--foreground", action="store_true", help="profile here now, even if a table exists")
    p.add_argument("--slo-ms", type=float, help="override the function's fastgshare/slo_ms")
    p.add_argument("--quick", action="store_true", help="shorter steps, looser estimates")
    p.add_argument("--sm", help="comma-separated SM shares (default: the paper's 6..100)")
    p.add_argument("--quota", help="comma-separated quotas (default: 0.2..1.0)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--export", type=Path, help="write <name>.<device>.json/.csv and a PNG here")
    p.add_argument("--timeout-s", type=float, default=3600, help="give up following after this long")
    return p


def _gateway(args: argparse.Namespace) -> Gateway:
    if args.gateway and args.redis_url:
        from fastgshare.cli import resolve_cli_target  # FASTGSHARE_*, then faas-cli login's

        target = resolve_cli_target(args.gateway, args.state_dir)
        return Gateway(target.url, target.credentials.basic, redis.Redis.from_url(args.redis_url))
    from fastgshare.platform import read_info

    info = read_info(args.state_dir)
    return Gateway((args.gateway or info.url).rstrip("/"), info.auth,
                   redis.Redis.from_url(args.redis_url or info.redis_url))


def _spec(args: argparse.Namespace, gw: Gateway) -> GridSpec:
    over: dict[str, object] = {"batches": tuple(int(b) for b in args.batch.split(","))}
    if args.sm:
        over["sm_grid"] = tuple(int(s) for s in args.sm.split(","))
    if args.quota:
        over["quota_grid"] = tuple(float(q) for q in args.quota.split(","))
    return grid_for_device(gw.device(), **over)


def _follow(gw: Gateway, ns: str, name: str, timeout_s: float) -> str:
    bar = tqdm(total=1, desc=f"profiling {name}", unit="config")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            st = store.get_status(gw.redis_client, ns, name)
            planned = int(st.get("planned") or 0)
            if planned:
                bar.total = planned
            bar.n = int(st.get("measured") or 0)
            bar.set_postfix_str(st.get("current") or st.get("message") or "", refresh=False)
            bar.refresh()
            if st.get("state") in (ProfileState.DONE.value, ProfileState.FAILED.value):
                return str(st.get("state"))
            if not st:  # the run was cancelled: its function removed or redeployed
                return "cancelled"
            time.sleep(0.5)
    finally:
        bar.close()
    return "timeout"


def profile_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    gw = _gateway(args)
    ns, name = args.namespace, args.name
    device_type = device_type_of(gw.device())
    st = store.get_status(gw.redis_client, ns, name)
    running = st.get("state") in (ProfileState.QUEUED.value, ProfileState.PROFILING.value)
    if running and not args.foreground:
        outcome = _follow(gw, ns, name, args.timeout_s)
        if outcome != ProfileState.DONE.value:
            msg = store.get_status(gw.redis_client, ns, name).get("message", "")
            print(f"profile of {name}: {outcome} {msg}", file=sys.stderr)
            return 1
    elif args.foreground or not store.has_table(gw.redis_client, name, device_type):
        settings = RunSettings(search=QUICK_SEARCH) if args.quick else RunSettings()
        bar = tqdm(total=1, desc=f"profiling {name}", unit="config")

        def show(p: Progress) -> None:
            bar.total = max(p.planned, 1)
            bar.n = p.measured
            if p.current is not None:
                bar.set_postfix_str(f"sm {p.current.sm_pct}% quota {p.current.quota_frac:g} "
                                    f"batch {p.current.batch}", refresh=False)
            bar.refresh()

        try:
            profile_and_store(gw, name, namespace=ns, spec=_spec(args, gw), settings=settings,
                              slo_ms=args.slo_ms, on_progress=show)
        except ProfileCancelled as e:
            print(e, file=sys.stderr)
            return 1
        finally:
            bar.close()
    table = store.load(gw.redis_client, name, device_type)
    if table is None:
        print(f"no profile table of {name} on {device_type}", file=sys.stderr)
        return 1
    print(summary(table))
    if args.export:
        from fast_profiler.plot import plot_table

        detail = store.load_detail(gw.redis_client, name, device_type)
        paths = store.export(table, args.export, detail)
        png = plot_table(table, paths[0].with_suffix(".png"),
                         slo_ms=float(detail["slo_ms"]) if detail else None)  # type: ignore[arg-type]
        print("wrote", *paths, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(profile_main())
