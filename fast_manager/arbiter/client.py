"""``RedisTokenClient``: the sidecar's side of the device arbiter (a ``TokenClient``).

A token is a time slice (``token_us``, sized by the arbiter from this replica's burst length): the
client keeps it across back-to-back executions until the time it has HELD the token (wall time on
its own clock since the lease arrived) reaches the slice, and only then (or when no next acquire
comes within ``linger_s``) gives it back with the busy time of the whole burst; the arbiter
charges the time held (or the busy time if larger). So an execution inside a slice costs Redis
nothing, and the gaps between executions are paid by the replica that kept the device idle.

acquire = one ACQUIRE script call (enqueue + grant round). A replica that is not granted at once
blocks on its own wake list (BLPOP): whichever script grants it pushes the lease there. The BLPOP
timeout is the script's hint (the next lease expiry or cap easing, when nothing else would wake
us) and at most ``max_block_s``, so a waiter costs Redis a handful of commands per grant, never a
loop. The replica holds at most one token: concurrent acquires queue locally on a lock.

While it holds a token the client renews the lease every half grace (``RENEW``: the lease is
extended to now + grace), so an execution that runs past its token and grace keeps the device,
and no neighbour is admitted beyond the SM rule while it still runs; a dead sidecar stops
renewing and blocks nobody past its last lease. A renewal that finds the lease gone (it lapsed,
e.g. Redis was unreachable for a whole grace) is logged and counted (``leases_lost``).

**Bypass for a replica alone on its device with limit 1** (``may_keep``): such a replica may hold
the device for as long as it likes, so once its heartbeat has seen that no other replica is
registered on the device (``HLEN`` of the device's configurations, every ``keep_check_s``) it
keeps its token through idle gaps instead of giving it back after ``linger_s``: its requests make
no Redis call at all. The kept token is still a real token in Redis (its lease renewed), so a
replica that joins the device queues behind it like behind any holder; the next check (at most
``keep_check_s`` later) sees it, the kept token goes back, and from then on the replica takes
tokens from the arbiter per slice as every shared replica does. While kept and idle, the token is
also returned every renewal period (half the grace) and taken afresh by the next request: the
arbiter charges it the whole time held either way, and its burst estimate (which sizes leases)
stays at most half a grace.

When Redis cannot be reached the client switches to ``LocalLimiter`` (mode LOCAL_FALLBACK, logged),
probes Redis every ``probe_interval_s``, and switches back to SHARED by itself when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from redis import exceptions as redis_errors

from fast_manager.tokens import Lease, TokenMode

from . import model
from .fallback import LocalLimiter
from .lua import ArbiterScripts, device_keys, parse_outcome, parse_wake, wake_key

log = logging.getLogger(__name__)

REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)
"""Errors that mean "the arbiter is unreachable" (and so: fall back), not "a bug"."""

DEFAULT_MAX_BLOCK_S = 5.0
"""Longest single BLPOP: a safety net for a lost wake-up (e.g. Redis restarted mid-wait)."""
DEFAULT_OP_TIMEOUT_S = 2.0
"""A script call that takes longer than this counts as Redis being down."""
DEFAULT_PROBE_INTERVAL_S = 1.0
"""While in fallback, how often Redis is pinged to switch back."""
DEFAULT_NEXT_WAITING_HOLD_S = 0.05
"""How long a released token is kept for a next acquire the sidecar announced (``next_waiting``):
only a safety net for a request cancelled between the two; the acquire normally comes within a
few event-loop turns, which on a loaded machine can exceed ``linger_s``."""
DEFAULT_LINGER_S = 0.010
"""How long a released token waits for this replica's next acquire before going back. A
saturated replica's next acquire comes within it, and then release and re-enqueue happen in one
script, so the replica competes for the token it returns instead of losing every round to a
waiting neighbour while it is "between requests". Costs an idle replica's neighbours at most this
long per release (and the replica itself that much held time).

It must cover a whole round trip outside the sidecar (sidecar -> provider -> caller -> provider ->
sidecar), not only the sidecar's own turnaround: with 2 ms, a closed-loop caller going through the
provider came back after the token had gone on this 2-core machine, so every request paid an
ACQUIRE and a RELEASE script (~1.9 calls per request, sidecar CPU 0.8 -> 2.1 ms per request plus
~0.7 ms of Redis CPU), which more than doubled provider + sidecar latency (bench.overhead). At
10 ms the token is reused for ~96 % of such requests; 10 ms is half the shortest token."""


DEFAULT_KEEP_CHECK_S = 0.05
"""How often a replica that keeps its token alone on its device (the bypass) checks that it still
is: the longest a replica that joins the device waits for the kept token beyond the execution in
progress (shorter than a token's longest slice, 100 ms)."""
NOT_ALONE_RECHECK_S = 1.0
"""How long a replica that may keep its token waits before it checks again that it is still not
alone (one ``HLEN`` per second at most on a shared device)."""


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sending a token back failed", exc_info=task.exception())


class RedisTokenClient:
    """Tokens for one replica from its device's arbiter in Redis (``redis.asyncio`` client)."""

    def __init__(self, redis_client: Any, device_id: str, replica: str, spec: model.ReplicaSpec,
                 params: model.ArbiterParams, *, owns_client: bool = False,
                 max_block_s: float = DEFAULT_MAX_BLOCK_S,
                 op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
                 probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
                 linger_s: float = DEFAULT_LINGER_S,
                 renew_every_s: float | None = None,
                 keep_check_s: float = DEFAULT_KEEP_CHECK_S) -> None:
        self.mode = TokenMode.SHARED
        self.device_id = device_id
        self.replica = replica
        self.spec = spec
        self.params = params
        self.fallback_switches = 0
        """How many times this client went to LOCAL_FALLBACK (for metrics and tests)."""
        self._redis = redis_client
        self._owns_client = owns_client
        self._scripts = ArbiterScripts.register(redis_client, device_id, params)
        self._scripts_cfg_key = device_keys(device_id)[0]
        self._wake = wake_key(device_id, replica)
        self._fallback = LocalLimiter(spec, params, _monotonic_us)
        self._slot = asyncio.Lock()
        self._probe: asyncio.Task[None] | None = None
        self._max_block_s = max_block_s
        self._op_timeout_s = op_timeout_s
        self._probe_interval_s = probe_interval_s
        self._linger_s = linger_s
        self._pending: tuple[Lease, float] | None = None
        """A released shared token not yet sent back (lingering), with the busy ms of its burst."""
        self._flush_timer: asyncio.TimerHandle | None = None
        """Sends the lingering token back when its linger ends (a timer, not a task per release)."""
        self.may_keep = spec.limit_us >= params.window_us
        """Limit 1: alone on its device, the replica may keep its token (the bypass)."""
        self._keep_check_s = keep_check_s
        self._alone = False
        """Last seen: no other replica is registered on the device."""
        self._alone_checked_at = -math.inf
        self._keeping = False
        """The token in hand (or pending) is kept past its slice: the bypass is in use."""
        self.kept = 0
        """Acquires served by a kept token (the bypass: no Redis call)."""
        self.keeps_dropped = 0
        """Times a kept token went back because another replica joined the device."""
        self._pending_burst: float | None = None
        """Busy ms already used under the token being reused (None: a fresh token)."""
        self.reused = 0
        """Acquires served from a lingering token's remaining slice (no Redis call)."""
        self._held_since: float | None = None
        """Monotonic time since which this replica has held shared tokens without a break."""
        self._slice_since = 0.0
        """Monotonic time at which the token in hand (or lingering) arrived: its slice's start."""
        self._held_ms_done = 0.0
        self._renew_every_s = (params.lease_grace_us / 2e6 if renew_every_s is None
                               else renew_every_s)
        """Heartbeat period while a token is held: half the grace, so a renewal lands well
        before a lease that was granted (or last renewed) with at least the grace to run."""
        self._heartbeat: asyncio.Task[None] | None = None
        self.renewals = 0
        """Leases extended by a heartbeat (executions that ran past half the grace)."""
        self.leases_lost = 0
        self.tokens_total = 0
        """Tokens granted to this replica."""
        self.tokens_pushed = 0
        """... of which pushed by another's script while it waited: hand-overs, each with the
        wake-up latency in which the device is reserved for it but nobody runs."""
        """Heartbeats that found the lease already gone (it lapsed before being renewed)."""

    # ---- the TokenClient protocol -------------------------------------------------------

    async def acquire(self, timeout_s: float) -> Lease | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._slot.locked():
            try:  # asyncio.timeout, not wait_for: one task less per call
                async with asyncio.timeout(max(0.0, timeout_s)):
                    await self._slot.acquire()
            except TimeoutError:
                return None
        else:
            await self._slot.acquire()  # free: taken at once, no timer armed and cancelled
        lease: Lease | None = None
        try:
            if self.mode is TokenMode.SHARED:
                pending = self._take_pending()
                if pending is not None and self._keeping:
                    self.kept += 1  # alone on the device: the token was kept for this
                    self._pending_burst = pending[1]
                    lease = pending[0]
                    return lease
                if pending is not None and self._slice_ms() < pending[0].granted_ms:
                    self.reused += 1  # the slice has time left: keep executing under it
                    self._pending_burst = pending[1]
                    lease = pending[0]
                    return lease
                try:
                    lease = await self._acquire_shared(deadline, pending)
                    return lease
                except REDIS_DOWN as e:
                    self._enter_fallback(e)
            lease = await self._fallback.acquire(deadline - loop.time())
            return lease
        finally:
            if lease is None:
                self._slot.release()

    async def release(self, lease: Lease, busy_ms: float, next_waiting: bool = False) -> None:
        try:
            if lease.token_id.startswith("local:"):
                self._fallback.release(busy_ms)
                return
            burst_ms = busy_ms
            if self._pending_burst is not None:
                burst_ms += self._pending_burst
                self._pending_burst = None
            if self.may_keep and self._alone and self.mode is TokenMode.SHARED:
                await self._flush_now()  # defensive, as below: there is one slot
                self._keeping = True  # the bypass: no timer, the heartbeat watches
                self._pending = (lease, burst_ms)
                return
            self._keeping = False
            hold_s = DEFAULT_NEXT_WAITING_HOLD_S if next_waiting else self._linger_s
            if hold_s <= 0:
                await self._send_release((lease, burst_ms))
                return
            await self._flush_now()  # only one token may linger (defensive: there is one slot)
            self._pending = (lease, burst_ms)
            self._flush_timer = asyncio.get_running_loop().call_later(hold_s, self._flush_due)
        finally:
            if self._slot.locked():
                self._slot.release()

    async def close(self) -> None:
        await self._flush_now()
        self._stop_heartbeat()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.mode is TokenMode.SHARED:
            with contextlib.suppress(*REDIS_DOWN):
                await self._call(self._scripts.unregister(self.replica))
        if self._owns_client:
            with contextlib.suppress(*REDIS_DOWN):
                await self._redis.aclose()

    # ---- shared mode ------------------------------------------------------------------------

    async def _call(self, awaitable: Any) -> Any:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the call in a new task,
        # one more event-loop turn (and task) on every script call, hand-overs included
        async with asyncio.timeout(self._op_timeout_s):
            return await awaitable

    def _lease(self, token_id: int, token_us: int, expires_us: int) -> Lease:
        """The lease just granted to this replica (and its heartbeat started)."""
        self._stop_heartbeat()
        self._heartbeat = asyncio.ensure_future(self._renew_while_held(token_id))
        self.tokens_total += 1
        return Lease(f"{self.device_id}:{self.replica}:{token_id}", token_us / 1000,
                     expires_us / 1e6)

    def _release_args(self, pending: tuple[Lease, float]) -> tuple[int, int, int]:
        lease, busy_ms = pending
        return (int(lease.token_id.rsplit(":", 1)[1]), round(lease.granted_ms * 1000),
                round(busy_ms * 1000))

    @property
    def held_ms_total(self) -> float:
        """Wall time this replica has held shared tokens, from each lease's arrival to its return,
        the token in hand included (this client's clock; the arbiter charges the same span, from
        the grant, on its own)."""
        return self._held_ms_done + self._held_ms()

    def _held_ms(self) -> float:
        return 0.0 if self._held_since is None else (time.monotonic() - self._held_since) * 1000

    def _slice_ms(self) -> float:
        return (time.monotonic() - self._slice_since) * 1000

    def _got_token(self) -> None:
        self._slice_since = time.monotonic()
        if self._held_since is None:
            self._held_since = self._slice_since

    def _token_returned(self, at: float | None = None) -> None:
        self._stop_heartbeat()
        if self._held_since is not None:
            self._held_ms_done += ((time.monotonic() if at is None else at)
                                   - self._held_since) * 1000
        self._held_since = None

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _renew_while_held(self, token_id: int) -> None:
        """The heartbeat: renew the lease every ``renew_every_s`` until the token is returned
        (this task is cancelled then). A failed call is retried at the next beat; a lost lease
        ends the heartbeat (nothing to renew: the arbiter has reaped it or will).

        For a replica that may keep its token (``may_keep``) it also checks, every
        ``keep_check_s`` while alone (every ``NOT_ALONE_RECHECK_S`` otherwise), whether another
        replica is registered on the device: then a kept token goes back at once. A kept token
        that is idle when a renewal is due goes back instead of being renewed (see the module
        docstring: it bounds what one token is charged)."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self._renew_every_s
        while True:
            if self.may_keep and loop.time() - self._alone_checked_at >= (
                    self._keep_check_s if self._alone else NOT_ALONE_RECHECK_S):
                await self._check_alone()
                if self._keeping and not self._alone:
                    self.keeps_dropped += 1
                    log.info("device %s replica %s: another replica joined the device; the kept "
                             "token goes back (tokens from the arbiter again)", self.device_id,
                             self.replica)
                    if await self._return_kept():
                        return
            if loop.time() >= renew_at:
                renew_at = loop.time() + self._renew_every_s
                if self._keeping and await self._return_kept():
                    return
                try:
                    out = parse_outcome(await self._call(self._scripts.renew(self.replica,
                                                                             token_id)))
                except REDIS_DOWN as e:
                    log.debug("lease renewal failed (%s); retrying", e)
                    continue
                if out.grants:
                    self.renewals += 1
                    continue
                self.leases_lost += 1
                self._keeping = False  # never keep a token the arbiter no longer counts as ours
                log.warning("device %s replica %s: lease of token %d lapsed before it was "
                            "renewed; the execution runs on without it", self.device_id,
                            self.replica, token_id)
                return
            wake_at = renew_at
            if self.may_keep:
                wake_at = min(wake_at, self._alone_checked_at + (
                    self._keep_check_s if self._alone else NOT_ALONE_RECHECK_S))
            await asyncio.sleep(max(0.0, wake_at - loop.time()))

    async def _check_alone(self) -> None:
        self._alone_checked_at = asyncio.get_running_loop().time()
        try:
            others = int(await self._call(self._redis.hlen(self._scripts_cfg_key))) - 1
        except REDIS_DOWN:
            others = 1  # unknown: not alone
        self._alone = others <= 0

    async def _return_kept(self) -> bool:
        """Give the kept token back if no request is using it (True: it went back, and this
        heartbeat, cancelled by the return, must end); in use, the release that ends its use
        returns it (``_alone`` is False now, or the renewal is due again)."""
        if self._slot.locked():
            return False
        self._keeping = False
        pending = self._take_pending()
        if pending is None:
            return False
        self._heartbeat = None  # the release below must not cancel this very task
        await self._send_release(pending)
        return True

    def _take_pending(self) -> tuple[Lease, float] | None:
        """Claim the lingering release (synchronously, so the flusher cannot also send it)."""
        pending, self._pending = self._pending, None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        return pending

    async def _send_release(self, pending: tuple[Lease, float]) -> None:
        self._token_returned()
        try:
            await self._call(self._scripts.release(self.replica, *self._release_args(pending)))
        except REDIS_DOWN as e:
            self._enter_fallback(e)
            self._fallback.release(pending[1])

    def _flush_due(self) -> None:
        """The linger ended with no next acquire: send the token back (a task only now)."""
        self._flush_timer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            task = asyncio.ensure_future(self._send_release(pending))
            task.add_done_callback(_log_failure)

    async def _flush_now(self) -> None:
        pending = self._take_pending()
        if pending is not None:
            await self._send_release(pending)

    async def _acquire_shared(self, deadline: float,
                              pending: tuple[Lease, float] | None) -> Lease | None:
        returned_at = None
        try:
            if pending is None:
                first = self._scripts.acquire(self.replica, self.spec)
            else:  # give back the lingering token and re-enqueue, atomically
                first = self._scripts.release(self.replica, *self._release_args(pending),
                                              requeue=self.spec)
                returned_at = time.monotonic()
                pending = None
            out = parse_outcome(await self._call(first))
            for g in out.grants:
                if g.replica == self.replica:
                    # Granted again in the same script: the device never left this replica.
                    self._got_token()
                    return self._lease(g.token_id, g.token_us, g.expires_us)
            if returned_at is not None:
                self._token_returned(returned_at)
            lease = await self._wait_for_push(deadline, out.hint_us)
            if lease is not None:
                return lease
        except REDIS_DOWN:
            self._token_returned(returned_at)
            if pending is not None:
                self._fallback.release(pending[1])
            raise
        except asyncio.CancelledError:
            self._token_returned(returned_at)
            # The request went away while waiting: leave the queue (in the background, since we
            # are being cancelled) so that no grant is held for nobody.
            task = asyncio.ensure_future(self._cancel_quietly())
            task.add_done_callback(lambda t: t.exception())
            raise
        await self._call(self._scripts.cancel(self.replica))
        return None

    async def _wait_for_push(self, deadline: float, hint_us: int) -> Lease | None:
        """Block on the wake list until a grant is pushed there (None: ``deadline`` passed).

        The BLPOP waits long (``max_block_s``, a safety net); the script's hint (a lease expiry or
        a cap easing, when no other event would grant us) is kept by a local timer that runs one
        TICK, whose grant, if any, is pushed to the same list. Redis's own timeouts for blocked
        clients are only as fine as its ``hz`` (100 ms by default): a BLPOP timeout as the timer
        left a capped replica, and so the device, idle for up to 100 ms per cap easing.
        """
        loop = asyncio.get_running_loop()
        pop: asyncio.Future[Any] | None = None
        pop_deadline = 0.0
        try:
            while (remaining := deadline - loop.time()) > 0:
                if pop is None:
                    pop = asyncio.ensure_future(self._redis.blpop([self._wake],
                                                                  timeout=self._max_block_s))
                    pop_deadline = loop.time() + self._max_block_s + self._op_timeout_s
                wait_s = remaining if hint_us < 0 else min(remaining, hint_us / 1e6)
                wait_s = max(0.0005, min(wait_s, pop_deadline - loop.time()))
                done, _ = await asyncio.wait({pop}, timeout=wait_s)
                if pop in done:
                    item, pop = pop.result(), None
                    if item is not None:
                        self._got_token()
                        self.tokens_pushed += 1
                        return self._lease(*parse_wake(item[1]))
                    # The safety net: look again (and re-register, after a Redis restart).
                    out = parse_outcome(await self._call(
                        self._scripts.acquire(self.replica, self.spec)))
                    for g in out.grants:
                        if g.replica == self.replica:
                            self._got_token()
                            return self._lease(g.token_id, g.token_us, g.expires_us)
                    hint_us = out.hint_us
                elif loop.time() >= pop_deadline:
                    raise TimeoutError("BLPOP on the wake list did not return")
                elif hint_us >= 0:
                    # A lease expiry or a cap easing is due: one grant round; a grant to us
                    # lands on the wake list, where the pending BLPOP takes it at once.
                    hint_us = parse_outcome(await self._call(self._scripts.tick())).hint_us
            return None
        finally:
            if pop is not None and not pop.done():
                pop.cancel()  # redis-py drops that connection; a lease it may have popped is
                # handed back by the CANCEL that follows (it clears our holding)
                with contextlib.suppress(asyncio.CancelledError, *REDIS_DOWN):
                    await pop

    async def _cancel_quietly(self) -> None:
        with contextlib.suppress(*REDIS_DOWN):
            await self._call(self._scripts.cancel(self.replica))

    # ---- fallback ---------------------------------------------------------------------------

    def _enter_fallback(self, cause: BaseException) -> None:
        if self.mode is not TokenMode.LOCAL_FALLBACK:
            self.mode = TokenMode.LOCAL_FALLBACK
            self.fallback_switches += 1
            log.warning("token arbiter unreachable (%s: %s); device %s replica %s now limited "
                        "locally to its request of %.1f ms per %.1f s window",
                        type(cause).__name__, cause, self.device_id, self.replica,
                        self.spec.request_us / 1000, self.params.window_us / 1e6)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._call(self._redis.ping())
            except REDIS_DOWN:
                continue
            self.mode = TokenMode.SHARED
            log.warning("token arbiter reachable again; device %s replica %s back to shared "
                        "tokens", self.device_id, self.replica)
            return
