"""What every benchmark shares: argument parsing, tables, JSON output, machine description."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "function_templates" / "python3-torch"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="a short run (for CI smoke and development)")
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json",
                   help=f"where to write the JSON result (default bench/results/{name}.json)")
    return p


def machine() -> dict[str, Any]:
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


@contextlib.contextmanager
def environ(changes: dict[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``changes`` (None: unset) inside the block, as it was after it."""
    def apply(values: dict[str, str | None]) -> None:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    old = {k: os.environ.get(k) for k in changes}
    try:
        apply(changes)
        yield
    finally:
        apply(old)


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", machine())
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {path}")


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process: shared pages counted by share."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def wait_http(url: str, timeout_s: float = 120, method: str = "GET") -> None:
    """Until ``url`` answers 200 (a POST sends ``{}``); RuntimeError after ``timeout_s``."""
    import urllib3

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if urllib3.request(method, url, body=b"{}" if method == "POST" else None,
                               timeout=2, retries=False).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 in {timeout_s} s")


def register_image(client: Any, image: str, handler_dir: Path) -> None:
    """Map ``image`` to a handler folder and the python3-torch template, as ``fastgshare build``
    does (``client``: a synchronous Redis client)."""
    from fastgshare import keys

    client.hset(keys.images(), image, json.dumps({"handler_dir": str(handler_dir),
                                                  "template_dir": str(TEMPLATE)}))


@contextlib.contextmanager
def platform_with_function(name: str, slo_ms: float) -> Iterator[tuple[Any, Any]]:
    """The embedded platform on a fresh state directory with the example function ``name``
    (``functions/<name>``) deployed with ``fastgshare/slo_ms`` and scale-from-zero allowed;
    yields (PlatformInfo, Redis client) and stops everything on exit."""
    import redis

    from fastgshare.platform import Platform
    from fastgshare.provider_client import ProviderClient

    p = Platform(Path(tempfile.mkdtemp(prefix=f"bench-{name}-")), port=0)
    info = p.start()
    try:
        client = redis.Redis.from_url(info.redis_url)
        image = f"bench/{name}:latest"
        register_image(client, image, ROOT / "functions" / name)
        ProviderClient(info.url, info.auth).deploy({
            "service": name, "image": image, "annotations": {"fastgshare/slo_ms": f"{slo_ms:g}"},
            "labels": {"com.openfaas.scale.min": "0"}})
        yield info, client
    finally:
        p.stop()
