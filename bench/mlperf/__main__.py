import sys

from bench.mlperf.cli import bench_main

sys.exit(bench_main())
