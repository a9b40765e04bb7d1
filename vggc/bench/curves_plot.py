"""``learning_curves.png``: top-1 per epoch of training, one line per trained variant
(:func:`vggc.bench.curves.learning_curves`), the accuracy budget's floor as a dashed line and the
variants whose training stopped early marked with a cross at their last evaluated epoch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from vggc.artifacts import atomic_path


def curve_labels(names: Sequence[str]) -> list[str]:
    """Return the file stems without the prefix they all share, cut at a ``_`` (``vgg_pruned50``,
    ``vgg_student`` -> ``pruned50``, ``student``); the stems themselves when fewer than two or
    nothing would be left."""
    stems = [Path(n).stem for n in names]
    if len(stems) < 2:
        return stems
    prefix = os.path.commonprefix(stems)
    prefix = prefix[: prefix.rfind("_") + 1] if "_" in prefix else ""
    cut = [s[len(prefix):] for s in stems]
    return cut if all(cut) else stems


def drawable(curves: Sequence[dict]) -> list[dict]:
    """Return the curves with at least one epoch evaluated (``top1`` not ``None``)."""
    return [c for c in curves if any(p["top1"] is not None for p in c["epochs"])]


def draw_curves(curves: Sequence[dict], lines: Sequence[tuple[float, str]] = (), title: str = ""):
    """Return the figure (the caller closes it): top-1 (%) against the epoch of training for each of
    :func:`drawable` ``curves``; ``lines``: ``[(top-1 %, label)]`` (:func:`vggc.bench.plot.budget_lines`:
    the budget's floor dashed, the 98 % line dotted)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    shown = drawable(curves)
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    try:
        for c, label in zip(shown, curve_labels([c["model"] for c in shown]), strict=True):
            pts = [(p["epoch"], 100.0 * p["top1"]) for p in c["epochs"] if p["top1"] is not None]
            stopped = " (stopped early)" if c.get("stopped_early") else ""
            planned = c.get("epochs_planned")
            text = f"{label}: {c['epochs_run']}/{planned if planned is not None else '?'} epochs{stopped}"
            line, = ax.plot([x for x, _ in pts], [y for _, y in pts], "-o", ms=4, lw=1.5, label=text, zorder=3)
            if stopped:
                ax.scatter([pts[-1][0]], [pts[-1][1]], marker="X", s=140, color=line.get_color(), edgecolors="black",
                           linewidths=0.8, zorder=4)
        for (y, label), style in zip(lines, ("--", ":"), strict=False):
            ax.axhline(y, ls=style, c="black", lw=1, label=f"accuracy floor ({label})", zorder=1)
        if not shown:
            ax.text(0.5, 0.5, "no epoch has a recorded top-1", ha="center", va="center", transform=ax.transAxes)
        if any(c.get("stopped_early") for c in shown):
            ax.scatter([], [], marker="X", s=100, c="white", edgecolors="black", label="X = training stopped early")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch of training (fine-tune epochs counted through all pruning steps)")
        ax.set_ylabel("top-1 accuracy (%) on the run's evaluation images")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside: never over a curve
        if title:
            ax.set_title(title, fontsize=9, wrap=True)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig


def plot_curves(curves: Sequence[dict], path: str | os.PathLike, lines: Sequence[tuple[float, str]] = (),
                title: str = "") -> Path:
    """Draw :func:`draw_curves` into ``path`` (PNG, written atomically); return the path."""
    import matplotlib.pyplot as plt

    fig = draw_curves(curves, lines, title)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)
