"""A sidecar whose worker loads while the sidecar itself starts: ``python -m fast_manager.sidecar_start``.

The same sidecar as ``python -m fast_manager.sidecar`` (local mode's node agent starts this one).
With a warm pool on the node (``FASTGSHARE_WARM_SOCKET``), the worker is asked of it before the
sidecar imports its HTTP server, Redis client and metrics (about 0.1 s on the CPU VM), so that those
imports overlap with the worker's load instead of preceding it (issue 18: a replica ready in
<= 1 s). Without a pool it changes nothing.
"""

from __future__ import annotations

import os

from fast_manager.logline import setup_logging
from fast_manager.sidecar_worker import prepare


def main() -> None:
    setup_logging()
    prepared = prepare(os.environ)
    from fast_manager import sidecar  # the rest of the sidecar, while the worker loads

    sidecar.run(*prepared)


if __name__ == "__main__":
    main()
