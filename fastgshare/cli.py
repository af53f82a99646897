"""The ``fastgshare`` command line: run the embedded platform and talk to it without faas-cli.

Every command except ``up``/``demo`` speaks the same HTTP API faas-cli uses (the provider's
``/system/*`` routes with basic auth), so what works here works with faas-cli too; ``build``
registers images through the provider's ``PUT /system/fastgshare/images``. A gateway URL and the
credentials ``faas-cli login`` stored are enough (``fastgshare.credentials``); no state directory
or Redis is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastgshare.credentials import Target
    from fastgshare.provider_client import ProviderClient

DEFAULT_STATE_DIR = Path(os.environ.get("FASTGSHARE_STATE_DIR", ".fastgshare"))


def _running_platform(state_dir: Path) -> tuple[str, str, str] | None:
    """(url, user, password) of a ``fastgshare up`` on ``state_dir``, or None."""
    path = Path(state_dir) / "platform.json"
    try:
        info = json.loads(path.read_text())
        return str(info["url"]), str(info["user"]), str(info["password"])
    except (OSError, ValueError, KeyError):
        return None


def resolve_cli_target(gateway: str | None, state_dir: Path) -> Target:
    """The gateway and credentials of ``fastgshare.credentials.resolve_target``, with the files
    and environment it needs read here (faas-cli's config, the running ``up``'s state)."""
    import yaml

    from fastgshare.credentials import faas_cli_config_path, resolve_target

    config = faas_cli_config_path(os.environ, Path.home(), Path.cwd())
    try:
        doc = yaml.safe_load(config.read_text()) if config.is_file() else None
        return resolve_target(gateway, os.environ, doc, _running_platform(state_dir),
                              faas_cli_where=str(config))
    except (ValueError, yaml.YAMLError) as e:
        raise SystemExit(f"fastgshare: {e}") from e


def _client(args: argparse.Namespace) -> ProviderClient:
    from fastgshare.provider_client import ProviderClient

    target = resolve_cli_target(args.gateway, args.state_dir)
    cred = target.credentials
    return ProviderClient(target.url, cred.basic, bearer=cred.bearer, auth_source=cred.source,
                          timeout_s=60)


def cmd_up(args: argparse.Namespace) -> int:
    from fastgshare.platform import Platform

    platform = Platform(args.state_dir, port=args.port, basic_auth=not args.no_auth,
                        redis_url=os.environ.get("REDIS_URL"), profiler=not args.no_profiler,
                        scheduler=not args.no_scheduler, start_mps=args.start_mps)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    info = platform.start()
    try:
        print(f"FaST-GShare is up at {info.url}")
        print(f"  user:     {info.user}")
        print(f"  password: {info.password}")
        print(f"  (written to {Path(info.state_dir) / 'secrets'}/basic-auth-user and -password)")
        print(f"  export OPENFAAS_URL={info.url}")
        print(f"  echo -n {info.password} | faas-cli login -u {info.user} --password-stdin")
        if args.file:
            from fastgshare.build import load_stack, register_stack
            from fastgshare.provider_client import ProviderClient

            client = ProviderClient(info.url, info.auth, timeout_s=60)
            images = register_stack(client, args.file)
            _, functions = load_stack(args.file)
            for fn in functions:
                client.deploy(fn.body)
            print(f"registered and deployed {len(images)} functions from {args.file}")
        print("Press Ctrl-C to stop.", flush=True)
        stop.wait()
    finally:
        print("stopping...", flush=True)
        platform.stop()
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from fastgshare.build import register_stack

    for image in register_stack(_client(args), args.file):
        print(f"registered image {image}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from fastgshare.build import load_stack

    if not args.no_build:
        cmd_build(args)
    _, functions = load_stack(args.file)
    client = _client(args)
    for fn in functions:
        code = client.deploy(fn.body)
        print(f"deployed {fn.name} ({code})")
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    data = args.data.encode() if args.data is not None else (
        b"{}" if sys.stdin.isatty() else sys.stdin.buffer.read())
    resp = _client(args).invoke(args.name, data)
    sys.stdout.write(resp.text)
    if not resp.text.endswith("\n"):
        sys.stdout.write("\n")
    return 0 if resp.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from fastgshare.report import print_status

    client = _client(args)
    print_status(client, args.state_dir if _running_platform(args.state_dir) else None)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    for msg in _client(args).logs(args.name, tail=args.tail, follow=args.follow):
        print(f"{msg['timestamp']} {msg['instance']} {msg['text']}", flush=True)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    if not _client(args).remove(args.name):
        print(f"remove {args.name}: no such function")
        return 1
    print(f"removed {args.name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fastgshare.demo import run_demo

    return run_demo(args.file, requests_per_function=args.requests, port=args.port,
                    state_dir=args.state_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgshare", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, stack: bool = False) -> None:
        sp.add_argument("--state-dir", type=Path, default=None,
                        help=f"platform state directory (default {DEFAULT_STATE_DIR})")
        sp.add_argument("--gateway", "-g", default=None,
                        help="provider URL (default: $OPENFAAS_URL, else the running `up`); credentials "
                        "from FASTGSHARE_USER/FASTGSHARE_PASSWORD, else `faas-cli login`'s config "
                        "for that URL, else the running `up`'s")
        if stack:
            sp.add_argument("-f", "--file", type=Path, default=Path("stack.yml"),
                            help="OpenFaaS stack file (default stack.yml)")

    up = sub.add_parser("up", help="run the embedded platform in the foreground until Ctrl-C",
                        description="Start Redis, the node agent and the provider; print the URL "
                        "and credentials (also written under STATE/secrets/); a second up on the "
                        "same state directory brings back every deployed function.")
    up.add_argument("--port", type=int, default=8080, help="provider/gateway port (default 8080)")
    up.add_argument("--state-dir", type=Path, default=None)
    up.add_argument("--no-auth", action="store_true", help="disable basic auth on /system/*")
    up.add_argument("-f", "--file", type=Path, default=None,
                    help="also build and deploy this stack file once up")
    up.add_argument("--no-profiler", action="store_true",
                    help="do not profile functions with fastgshare/slo_ms in the background")
    up.add_argument("--no-scheduler", action="store_true",
                    help="do not run the SLO-aware autoscaler (functions keep static annotations)")
    up.add_argument("--start-mps", action="store_true",
                    help="on a GPU node, start the MPS control daemon when none is running "
                    "(without it, SM shares are not enforced: replicas share GPUs by time only)")
    up.set_defaults(func=cmd_up)

    b = sub.add_parser("build", help="register each function's image as its handler folder",
                       description="Local mode has no container images: this maps each "
                       "function's image name to its handler folder, as faas-cli build would "
                       "have produced an image. Then faas-cli deploy of that image works.")
    common(b, stack=True)
    b.set_defaults(func=cmd_build)

    d = sub.add_parser("deploy", help="build, then deploy a stack file (PUT, POST on 404)")
    common(d, stack=True)
    d.add_argument("--no-build", action="store_true", help="skip registering images")
    d.set_defaults(func=cmd_deploy)

    i = sub.add_parser("invoke", help="call a function; body from --data or stdin ({} if a tty)")
    common(i)
    i.add_argument("name")
    i.add_argument("--data", "-d", default=None)
    i.set_defaults(func=cmd_invoke)

    s = sub.add_parser("status", help="table of devices, replicas and their shares")
    common(s)
    s.set_defaults(func=cmd_status)

    lg = sub.add_parser("logs", help="print a function's logs")
    common(lg)
    lg.add_argument("name")
    lg.add_argument("--tail", type=int, default=None)
    lg.add_argument("--follow", action="store_true")
    lg.set_defaults(func=cmd_logs)

    sub.add_parser("profile", help="profile a function (progress bar); see `fastgshare profile --help`",
                   add_help=False)
    sub.add_parser("bench", help="the MLPerf-based sharing-modes and autoscaling benchmark "
                   "(= python -m bench.mlperf); see `fastgshare bench --help`", add_help=False)

    r = sub.add_parser("remove", help="remove a deployed function")
    common(r)
    r.add_argument("name")
    r.set_defaults(func=cmd_remove)

    dm = sub.add_parser("demo", help="the main job: platform up, stack deployed, load, report",
                        description="Bring the embedded platform up on a fresh state directory, "
                        "build and deploy the stack file, send requests to every function and "
                        "print a report (function, replicas, device share, requests, p50/p99); "
                        "then stop everything.")
    dm.add_argument("-f", "--file", type=Path, default=Path("stack.yml"))
    dm.add_argument("--requests", type=int, default=20, help="requests per function (default 20)")
    dm.add_argument("--port", type=int, default=0, help="provider port (default: a free one)")
    dm.add_argument("--state-dir", type=Path, default=None,
                    help="state directory (default: a new temporary one)")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:  # its own parser: fastgshare.profile_cli
        from fastgshare.profile_cli import profile_main

        return int(profile_main(argv[1:]))
    if argv[:1] == ["bench"]:
        # The benchmark is a program above the CLI (bench/mlperf, its own parser): run it as one,
        # so the platform's layers never import the benchmarks.
        import subprocess

        return subprocess.call([sys.executable, "-m", "bench.mlperf", *argv[1:]])
    args = build_parser().parse_args(argv)
    if getattr(args, "state_dir", None) is None and args.command != "demo":
        args.state_dir = DEFAULT_STATE_DIR
    from fastgshare.provider_client import ProviderError

    try:
        return int(args.func(args))
    except ProviderError as e:
        raise SystemExit(f"fastgshare: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
