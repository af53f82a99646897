"""Who is on the other end of a loopback connection: the worker answers its sidecar only.

A worker listens on 127.0.0.1, where any local process can connect. When functions run as users
of their own (docs/security.md), another function's handler could call this worker directly,
around its sidecar's queue and device-time tokens. The kernel records each socket's owner in
``/proc/net/tcp``: a connection is accepted only from root (the sidecar of a platform run as
root) or from this worker's own user (the sidecar otherwise, and the single-user trust model).
Checked once per connection; the sidecar keeps its connections alive.
"""

from __future__ import annotations

import os
import socket
import struct

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _hex_endpoint(ip: str, port: int) -> str:
    """``127.0.0.1``, 5000 -> ``0100007F:1388``: the kernel prints the address as a native int."""
    if ":" in ip:
        raw = socket.inet_pton(socket.AF_INET6, ip)
        words = struct.unpack("=4I", raw)
        return "".join(f"{w:08X}" for w in words) + f":{port:04X}"
    return f"{struct.unpack('=I', socket.inet_aton(ip))[0]:08X}:{port:04X}"


def peer_uid(client: tuple, server: tuple, tables: tuple[str, ...] = TABLES) -> int | None:
    """The uid owning the client's end of the connection ``client`` -> ``server``; None when no
    table lists it or none can be read."""
    want_local = _hex_endpoint(client[0], int(client[1]))
    want_remote = _hex_endpoint(server[0], int(server[1]))
    for table in tables:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
                return int(fields[7])
    return None


def peer_allowed(client: tuple, server: tuple) -> bool:
    """Root or this process's own user; a connection whose owner cannot be found is refused,
    unless the kernel's tables cannot be read at all (then there is nothing to check against)."""
    if not any(os.access(t, os.R_OK) for t in TABLES):
        return True
    uid = peer_uid(client, server)
    return uid is not None and uid in (0, os.geteuid())
