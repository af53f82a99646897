"""The headers a replica's sidecar answers with: a wire contract between the sidecar (which sets
them) and its clients (the profiler's load generator, benchmarks), so neither imports the other.
Pure constants."""

BUSY_HEADER = "X-Fastgshare-Busy-Ms"
"""Response header in which the worker reports the device time an execution used."""
WAIT_HEADER = "X-Fastgshare-Wait-Ms"
"""Response header: how long the request waited in the replica's queue (for the FIFO gate)."""
HOLD_HEADER = "X-Fastgshare-Hold-Ms"
"""Response header: how long it held the gate (token, forward, execution, token back): the time the
replica's one server was taken by it. With the wait, a client splits its latency into queue, service
and the path outside the replica (the profiler's queue model reads them)."""
