"""``pareto.png``: top-1 against throughput (log x), one labelled point per row that ran,
the Pareto frontier (no other row is both faster and more accurate) highlighted."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vggc.artifacts import atomic_path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Return the indices of the points ``(throughput, top1)`` that no other point beats on both
    (>= on both and > on one), ordered by increasing throughput."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def plot_pareto(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Draw the plot for the rows with ``status == "ok"`` into ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker below

    ok = [r for r in rows if r.get("status") == "ok" and r.get("throughput") and r.get("top1") is not None]
    pts = [(float(r["throughput"]), 100.0 * float(r["top1"])) for r in ok]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        if pts:
            others = [i for i in range(len(pts)) if i not in front]
            ax.scatter([pts[i][0] for i in others], [pts[i][1] for i in others], s=30, c="tab:gray",
                       label="measured", zorder=2)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-o", c="tab:red", ms=7,
                    lw=1.5, label="Pareto frontier", zorder=3)
            for i, (r, (x, y)) in enumerate(zip(ok, pts, strict=True)):  # alternate above/below to limit overlaps
                ax.annotate(f"{Path(r['model']).stem}\n{r['backend']}", (x, y), textcoords="offset points",
                            xytext=(5, 4 if i % 2 == 0 else -20), fontsize=7)
            ax.set_xscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            if max(p[0] for p in pts) < 8 * min(p[0] for p in pts):  # under a decade: label minor ticks too
                ax.xaxis.set_minor_formatter(plain)
                ax.tick_params(axis="x", which="minor", labelsize=7)
            ax.legend(loc="lower left", fontsize=8)
            xs = [p[0] for p in pts]
            ax.set_xlim(min(xs) / 1.5, max(xs) * 2.5)
        else:
            ax.text(0.5, 0.5, "no row ran successfully", ha="center", va="center", transform=ax.transAxes)
        batch = ok[0]["batch"] if ok else (rows[0]["batch"] if rows else "N")
        ax.set_xlabel(f"throughput at batch {batch} (images/s, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
        if title:
            ax.set_title(title, fontsize=8, wrap=True)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)
