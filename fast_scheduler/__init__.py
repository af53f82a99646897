"""The scheduler: picks each function's replica configurations and counts to meet its latency SLO
at the current request rate with the least device, and places them on devices.

The runtime (what ``python -m fast_scheduler`` runs): pure policy (``autoscale``, ``choices``,
``latency``, ``placement``, ``control``, ``repack``) under one adapter, ``loop``, which reads the
platform through ``fastgshare.provider_client`` and Redis and applies decisions through the
provider. Beside it, used only by benchmarks and tests: the cluster simulator (``simulator``,
``traces``), the baselines and policies it compares (``baselines``, ``policies``) and the LP lower
bound (``lower_bound``). See ``docs/scheduler.md``.
"""
