"""``pareto.png``: top-1 against throughput (log x), one labelled point per row that ran,
the Pareto frontier (no other row is both faster and more accurate) highlighted, and the
recommended variants of :mod:`vggc.bench.answer` starred (hollow: the 98 % line's)."""

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


def short_names(models: Sequence[str]) -> list[str]:
    """Return the model names without their shared stem prefix (``vgg16_x_pruned`` -> ``pruned``);
    the name equal to the prefix itself becomes ``baseline``."""
    stems = [Path(m).stem for m in models]
    if len(set(stems)) < 2:
        return stems
    prefix = min(stems, key=len)
    if not all(s.startswith(prefix) for s in stems):
        return stems
    return [s[len(prefix):].strip("_-.") or "baseline" for s in stems]


def label_groups(pts: Sequence[tuple[float, float]], dx: float = 0.04, dy: float = 0.8) -> list[list[int]]:
    """Group points that would print on top of each other (x within ``dx`` in log10, y within ``dy``
    points); return lists of indices, each list labelled once."""
    import math

    groups: list[list[int]] = []
    for i, (x, y) in enumerate(pts):
        for g in groups:
            gx, gy = pts[g[0]]
            if abs(math.log10(x) - math.log10(gx)) <= dx and abs(y - gy) <= dy:
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


MARK_COLORS = ("gold", "tab:green", "tab:blue", "tab:purple", "tab:orange", "tab:cyan", "tab:pink", "tab:olive")


def _star(ax, pt, label: str, color: str, filled: bool) -> None:
    ax.scatter([pt[0]], [pt[1]], marker="*", s=200 if filled else 170, c=color if filled else "none",
               edgecolors="black" if filled else color, linewidths=0.8 if filled else 1.6, label=label, zorder=5)


def budget_lines(doc: dict) -> list[tuple[float, str]]:
    """Return ``[(top-1 %, label)]``: the lowest top-1 within the budget and at the 98 % line of an
    answer (:func:`vggc.bench.answer.answer`); empty without a baseline."""
    base = (doc.get("baseline") or {}).get("top1")
    if base is None:
        return []
    out = []
    for part, name in ((doc, "budget"), (doc.get("at_98pct") or {}, "98 % line")):
        pt = part.get("max_drop_pt")
        if pt is not None:
            out.append((100.0 * float(base) - float(pt), f"{name}: top-1 ≥ {100.0 * float(base) - float(pt):.2f} %"))
    return out


def draw_pareto(rows: list[dict], title: str = "", marks: Sequence[tuple[tuple, str, bool]] = (),
                lines: Sequence[tuple[float, str]] = ()):
    """Return the plot's matplotlib figure (the caller closes it) for the rows with ``status == "ok"``;
    ``marks``: :func:`vggc.bench.answer.marks`, each starred with its label in the legend (filled
    within the budget, hollow for the 98 % line); a mark whose row is not plotted is left out.
    ``lines``: :func:`budget_lines`, drawn as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker below

    from vggc.bench.answer import row_key

    ok = [r for r in rows if r.get("status") == "ok" and r.get("throughput") and r.get("top1") is not None]
    pts = [(float(r["throughput"]), 100.0 * float(r["top1"])) for r in ok]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(12.5, 5.5), dpi=110)
    try:
        if pts:
            others = [i for i in range(len(pts)) if i not in front]
            ax.scatter([pts[i][0] for i in others], [pts[i][1] for i in others], s=30, c="tab:gray",
                       label="measured", zorder=2)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-o", c="tab:red", ms=7,
                    lw=1.5, label="Pareto frontier", zorder=3)
            # numbers on the points (one label per cluster of coinciding points), names in a key
            for g in label_groups(pts):
                ax.annotate(",".join(str(i + 1) for i in g), pts[g[0]], textcoords="offset points",
                            xytext=(5, 4), fontsize=8, fontweight="bold")
            names = short_names([r["model"] for r in ok])
            key = "\n".join(f"{i + 1:>2}  {n} · {r['backend']} ({y:.1f}%, {x:.0f}/s)"
                            for i, (n, r, (x, y)) in enumerate(zip(names, ok, pts, strict=True)))
            fig.text(0.62, 0.93, key, fontsize=7, va="top", ha="left", family="monospace")
            fig.subplots_adjust(right=0.6)
            ax.set_xscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            if max(p[0] for p in pts) < 8 * min(p[0] for p in pts):  # under a decade: label minor ticks too
                ax.xaxis.set_minor_formatter(plain)
                ax.tick_params(axis="x", which="minor", labelsize=7)
            for (y, label), style in zip(lines, ("--", ":"), strict=False):
                ax.axhline(y, ls=style, c="tab:blue", lw=1, label=label, zorder=1)
            where = {row_key(r): pts[i] for i, r in enumerate(ok)}
            for k, (mk, label, filled) in enumerate(m for m in marks if m[0] in where):
                _star(ax, where[mk], label, MARK_COLORS[k % len(MARK_COLORS)], filled)
            ax.legend(loc="best", fontsize=8)
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
        fig.tight_layout(rect=(0, 0, 0.6 if pts else 1, 1))
    except BaseException:
        plt.close(fig)
        raise
    return fig


def plot_pareto(rows: list[dict], path: str | Path, title: str = "",
                marks: Sequence[tuple[tuple, str, bool]] = (), lines: Sequence[tuple[float, str]] = ()) -> Path:
    """Draw :func:`draw_pareto` of ``rows`` (with ``marks`` and ``lines``) into ``path`` (PNG,
    written atomically); return the path."""
    import matplotlib.pyplot as plt

    fig = draw_pareto(rows, title, marks, lines)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)
