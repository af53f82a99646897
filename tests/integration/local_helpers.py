"""The local mode's parts in the test process: the node agent's replica supervisor in a thread,
and a provider app over the local backend (Flask's test client, no HTTP server)."""

from __future__ import annotations

import threading
from pathlib import Path

import redis

from fast_manager.replica_supervisor import ReplicaSupervisor


class Supervised:
    """The node agent's supervisor in a thread of the test, as the node agent runs it."""

    def __init__(self, redis_url: str, state_dir: Path, **kw: float) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.supervisor = ReplicaSupervisor(self.client, state_dir, redis_url,
                                            **{"stop_grace_s": 10.0, **kw})
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.supervisor.run, args=(self.stop_event,))
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)
        self.client.close()
