"""PNG plots of one result: throughput per mode, latency CDFs, replicas and utilisation over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_all(result: dict[str, Any], json_path: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    stem = json_path.with_suffix("")
    if "modes" in result:
        modes = result["modes"]
        names = list(modes)
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
        x = range(len(names))
        fns = result["functions"]
        width = 0.8 / max(1, len(fns))
        for k, fn in enumerate(fns):
            a.bar([i - 0.4 + width * (k + 0.5) for i in x],
                  [modes[n]["functions"].get(fn, {}).get("rate_rps", 0.0) for n in names], width, label=fn)
        a.set_xticks(list(x), names, fontsize=8)
        a.set_ylabel("sustained rate at the p99 bound (rps)")
        a.set_title("throughput per mode")
        a.legend(fontsize=8)
        ratios = result["ratios_vs_time_sharing"]
        metrics = [("normalised_throughput", "throughput"), ("device_utilisation", "utilisation"),
                   ("sm_time", "SM-time")]
        w = 0.8 / len(metrics)
        for k, (m, label) in enumerate(metrics):
            b.bar([i - 0.4 + w * (k + 0.5) for i in x], [ratios[n].get(m) or 0.0 for n in names], w,
                  label=label)
        b.axhline(1.0, color="grey", lw=0.8)
        b.set_xticks(list(x), names, fontsize=8)
        b.set_ylabel("ratio to time_sharing")
        b.legend(fontsize=8)
        fig.tight_layout()
        p = Path(f"{stem}.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out.append(p)

        cdfs = result.get("latency_cdf_ms", {})
        fig, axes = plt.subplots(1, len(fns), figsize=(5.5 * len(fns), 3.6), squeeze=False)
        for ax, fn in zip(axes[0], fns, strict=True):
            for mode, per_fn in cdfs.items():
                pts = per_fn.get(fn)
                if pts:
                    ax.plot(pts, [i / (len(pts) - 1) for i in range(len(pts))], label=mode)
            bound = result["bounds_ms"].get(fn)
            if bound:
                ax.axvline(bound, color="red", ls="--", lw=0.8, label="p99 bound")
            ax.axhline(0.99, color="grey", lw=0.5)
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"{fn}: latency at each mode's sustained rate")
            ax.legend(fontsize=7)
        fig.tight_layout()
        p = Path(f"{stem}_latency_cdf.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out.append(p)

    auto = result.get("autoscale")
    if auto and auto.get("traces"):
        traces = auto["traces"]
        fig, axes = plt.subplots(2, len(traces), figsize=(6 * len(traces), 6), squeeze=False)
        for col, (name, s) in enumerate(traces.items()):
            tl = s["timeline"]
            ax = axes[0][col]
            ax.plot([r["t_s"] for r in tl], [r["rps"] for r in tl], label="served rps")
            ax2 = ax.twinx()
            ax2.plot([r["t_s"] for r in tl], [r["attainment"] for r in tl], color="green",
                     label="SLO attainment")
            ax2.set_ylim(0, 1.05)
            ax.set_title(f"{name}: SLO {auto['slo_ms']:.0f} ms, attainment {s['slo_attainment']:.3f}")
            ax.set_ylabel("rps")
            ax2.set_ylabel("attainment per 5 s")
            ax = axes[1][col]
            polls = s["polls"]
            ts = [p["t_s"] for p in polls]
            ax.step(ts, [p["replicas"] for p in polls], where="post", label="replicas")
            ax.step(ts, [p["share"] for p in polls], where="post", label="device share allocated")
            ax.plot(ts, [p["cpu_util"] if p.get("cpu_util") is not None else p.get("busy") or 0.0
                         for p in polls], label="device utilisation", alpha=0.7)
            ax.set_xlabel("time (s)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        p = Path(f"{stem}_autoscale.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out.append(p)
    return out
