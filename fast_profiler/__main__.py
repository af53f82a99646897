"""``python -m fast_profiler watch --redis-url URL --gateway URL``: the background profiler.

Settings come from the arguments, or from ``REDIS_URL``, ``OPENFAAS_URL``, ``FASTGSHARE_USER`` and
``FASTGSHARE_PASSWORD`` (read here only). ``python -m fast_profiler profile NAME ...`` is
``fastgshare profile``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading

import redis

from fast_profiler.gateway import Gateway
from fast_profiler.jobs import Watcher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fast_profiler")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch", help="profile every deployed function with fastgshare/slo_ms and no table")
    w.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    w.add_argument("--gateway", default=os.environ.get("OPENFAAS_URL", "http://127.0.0.1:8080"))
    w.add_argument("--namespace", action="append", help="namespaces to watch (default openfaas-fn)")
    w.add_argument("--poll-s", type=float, default=5.0)
    w.add_argument("--once", action="store_true", help="one pass, then exit")
    sub.add_parser("profile", help="same as `fastgshare profile`", add_help=False)
    args, rest = p.parse_known_args(argv)
    if args.cmd == "profile":
        # The command above the profiler (fastgshare.profile_cli): run it as a program, so the
        # profiler never imports the CLI.
        return subprocess.call([sys.executable, "-m", "fastgshare.cli", "profile", *rest])
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if not args.redis_url:
        p.error("--redis-url (or REDIS_URL) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    password = os.environ.get("FASTGSHARE_PASSWORD")
    auth = (os.environ.get("FASTGSHARE_USER", "admin"), password) if password else None
    gw = Gateway(args.gateway.rstrip("/"), auth, redis.Redis.from_url(args.redis_url))
    watcher = Watcher(gw, tuple(args.namespace or ("openfaas-fn",)), args.poll_s)
    if args.once:
        watcher.run_once()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    watcher.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
