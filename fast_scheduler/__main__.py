"""``python -m fast_scheduler --redis-url URL --gateway URL [--interval-s 2] [--fast-interval-s 1]``: loop.

``--start-s S`` is how long a replica takes from its start to ready on this platform (default 5: a
cold start, as on Kubernetes; ``fastgshare up`` passes 1 when its node runs a warm pool): the
autoscaler's settings (``start_tuning.for_start_time``: headroom, scale-down, burst capacity, backlog
drain) and the re-pack cadence (``repack.every_ticks_for_start``) follow it, as tuned on the cluster
bench; a flag given explicitly overrides its part.
``--repack-every-ticks N`` (0: off) re-packs replicas make-before-break (``repack``).
Credentials come from ``FASTGSHARE_USER`` / ``FASTGSHARE_PASSWORD`` (read here only), as the
platform passes them. Autoscaler tuning flags exist for tests and experiments; defaults suit
production.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from dataclasses import replace

import redis

from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.loop import LoopSettings, SchedulerLoop
from fast_scheduler.repack import every_ticks_for_start
from fast_scheduler.start_tuning import for_start_time
from fastgshare.provider_client import ProviderClient


def parser() -> argparse.ArgumentParser:
    d = AutoscaleSettings()
    p = argparse.ArgumentParser(prog="python -m fast_scheduler", description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    p.add_argument("--gateway", default=os.environ.get("OPENFAAS_URL", "http://127.0.0.1:8080"))
    p.add_argument("--namespace", default="openfaas-fn")
    p.add_argument("--interval-s", type=float, default=2.0)
    p.add_argument("--fast-interval-s", type=float, default=1.0,
                   help="fast scale-up sub-ticks between ticks (0: off)")
    p.add_argument("--start-s", type=float, default=5.0,
                   help="a replica's start-to-ready here, seconds (default 5: cold starts; 1 with "
                        "the local node's warm pool): the settings below default to those tuned "
                        "for it")
    p.add_argument("--scale-down-delay-s", type=float, default=None,
                   help="keep surplus replicas this long after the rate falls (default: for --start-s)")
    p.add_argument("--idle-to-zero-s", type=float, default=d.idle_to_zero_s)
    p.add_argument("--horizon-s", type=float, default=d.horizon_s)
    p.add_argument("--burst-k", type=float, default=None,
                   help="share of the gap to the recent peak rate held as capacity (0: reactive "
                        "only; default: for --start-s)")
    p.add_argument("--burst-memory-s", type=float, default=d.burst_memory_s,
                   help="time constant of the remembered peak's decay once calm")
    p.add_argument("--standby-frac", type=float, default=None,
                   help="standby replicas (token quota, limit 1: they serve on borrowed idle time) "
                        "for this fraction of the target (0: off; default: for --start-s)")
    p.add_argument("--jump-sigmas", type=float, default=d.jump_sigmas,
                   help="a rate this many Poisson standard deviations above capacity (fast path) or the "
                        "forecast (ticks) is a step, taken at once")
    p.add_argument("--batch-lever", choices=("on", "off"), default="on" if d.batch_lever else "off",
                   help="on a step, raise the batch limit of the running replicas at once, and lower it "
                        "once the new replicas are ready")
    p.add_argument("--standby-retry-s", type=float, default=LoopSettings.standby_retry_s,
                   help="the devices that refused a standby request are scanned for it again once they "
                        "change, or after this long (0: every tick, every device)")
    p.add_argument("--repack-every-ticks", type=int, default=None,
                   help="plan a re-pack (move replicas make-before-break to free wasted devices) every "
                        "this many ticks (0: off; default: for --start-s)")
    p.add_argument("--repack-timeout-s", type=float, default=LoopSettings.repack_timeout_s,
                   help="abandon a re-pack move whose new replica is not ready after this long")
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.redis_url:
        p.error("--redis-url (or REDIS_URL) is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    password = os.environ.get("FASTGSHARE_PASSWORD")
    auth = (os.environ.get("FASTGSHARE_USER", "admin"), password) if password else None
    if args.start_s <= 0:
        p.error("--start-s must be > 0")
    settings = loop_settings(args)
    auto, repack_every = settings.autoscale, settings.repack_every_ticks
    loop = SchedulerLoop(ProviderClient(args.gateway, auth, timeout_s=settings.http_timeout_s),
                         redis.Redis.from_url(args.redis_url), settings)
    if args.once:
        loop.tick()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log = logging.getLogger("fast_scheduler")
    log.info("scheduler loop every %.1f s (fast scale-up every %.1f s) on %s; settings for a %.1f s "
             "replica start: scale-down delay %.0f s, headroom %.0f %%, burst %.2f, standby %.2f, "
             "re-pack every %d ticks", args.interval_s, args.fast_interval_s, args.gateway,
             args.start_s, auto.scale_down_delay_s, 100 * auto.headroom_frac, auto.burst_k,
             auto.standby_frac, repack_every)
    loop.run(stop)
    return 0


def loop_settings(args: argparse.Namespace) -> LoopSettings:
    """The loop's settings from the command line: the autoscaler's and the re-pack cadence tuned for
    ``--start-s`` (``for_start_time``, ``every_ticks_for_start``), then the flags given explicitly."""
    auto = for_start_time(args.start_s, AutoscaleSettings(
        idle_to_zero_s=args.idle_to_zero_s, horizon_s=args.horizon_s,
        burst_memory_s=args.burst_memory_s, jump_sigmas=args.jump_sigmas,
        batch_lever=args.batch_lever == "on"))
    given = {k: v for k, v in (("scale_down_delay_s", args.scale_down_delay_s),
                               ("burst_k", args.burst_k), ("standby_frac", args.standby_frac))
             if v is not None}
    repack_every = (args.repack_every_ticks if args.repack_every_ticks is not None
                    else every_ticks_for_start(args.start_s))
    return LoopSettings(interval_s=args.interval_s, fast_interval_s=args.fast_interval_s,
                        standby_retry_s=args.standby_retry_s, repack_every_ticks=repack_every,
                        repack_timeout_s=args.repack_timeout_s, namespace=args.namespace,
                        autoscale=replace(auto, **given))


if __name__ == "__main__":
    raise SystemExit(main())
