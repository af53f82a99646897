"""PNG of a profile: the throughput surface (SM share x quota) and the latency curves, per batch.

Measured points are drawn filled, inferred ones hollow, so a reader sees what was run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fast_profiler.table import ProfileTable  # noqa: E402


def plot_table(table: ProfileTable, path: Path, *, slo_ms: float | None = None) -> Path:
    batches = table.batches
    fig, axes = plt.subplots(len(batches), 3, figsize=(15, 4.2 * len(batches)), squeeze=False)
    sms, quotas = table.sm_grid, table.quota_grid
    for row, b in zip(axes, batches, strict=True):
        heat = [[table.point(s, q, b).throughput_rps for s in sms] for q in quotas]
        im = row[0].imshow(heat, origin="lower", aspect="auto", cmap="viridis")
        row[0].set_xticks(range(len(sms)), [str(s) for s in sms])
        row[0].set_yticks(range(len(quotas)), [f"{q:g}" for q in quotas])
        for i, q in enumerate(quotas):
            for j, s in enumerate(sms):
                p = table.point(s, q, b)
                row[0].text(j, i, f"{p.throughput_rps:.0f}" + ("" if p.measured else "*"), ha="center",
                            va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=row[0], label="req/s")
        row[0].set_xlabel("SM share %")
        row[0].set_ylabel("quota")
        row[0].set_title(f"{table.function} batch {b}: throughput under SLO (* inferred)")
        for q in quotas:
            pts = [table.point(s, q, b) for s in sms]
            line, = row[1].plot(sms, [p.throughput_rps for p in pts], label=f"quota {q:g}")
            row[1].scatter([p.sm_pct for p in pts], [p.throughput_rps for p in pts], color=line.get_color(),
                           facecolors=[line.get_color() if p.measured else "none" for p in pts], zorder=3)
            row[2].plot(sms, [p.latency_p99_ms for p in pts], label=f"p99 q {q:g}", color=line.get_color())
            row[2].plot(sms, [p.latency_p50_ms for p in pts], ls=":", color=line.get_color())
        if slo_ms:
            row[2].axhline(slo_ms, color="k", ls="--", lw=1, label="SLO")
        row[1].set_xlabel("SM share %")
        row[1].set_ylabel("req/s")
        row[1].legend(fontsize=7)
        row[1].set_title("throughput (filled: measured)")
        row[2].set_xlabel("SM share %")
        row[2].set_ylabel("ms")
        row[2].set_title("latency at that rate: p99 (solid), p50 (dotted)")
        row[2].legend(fontsize=7)
    fig.suptitle(f"{table.function} on {table.device_type}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
