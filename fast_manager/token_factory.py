"""The one seam that decides which ``TokenClient`` a sidecar uses.

The sidecar calls ``make_token_client(settings)`` once at start and talks only to the
``TokenClient`` protocol afterwards. The Redis arbiter client (and its local fallback when Redis is
down) plugs in here; until then every replica runs unmanaged (tokens granted at once).
"""

from __future__ import annotations

from fast_manager.settings import SidecarSettings
from fast_manager.tokens import TokenClient, UnmanagedTokens


def make_token_client(settings: SidecarSettings) -> TokenClient:
    """The token client for this replica's device and share."""
    return UnmanagedTokens()
