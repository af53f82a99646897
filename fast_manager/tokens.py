"""The contract between the sidecar and whatever grants device time.

The sidecar calls ``acquire`` before forwarding a request to its worker and ``release`` after,
with the busy time the execution really used. Implementations: ``UnmanagedTokens`` (no arbiter:
always granted), the Redis arbiter client (``fast_manager.arbiter``), and its local fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class TokenMode(StrEnum):
    SHARED = "shared"
    """Tokens come from the device's arbiter in Redis."""
    LOCAL_FALLBACK = "local-fallback"
    """Redis is unreachable: a local limiter enforces the static quota request."""
    UNMANAGED = "unmanaged"
    """No time sharing: every acquire succeeds at once."""


@dataclass(frozen=True)
class Lease:
    """A granted token: the holder may execute until ``expires_at_s`` (arbiter clock)."""

    token_id: str
    granted_ms: float
    """Length of device time the token grants."""
    expires_at_s: float


class TokenClient(Protocol):
    mode: TokenMode

    async def acquire(self, timeout_s: float) -> Lease | None:
        """Wait (without busy polling) for a token; None when ``timeout_s`` passes first."""

    async def release(self, lease: Lease, busy_ms: float, next_waiting: bool = False) -> None:
        """Return the token, charging ``busy_ms`` of measured device time. ``next_waiting``: the
        replica has another request queued, whose acquire follows at once (keep the slice)."""

    async def close(self) -> None:
        """Give back anything held; stop background tasks."""


class UnmanagedTokens:
    """Grants at once and charges nothing: for replicas that own their device."""

    mode = TokenMode.UNMANAGED

    async def acquire(self, timeout_s: float) -> Lease | None:
        return Lease("unmanaged", float("inf"), float("inf"))

    async def release(self, lease: Lease, busy_ms: float, next_waiting: bool = False) -> None:
        return None

    async def close(self) -> None:
        return None
