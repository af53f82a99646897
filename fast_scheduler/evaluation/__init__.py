"""How the scheduler's policies are compared at scale, away from the runtime: the cluster
simulator (``simulator``) fed by request traces (``traces``: Azure-like ones from ``orcbench``),
the baselines and policies it runs (``baselines``, ``policies``: the original's MaxRects packing
through ``rectpack``), and the LP lower bound on devices (``lower_bound``, ``highspy``).

Only the benchmarks and tests import this package; the runtime (``python -m fast_scheduler``)
never does (an import-linter contract says so), so its dependencies are the ``sim`` extra:
``pip install fastgshare[sim]``.
"""
