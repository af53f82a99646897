"""What the replica supervisor does next for one function: which replicas to drain, which groups
to start a replica in, when a crashed one may start again. Pure: no processes, no Redis, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_RESTART_BACKOFF_S = 30.0
"""Ceiling of the delay before starting again a function whose replicas keep crashing."""


@dataclass(frozen=True)
class ReplicaView:
    """What the plan needs of one running replica."""

    replica_id: str
    generation: int
    config_id: str
    ready: bool
    started_at_s: float
    draining: bool = False


@dataclass(frozen=True)
class Plan:
    drain: tuple[str, ...]
    """Replica ids to take out of routing, let finish what they hold, then stop."""
    start: tuple[str, ...]
    """Config ids to start one replica in, one entry per replica."""


def plan(groups: Mapping[str, int], generation: int, replicas: Sequence[ReplicaView]) -> Plan:
    """Make the running replicas match ``groups`` (config id -> wanted count) at ``generation``.

    Replicas of an old generation or of a dropped group keep serving until the new ones are
    ready (a rolling change); surplus replicas that are still starting go before ready ones.
    Draining replicas no longer count: they are leaving.
    """
    live = [r for r in replicas if not r.draining]
    current = [r for r in live if r.generation == generation and r.config_id in groups]
    old = [r for r in live if r not in current]
    drain: list[str] = []
    if sum(1 for r in current if r.ready) >= sum(groups.values()) or not any(r.ready for r in old):
        drain += [r.replica_id for r in old]
    start: list[str] = []
    for config_id, want in groups.items():
        mine = [r for r in current if r.config_id == config_id]
        if len(mine) > want:
            surplus = sorted(mine, key=lambda r: (r.ready, r.started_at_s))[:len(mine) - want]
            drain += [r.replica_id for r in surplus]
        start += [config_id] * max(0, want - len(mine))
    return Plan(tuple(drain), tuple(start))


def restart_backoff_s(crashes: int) -> float:
    """The pause before starting again after the ``crashes``-th crash in a row."""
    return min(MAX_RESTART_BACKOFF_S, 0.5 * 2 ** min(crashes, 6))
