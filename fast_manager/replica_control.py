"""Run-time changes to running replicas: the node agent sets a replica's batch through its sidecar.

The scheduler's first lever of a burst is the batch of the replicas already running (no cold
start): it changes a configuration group's ``batch`` with the same group id
(``PUT /system/fastgshare/configurations``), the node agent's supervisor sees a ready replica of
that group whose batch differs, and sends ``PUT /_/batch`` to its sidecar, which resizes its gate
and tells its worker (``fast_manager.sidecar.Sidecar.set_batch``). No restart, no new process.

Only the node agent may do that: each replica gets a control token at start
(``FASTGSHARE_CONTROL_TOKEN``, kept from the worker like every sidecar-only variable), an HMAC of
its replica id under a key in ``STATE/secrets`` (0600, the platform's user alone), so a node
agent that restarts and re-adopts its replicas can still reach them, and no function (nor any
other local user) can change another's batch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import urllib3

log = logging.getLogger(__name__)

KEY_FILE = "replica-control-key"
"""The node's control key, under ``STATE/secrets``."""
CONTROL_HEADER = "X-Fastgshare-Control"
"""As ``fast_manager.sidecar.CONTROL_HEADER`` (not imported: the sidecar module is the replica's)."""
TIMEOUT_S = 10.0


def control_key(state_dir: Path) -> bytes:
    """This node's key (made once, 0600 in ``STATE/secrets``)."""
    folder = Path(state_dir) / "secrets"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


def control_token(key: bytes, replica_id: str) -> str:
    """The token replica ``replica_id``'s sidecar accepts."""
    return hmac.new(key, replica_id.encode(), hashlib.sha256).hexdigest()


class Replica(Protocol):
    """What a change needs of a replica record (``fastgshare.local_replicas.Replica``)."""

    replica_id: str
    batch: int

    @property
    def url(self) -> str: ...


class BatchControl:
    """Sends batch changes to sidecars, one at a time per replica, each in a thread of its own
    (the reconcile loop never waits on a replica); ``applied(rep, batch)`` once a sidecar took it
    (or said its handler cannot batch: asking again would not change that)."""

    def __init__(self, http: urllib3.PoolManager, key: bytes,
                 applied: Callable[[Replica, int], None]) -> None:
        self._http = http
        self._key = key
        self._applied = applied
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def want(self, rep: Replica, batch: int) -> None:
        """Make ``rep``'s batch ``batch`` unless it is, or a change is already on its way."""
        if rep.batch == batch:
            return
        with self._lock:
            if rep.replica_id in self._busy:
                return
            self._busy.add(rep.replica_id)
        threading.Thread(target=self._send, args=(rep, batch), daemon=True,
                         name=f"batch-{rep.replica_id}").start()

    def _send(self, rep: Replica, batch: int) -> None:
        try:
            resp = self._http.request(
                "PUT", f"{rep.url}/_/batch", body=json.dumps({"maxBatch": batch}).encode(),
                headers={CONTROL_HEADER: control_token(self._key, rep.replica_id),
                         "Content-Type": "application/json"},
                timeout=TIMEOUT_S)
            if resp.status == 200:
                log.info("replica %s: batch %d -> %d at run time", rep.replica_id, rep.batch or 1,
                         batch)
                self._applied(rep, batch)
            elif resp.status == 409:
                log.warning("replica %s cannot batch (%s): its batch stays", rep.replica_id,
                            resp.data.decode(errors="replace").strip())
                self._applied(rep, batch)
            else:
                log.warning("replica %s refused batch %d: %d %s", rep.replica_id, batch,
                            resp.status, resp.data.decode(errors="replace").strip())
        except urllib3.exceptions.HTTPError as e:
            log.warning("replica %s: batch %d not sent (%s); the next pass tries again",
                        rep.replica_id, batch, e)
        finally:
            with self._lock:
                self._busy.discard(rep.replica_id)
