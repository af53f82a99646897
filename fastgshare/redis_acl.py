"""Who may do what in the platform's Redis: the ACL users, their credentials and URLs.

Two users, and the ``default`` user off (an unauthenticated client can do nothing but AUTH):

- ``PLATFORM_USER``: the provider, node agent, profiler and scheduler: everything;
- ``SIDECAR_USER``: a replica's sidecar: the arbiter's scripts on the arbiter's keys, and the
  device fault list and channel; no other key (desired state, secrets, profiles), no FLUSHALL,
  CONFIG, KEYS, DEBUG or MODULE. Scripts run under the caller's ACL, so the commands the
  arbiter's Lua calls are granted too, on the arbiter's keys alone.

The lists below are the contract with ``fast_manager.arbiter`` (``lua.py``, ``client.py``) and
``fast_manager.device_faults``: a sidecar command missing here fails with NOPERM, which
``tests/integration/test_redis_acl.py`` catches by running a real arbiter client and fault
channel as the sidecar user. Passwords are random, kept in files of the state directory (0600,
the platform's alone) and written into the ACL file as SHA-256 hashes. Pure apart from
``ensure_passwords`` (which reads and writes those files).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from fastgshare import keys

PLATFORM_USER = "fastgshare"
"""The platform components' Redis user."""
SIDECAR_USER = "fastgshare-sidecar"
"""The sidecars' Redis user."""

SIDECAR_KEY_PATTERNS = (f"{keys.PREFIX}:arb:*", keys.device_faults("*"))
"""Key patterns a sidecar may touch (read and write)."""
SIDECAR_CHANNELS = (keys.device_faults("*"),)
"""Pub/sub channels a sidecar may publish and subscribe to."""
SIDECAR_COMMANDS = (
    # connection: redis-py's handshake and health checks
    "ping", "hello", "select",  # (redis-py ignores a refused CLIENT SETINFO)
    # the arbiter's client (fast_manager.arbiter.client) and redis-py's Script
    "evalsha", "eval", "script|load", "script|exists", "hlen", "blpop",
    # what the arbiter's Lua calls (fast_manager.arbiter.lua), checked against the caller
    "time", "get", "set", "del", "incr", "pexpire", "hget", "hset", "hdel", "hgetall",
    "hincrby", "hkeys", "rpush", "zadd", "zcard", "zrange", "zrem", "zscore",
    # the device fault channel (fast_manager.device_faults)
    "lpush", "ltrim", "publish", "subscribe", "unsubscribe",
)
"""Every command a sidecar sends, or makes a script send."""

PLATFORM_PASSWORD_FILE = "redis-platform-password"
SIDECAR_PASSWORD_FILE = "redis-sidecar-password"


def _hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def sidecar_rules(password: str) -> list[str]:
    return (["on", _hash(password), "resetkeys", "resetchannels", "-@all"]
            + [f"~{p}" for p in SIDECAR_KEY_PATTERNS] + [f"&{c}" for c in SIDECAR_CHANNELS]
            + [f"+{c}" for c in SIDECAR_COMMANDS])


def platform_rules(password: str) -> list[str]:
    return ["on", _hash(password), "~*", "&*", "+@all"]


DEFAULT_RULES = ["off", "resetpass", "resetkeys", "resetchannels", "-@all"]
"""The ``default`` user: off, no password, no commands (no ``nopass`` client gets in)."""


@dataclass(frozen=True)
class RedisPasswords:
    """The two users' passwords."""

    platform: str
    sidecar: str

    def acl_file(self) -> str:
        """The server's ACL file (``aclfile``; a Kubernetes Secret's ``users.acl``)."""
        return "".join(f"user {name} {' '.join(rules)}\n" for name, rules in (
            ("default", DEFAULT_RULES), (PLATFORM_USER, platform_rules(self.platform)),
            (SIDECAR_USER, sidecar_rules(self.sidecar))))

    def platform_url(self, base_url: str) -> str:
        return with_user(base_url, PLATFORM_USER, self.platform)

    def sidecar_url(self, base_url: str) -> str:
        return with_user(base_url, SIDECAR_USER, self.sidecar)


def with_user(url: str, user: str, password: str) -> str:
    """``redis://host:port/0`` with ``user:password@`` (replacing any there)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def without_credentials(url: str) -> str:
    """The URL as it may be shown (logs, status): no user or password."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query,
                       parts.fragment))


def _read_or_create(path: Path) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return path.read_text().strip()
    value = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as out:
        out.write(value)
    return value


def ensure_passwords(secrets_dir: Path) -> RedisPasswords:
    """Read the users' passwords from ``secrets_dir``, creating them (0600) on first start."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    return RedisPasswords(_read_or_create(secrets_dir / PLATFORM_PASSWORD_FILE),
                          _read_or_create(secrets_dir / SIDECAR_PASSWORD_FILE))


def write_acl_file(path: Path, passwords: RedisPasswords) -> Path:
    """Write the ACL file (0600) where the server reads it; returns ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(passwords.acl_file())
    path.chmod(0o600)
    return path


def kubernetes_secrets(passwords: RedisPasswords, *, namespace: str = "openfaas",
                       functions_namespace: str = "openfaas-fn") -> list[dict[str, object]]:
    """The Secrets ``deploy/kubernetes`` expects: the ACL file and the platform's password beside
    Redis; the sidecars' password in the functions' namespace (mounted by no one else)."""
    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "fastgshare-redis", "namespace": namespace},
         "stringData": {"users.acl": passwords.acl_file(), "platform-password": passwords.platform}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "fastgshare-redis-sidecar", "namespace": functions_namespace},
         "stringData": {"password": passwords.sidecar}},
    ]


def main(argv: list[str] | None = None) -> int:
    """``kubernetes``: print the two Secrets (new random passwords) for ``kubectl apply -f -``;
    ``compose DIR``: write ``DIR/redis-users.acl`` and print the passwords as ``.env`` lines."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m fastgshare.redis_acl",
                                     description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kubernetes")
    k.add_argument("--namespace", default="openfaas")
    k.add_argument("--functions-namespace", default="openfaas-fn")
    c = sub.add_parser("compose")
    c.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    pw = RedisPasswords(secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    if args.cmd == "kubernetes":
        items = kubernetes_secrets(pw, namespace=args.namespace,
                                   functions_namespace=args.functions_namespace)
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1))
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    acl = args.dir / "redis-users.acl"
    acl.write_text(pw.acl_file())  # hashes only; the Redis container's user must read it
    acl.chmod(0o644)
    print(f"FASTGSHARE_REDIS_PASSWORD={pw.platform}\nFASTGSHARE_SIDECAR_REDIS_PASSWORD={pw.sidecar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
