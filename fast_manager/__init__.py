"""The per-replica sidecar, the per-device token arbiter and the per-machine node agent."""
