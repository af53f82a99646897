"""The local provider's routing table: which replicas of each function are ready, kept fresh from
Redis by a background thread, so that the invoke path never waits on Redis.

Each provider worker process has one. The thread waits on the channel every write announces
itself on (``local_state.changes_channel``), then reads the change counter and reloads the replica
records when it moved: a replica the node agent marks draining leaves the table as soon as the
announcement arrives. The counter is also read every ``IDLE_CHECK_S`` (an announcement lost while
the subscription reconnects must not leave a table stale), and every ``ROUTING_POLL_S`` while
the subscription cannot be made. Polling the counter every 50 ms instead cost an idle two-worker
provider ~17-33 ms of CPU per second (0.2-0.3 ms per request at 100 rps). A replica the proxy
could not connect to is skipped at once by this worker (``evict``) until its record changes or
``EVICT_S`` passes. A function whose current spec failed its last
``local_state.START_FAILURES_TO_REFUSE`` starts (the supervisor's record) and has no ready replica
is refused at once by ``pick`` (``FunctionCannotStart``, 503 with the reason), not after the
scale-from-zero wait.
Must not start or stop anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import redis

from fastgshare import local_state
from gateway_plugin.errors import FunctionCannotStart, NoReplicaReady

log = logging.getLogger("fastgshare.local.routing")

ROUTING_POLL_S = 0.05
"""How often a provider worker asks Redis whether replica records or desired state changed
when it cannot subscribe to the announcements (and the period ``settle`` allows other workers)."""
IDLE_CHECK_S = 0.5
"""How often the counter is read while subscribed and nothing was announced (also how long
``close`` may wait for the thread)."""
FULL_RELOAD_S = 5.0
"""A reload even without a change of the counter (a lost bump must not leave a table stale)."""
EVICT_S = 2.0
"""How long a replica that refused a connection is skipped by this worker (unless its record
changes first): longer than the node agent takes to notice it died."""

Ref = tuple[str, str]


@dataclass(frozen=True)
class Route:
    replica_id: str
    url: str
    weight: int
    """SM share x quota limit: a bigger share gets proportionally more requests."""


@dataclass(frozen=True)
class Snapshot:
    """What one read of Redis said; ``read_at_s`` is when that read began (monotonic)."""

    read_at_s: float
    version: int = -1
    desired: Mapping[Ref, int] = field(default_factory=dict)
    ready: Mapping[Ref, tuple[Route, ...]] = field(default_factory=dict)
    failing: Mapping[Ref, str] = field(default_factory=dict)
    """Functions that cannot start (wanted, their current spec's last starts all failed): why."""


def pick_weighted(routes: Sequence[Route], credit: dict[str, int]) -> Route:
    """nginx's smooth weighted round robin: interleaves replicas in proportion to weight.
    ``credit`` (replica id -> credit) is updated in place. Pure."""
    total = 0
    best: Route | None = None
    for route in routes:
        total += route.weight
        credit[route.replica_id] = credit.get(route.replica_id, 0) + route.weight
        if best is None or credit[route.replica_id] > credit[best.replica_id]:
            best = route
    assert best is not None
    credit[best.replica_id] -= total
    return best


def read_snapshot(client: redis.Redis, now_s: float) -> Snapshot:
    """One consistent-enough read: the counter first, so a change after it forces a reload."""
    version = local_state.version(client)
    functions, replicas = local_state.read_all(client)
    ready = {ref: tuple(Route(r.replica_id, r.url, r.weight) for r in replicas.get(ref, [])
                        if r.ready and not r.draining)
             for ref in functions}
    failing = {}
    for ref, rec in local_state.read_start_failures(client).items():
        fn = functions.get(ref)
        if (fn is not None and rec.generation == fn.generation and fn.desired_total() > 0
                and rec.failures >= local_state.START_FAILURES_TO_REFUSE):
            failing[ref] = (f"function {ref[1]!r} cannot start: its last {rec.failures} replica "
                            f"starts failed; last error: {rec.reason}")
    return Snapshot(now_s, version, {ref: fn.desired_total() for ref, fn in functions.items()},
                    ready, failing)


class RoutingTable:
    """Ready replicas by function, refreshed in the background; thread-safe."""

    def __init__(self, client: redis.Redis, *, poll_s: float = ROUTING_POLL_S,
                 clock: Callable[[], float] = time.monotonic, start_thread: bool = True) -> None:
        self._redis = client
        self._poll_s = poll_s
        self._clock = clock
        self._snap = Snapshot(read_at_s=float("-inf"))
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._credit: dict[Ref, dict[str, int]] = {}
        self._evicted: dict[str, float] = {}
        self._stop = threading.Event()
        self._redis_down = False
        self._thread: threading.Thread | None = None
        if start_thread:
            self.refresh()
            self._thread = threading.Thread(target=self._run, name="local-routing", daemon=True)
            self._thread.start()

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    def refresh(self) -> None:
        """Reload when the counter moved (or the table is old); else only mark it current."""
        now_s = self._clock()
        old = self._snap
        try:
            if now_s - old.read_at_s < FULL_RELOAD_S and local_state.version(self._redis) == old.version:
                new = Snapshot(now_s, old.version, old.desired, old.ready, old.failing)
            else:
                new = read_snapshot(self._redis, now_s)
        except redis.RedisError as e:
            if not self._redis_down:
                log.warning("redis unavailable (%s): routing on the last table read", e)
            self._redis_down = True
            return
        if self._redis_down:
            log.warning("redis reachable again: routing from fresh tables")
        self._redis_down = False
        with self._lock:
            if new.ready is not old.ready:  # a replica whose record changed is tried again
                urls = {r.url for routes in new.ready.values() for r in routes}
                changed = {r.url for routes in old.ready.values() for r in routes} ^ urls
                for url in [u for u in self._evicted if u in changed or u not in urls]:
                    del self._evicted[url]
            self._snap = new
        with self._changed:
            self._changed.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(local_state.changes_channel())
                self.refresh()  # what changed before the subscription took
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=IDLE_CHECK_S) is not None:
                        while pubsub.get_message(timeout=0.0) is not None:
                            pass  # a burst of writes: one reload
                    self.refresh()
            except (redis.RedisError, OSError) as e:  # poll until a subscription takes again
                if not self._redis_down:
                    log.warning("redis unavailable (%s): routing on the last table read", e)
                self._redis_down = True
                self._stop.wait(self._poll_s)
                self.refresh()
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def pick(self, namespace: str, name: str) -> str:
        """A ready replica's base URL, weighted by share; NoReplicaReady when there is none, or
        FunctionCannotStart when none is coming (its last starts failed)."""
        ref = (namespace, name)
        snap = self._snap
        routes = snap.ready.get(ref, ())
        with self._lock:
            if self._evicted:
                now_s = self._clock()
                routes = tuple(r for r in routes if self._evicted.get(r.url, 0.0) <= now_s)
            if routes:
                return pick_weighted(routes, self._credit.setdefault(ref, {})).url
        if ref in snap.failing:
            raise FunctionCannotStart(snap.failing[ref])
        raise NoReplicaReady(f"no replica of {name!r} is ready "
                             f"({snap.desired.get(ref, 0)} desired)")

    def evict(self, url: str) -> None:
        """This worker could not connect to ``url``: skip it for ``EVICT_S``."""
        with self._lock:
            self._evicted[url] = self._clock() + EVICT_S

    def wait_ready(self, namespace: str, name: str, timeout_s: float) -> bool:
        """True once a replica is ready, or once the function is known unable to start (``pick``
        then says why); False after ``timeout_s``, or as soon as a table read after the wait
        began says none is wanted (scaled to zero, or removed, meanwhile)."""
        ref = (namespace, name)
        start_s = self._clock()
        deadline_s = start_s + timeout_s
        while True:
            snap = self._snap
            if ref in snap.failing and not snap.ready.get(ref):
                return True
            if snap.ready.get(ref):
                try:
                    self.pick(namespace, name)
                    return True
                except NoReplicaReady:
                    pass  # only evicted ones: wait for a change
            if snap.read_at_s >= start_s and snap.desired.get(ref, 0) == 0:
                return False
            left_s = deadline_s - self._clock()
            if left_s <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left_s, self._poll_s * 4))

    def settle(self, timeout_s: float = 1.0) -> None:
        """Return once this worker's table was read after now, and one more poll period passed
        (the other workers poll at the same rate): after a removal, so that no worker still
        routes to a replica that is draining away."""
        start_s = self._clock()
        deadline_s = start_s + timeout_s
        while self._snap.read_at_s <= start_s and self._clock() < deadline_s:
            with self._changed:
                self._changed.wait(self._poll_s)
        self._stop.wait(self._poll_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
