"""The MLPerf-based benchmark: the paper's comparison of sharing modes, measured on the real platform.

``python -m bench.mlperf`` (or ``fastgshare bench``): see ``cli.py`` and ``docs/benchmark.md``.
Pure parts (``modes``, ``aggregate``) are separate from the adapters (``lgen``: MLPerf LoadGen over
real HTTP; ``platform_io``: the provider API and the sidecars' counters; ``scenario``: autoscaling).
"""
