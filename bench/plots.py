"""PNG plots of the load tests (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .load import LoadResult


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_plot(path: Path, *, title: str, series: Mapping[str, LoadResult]) -> Path:
    """Latency percentiles of each run (log scale), with its throughput in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, load in series.items():
        points = sorted(load.percentiles_ms.items())
        # A logit axis spreads the tail: p50, p90, p99 and p99.9 are evenly spaced.
        xs = [min(p, 99.99) / 100 for p, _ in points]
        ys = [max(v, 0.01) for _, v in points]
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3,
            label=f"{label}: {load.ok_per_second:,.0f} orders/s, "
            f"p50 {load.p(50):.1f} ms, p99 {load.p(99):.1f} ms",
        )
    ax.set_xscale("logit")
    ax.minorticks_off()
    ax.set_xticks([0.1, 0.5, 0.9, 0.99, 0.999])
    ax.set_xticklabels(["p10", "p50", "p90", "p99", "p99.9"])
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("percentile")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def drain_plot(
    path: Path, *, title: str, series: Mapping[str, Sequence[tuple[float, int]]], total: int
) -> Path:
    """Work done over time for each drain."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, points in series.items():
        ax.plot([t for t, _ in points], [n for _, n in points], label=label)
    ax.axhline(total, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("seconds since the drain started")
    ax.set_ylabel("done")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bars_plot(path: Path, *, title: str, ylabel: str, groups: Mapping[str, Mapping[str, float]]) -> Path:
    """Grouped bars: groups -> {series: value}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    names = list(groups)
    series = sorted({s for values in groups.values() for s in values})
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        ax.bar(
            [x + i * width for x in range(len(names))], [groups[n].get(s, 0.0) for n in names], width, label=s
        )
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
