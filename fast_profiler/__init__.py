"""The profiler: measures a function's throughput and p99 under each (SM share, quota, batch)
configuration through the running platform, and stores its profile table.

Pure planning and search (``planner``, ``search``, ``table``, ``queue_model``, ``shadow``) below
the I/O that runs them (``runner``, ``loadgen``, ``gateway``, ``jobs``, ``store``); see
``docs/profiler.md``. It talks to the platform only through ``fastgshare.provider_client`` and
the platform's Redis, so it works on either backend.
"""
