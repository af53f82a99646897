"""The ``fastgshare`` command line: run the embedded platform and talk to it without faas-cli.

Every command except ``up``/``demo`` speaks the same HTTP API faas-cli uses (the provider's
``/system/*`` routes with basic auth), so what works here works with faas-cli too; ``build``
registers images through the provider's ``PUT /system/fastgshare/images``. A gateway URL and the
credentials ``faas-cli login`` stored are enough (``fastgshare.credentials``); no state directory
or Redis is needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastgshare.credentials import Target

DEFAULT_STATE_DIR = Path(os.environ.get("FASTGSHARE_STATE_DIR", ".fastgshare"))


class Client:
    """The provider API as faas-cli sees it."""

    def __init__(self, url: str, auth: tuple[str, str] | None, *, bearer: str = "",
                 auth_source: str = "") -> None:
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        if auth:
            self.session.auth = auth
        elif bearer:
            self.session.headers["Authorization"] = f"Bearer {bearer}"
        self.auth_source = auth_source or ("given" if auth or bearer else "none")

    def fail(self, what: str, resp: Any) -> SystemExit:
        """The error to exit with for a refused request; a 401 says which credentials were used."""
        text = f"{what}: HTTP {resp.status_code}: {resp.text.strip()}"
        if resp.status_code == 401:
            text += (f"\n(credentials: {self.auth_source}; log in with `faas-cli login -g {self.url}` "
                     "or set FASTGSHARE_USER/FASTGSHARE_PASSWORD)")
        return SystemExit(text)

    def deploy(self, body: dict[str, Any]) -> int:
        """PUT, then POST on 404: what faas-cli deploy does."""
        resp = self.session.put(f"{self.url}/system/functions", json=body, timeout=60)
        if resp.status_code == 404:
            resp = self.session.post(f"{self.url}/system/functions", json=body, timeout=60)
        if resp.status_code >= 300:
            raise self.fail(f"deploy {body['service']}", resp)
        return resp.status_code

    def functions(self) -> list[dict[str, Any]]:
        resp = self.session.get(f"{self.url}/system/functions", timeout=30)
        if resp.status_code >= 300:
            raise self.fail("list functions", resp)
        return list(resp.json())

    def orchestration(self) -> str:
        """The provider's backend (``/system/info``; nested under ``provider`` through a gateway)."""
        resp = self.session.get(f"{self.url}/system/info", timeout=30)
        if resp.status_code >= 300:
            raise self.fail("provider info", resp)
        doc = resp.json()
        nested = doc.get("provider") if isinstance(doc.get("provider"), dict) else {}
        return str(doc.get("orchestration") or nested.get("orchestration") or "")

    def register_image(self, body: dict[str, Any], *,
                       upload: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Local mode's build: the provider maps ``body['image']`` to a handler folder. When the
        provider does not have the folder named in ``body`` (another machine, or other content
        there), ``upload()`` (the same with the folders as archives) is sent instead."""
        resp = self.session.put(f"{self.url}/system/fastgshare/images", json=body, timeout=60)
        if (resp.status_code == 400 and upload is not None
                and resp.text.startswith(("handlerDir:", "codeDigest:", "templateDir:"))):
            resp = self.session.put(f"{self.url}/system/fastgshare/images", json=upload(), timeout=300)
        if resp.status_code == 404:
            raise SystemExit(
                f"build {body['image']}: {self.url} does not serve /system/fastgshare/images (an OpenFaaS "
                "gateway in front of the provider does not forward it): pass the provider's own URL "
                "as --gateway, or run `fastgshare build` where `fastgshare up` runs")
        if resp.status_code >= 300:
            raise self.fail(f"build {body['image']}", resp)
        return dict(resp.json())

    def invoke(self, name: str, data: bytes, timeout_s: float = 300) -> Any:
        return self.session.post(f"{self.url}/function/{name}", data=data, timeout=timeout_s)


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


def _client(args: argparse.Namespace) -> Client:
    target = resolve_cli_target(args.gateway, args.state_dir)
    cred = target.credentials
    return Client(target.url, cred.basic, bearer=cred.bearer, auth_source=cred.source)


def _load_stack(path: Path) -> tuple[Any, list[Any]]:
    import yaml

    from fastgshare.stack import parse_stack

    doc = yaml.safe_load(path.read_text())
    return doc, parse_stack(doc, path.resolve().parent)


def _upload_body(common: dict[str, Any], handler_dir: Path, template_dir: Path) -> dict[str, Any]:
    """A registration that sends the handler folder (and a local template) as archives."""
    import base64

    from fastgshare.handler_archive import pack

    out = {**common, "archive": base64.b64encode(pack(handler_dir)).decode()}
    if template_dir.is_dir():
        out["templateArchive"] = base64.b64encode(pack(template_dir)).decode()
    return out


def register_stack(client: Client, stack_path: Path) -> list[str]:
    """``fastgshare build``: register each function's image as its handler folder, through the
    provider (``PUT /system/fastgshare/images``): by path when the provider's machine has the same
    folder (same content), else uploaded. A provider that runs real images (Kubernetes) needs none:
    then nothing is registered."""
    _, functions = _load_stack(stack_path)
    orchestration = client.orchestration()
    if orchestration and orchestration != "local":
        print(f"the provider at {client.url} runs container images ({orchestration}): nothing to "
              "register; build and push them with faas-cli")
        return []
    from fastgshare.handler_archive import ArchiveError, folder_digest

    done = []
    for fn in functions:
        if not (fn.handler_dir / "handler.py").is_file():
            raise SystemExit(f"{fn.name}: handler folder {fn.handler_dir} has no handler.py")
        lang = fn.lang or "python3-torch"
        local_template = stack_path.resolve().parent / "template" / lang
        try:
            digest = folder_digest(fn.handler_dir)
        except ArchiveError as e:
            raise SystemExit(f"{fn.name}: {e}") from e
        common: dict[str, Any] = {"image": fn.image, "lang": lang, "codeDigest": digest}
        body = {**common, "handlerDir": str(fn.handler_dir.resolve())}
        if local_template.is_dir():
            body["templateDir"] = str(local_template)
        client.register_image(body, upload=functools.partial(_upload_body, common, fn.handler_dir,
                                                             local_template))
        done.append(fn.image)
    return done


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
            client = Client(info.url, info.auth)
            images = register_stack(client, args.file)
            _, functions = _load_stack(args.file)
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
    for image in register_stack(_client(args), args.file):
        print(f"registered image {image}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    if not args.no_build:
        cmd_build(args)
    _, functions = _load_stack(args.file)
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
    client = _client(args)
    params = {"name": args.name, "follow": "true" if args.follow else "false"}
    if args.tail is not None:
        params["tail"] = str(args.tail)
    with client.session.get(f"{client.url}/system/logs", params=params, stream=True,
                            timeout=None) as resp:
        if not resp.ok:
            raise SystemExit(f"HTTP {resp.status_code}: {resp.text.strip()}")
        for line in resp.iter_lines():
            if line:
                msg = json.loads(line)
                print(f"{msg['timestamp']} {msg['instance']} {msg['text']}", flush=True)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    client = _client(args)
    resp = client.session.delete(f"{client.url}/system/functions",
                                 json={"functionName": args.name}, timeout=60)
    print(f"remove {args.name}: HTTP {resp.status_code} {resp.text.strip()}")
    return 0 if resp.ok else 1


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
    if argv[:1] == ["profile"]:  # its own parser: fast_profiler.cli
        from fast_profiler.cli import profile_main

        return int(profile_main(argv[1:]))
    if argv[:1] == ["bench"]:  # its own parser: the MLPerf-based benchmark (bench/mlperf)
        from bench.mlperf.cli import bench_main

        return int(bench_main(argv[1:]))
    args = build_parser().parse_args(argv)
    if getattr(args, "state_dir", None) is None and args.command != "demo":
        args.state_dir = DEFAULT_STATE_DIR
    import requests

    try:
        return int(args.func(args))
    except requests.ConnectionError as e:
        raise SystemExit(f"fastgshare: cannot reach the gateway: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
