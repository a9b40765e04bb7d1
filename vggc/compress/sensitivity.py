"""Per-layer pruning sensitivity (Li et al. 2017, Fig. 2): accuracy vs fraction of one layer's filters removed.

For each prunable conv, the lowest-L1 filters of that layer alone are really removed (with their
coupled channels, see :class:`vggc.compress.graph.PruningGraph`), without fine-tuning, and top-1
is measured on a class-balanced subset of the TRAINING split (choosing how to prune on the test
split would leak it into the result). Layers whose accuracy falls fastest should be pruned least;
:func:`vggc.compress.prune.sensitivity_plan` does that from the table returned here.

Every trial prunes a deep copy (:func:`vggc.compress.graph.trial_copy`), so the scanned model is
never edited. For models whose ``features`` is an ``nn.Sequential`` run first (VGG, MobileNetV2),
the activations entering the first block a trial touches are computed once per layer (on the
unpruned model) and reused for all its fractions.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from vggc.artifacts import read_json_object
from vggc.compress.graph import PruningGraph, trial_copy
from vggc.errors import InputError
from vggc.progress import Progress, no_progress

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SCAN_CSV = "sensitivity.csv"
SCAN_PNG = "sensitivity.png"
TIE_SLOPE = 1e-4  # accuracy per unit fraction: breaks ties between flat (insensitive) curves


@dataclass
class SensitivityTable:
    """``top1[i][j]``: top-1 (0..1) with ``fractions[j]`` of layer ``layers[i]``'s filters removed.

    ``removed[i][j]``: the number of filters that fraction removed; ``baseline``: top-1 of the
    unpruned model on the same ``n`` training images.
    """

    layers: list[str]
    widths: list[int]
    fractions: list[float]
    top1: list[list[float]]
    baseline: float
    n: int
    removed: list[list[int]] = field(default_factory=list)

    def drops(self, layer: str) -> list[float]:
        """Return the accuracy drop (baseline - top-1) at each fraction for ``layer``."""
        i = self.layers.index(layer)
        return [self.baseline - a for a in self.top1[i]]

    def envelope(self, layer: str) -> list[float]:
        """Return the running maximum of the drops (>= 0), so removing more never looks better,
        plus ``TIE_SLOPE * fraction``: a flat curve (no measurable drop) still rises, so a small
        tolerance prunes a little and equally flat layers are pruned alike."""
        out, best = [], 0.0
        for f, d in zip(self.fractions, self.drops(layer), strict=True):
            best = max(best, d)
            out.append(best + TIE_SLOPE * f)
        return out

    def max_drop(self) -> float:
        return max((max(self.envelope(n)) for n in self.layers), default=0.0)

    def allowed_fraction(self, layer: str, tolerance: float) -> float:
        """Return the largest fraction of ``layer`` whose (interpolated) drop is <= ``tolerance``."""
        if layer not in self.layers:
            raise InputError(f"sensitivity scan has no layer {layer!r}")
        f_prev, e_prev = 0.0, 0.0
        for f, e in zip(self.fractions, self.envelope(layer), strict=True):
            if e > tolerance:
                if e <= e_prev:
                    return f_prev
                return f_prev + (tolerance - e_prev) / (e - e_prev) * (f - f_prev)
            f_prev, e_prev = f, e
        return f_prev

    def check_matches(self, widths: dict[str, int]) -> None:
        """Raise :class:`InputError` unless the table was scanned on layers of these widths."""
        mine = dict(zip(self.layers, self.widths, strict=True))
        if mine != dict(widths):
            diff = next((n for n in widths if mine.get(n) != widths[n]), next(iter(mine), "?"))
            raise InputError(f"sensitivity scan does not match this model (layer {diff}: scan "
                             f"{mine.get(diff)} filters, model {widths.get(diff)}); rescan it with --scan")

    def rows(self) -> list[dict]:
        out = []
        for i, name in enumerate(self.layers):
            for j, f in enumerate(self.fractions):
                out.append({"layer": name, "width": self.widths[i], "fraction": f,
                            "removed": self.removed[i][j] if self.removed else "",
                            "top1": round(self.top1[i][j], 6), "drop": round(self.baseline - self.top1[i][j], 6)})
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityTable":
        try:
            t = cls(layers=list(d["layers"]), widths=[int(w) for w in d["widths"]],
                    fractions=[float(f) for f in d["fractions"]],
                    top1=[[float(a) for a in row] for row in d["top1"]], baseline=float(d["baseline"]),
                    n=int(d["n"]), removed=[[int(r) for r in row] for row in d.get("removed", [])])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"not a sensitivity table ({type(err).__name__}: {err})") from None
        if len(t.top1) != len(t.layers) or any(len(r) != len(t.fractions) for r in t.top1):
            raise InputError("sensitivity table: rows do not match its layers/fractions")
        return t


class _Feed(nn.Module):
    """Stands in for the leading blocks of ``features``: returns the cached activations."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, _x):
        return self.value


def _first_block(model: nn.Module, graph: PruningGraph, name: str) -> int:
    """Return the index of the first ``model.features`` block a trial on ``name`` changes (0: none)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return 0
    top = {}
    for i, child in enumerate(features):
        for sub in child.modules():
            top[sub] = i
    touched = [top[d.target.module] for d, _ in graph.group(name) if d.target.module in top]
    return min(touched) if touched else 0


def _check_split(split) -> None:
    if getattr(split, "name", "") == "test":
        raise InputError("the sensitivity scan must use (a subset of) the train split, not the test split")


def scan_sensitivity(model: nn.Module, split, preprocess, fractions=DEFAULT_FRACTIONS, *,
                     batch_size: int = 250, progress: Progress = no_progress) -> SensitivityTable:
    """Return top-1 on ``split`` with each fraction of each conv's lowest-L1 filters removed.

    ``split`` should be a class-balanced training subset (e.g. ``limit_split(train, 1000)``); a
    split named ``"test"`` is refused. ``model`` is left unchanged.
    """
    _check_split(split)
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f < 1 for f in fractions) or sorted(fractions) != fractions:
        raise InputError("scan fractions must be increasing values between 0 and 1 (exclusive)")
    if len(split) == 0:
        raise InputError("sensitivity scan: empty image subset")
    model = model.eval()
    graph = PruningGraph(model, preprocess.input_size)
    xs, ys = [], []
    for start in range(0, len(split), batch_size):
        xs.append(preprocess(split.images[start:start + batch_size]))
        ys.append(split.labels[start:start + batch_size])
    n = len(split)
    with torch.no_grad():
        return _scan(model, graph, xs, ys, n, fractions, progress)


def _scan(model, graph, xs, ys, n, fractions, progress) -> SensitivityTable:
    def accuracy(net: nn.Module, inputs=None) -> float:
        correct = 0
        for b, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if inputs is not None:
                feed.value = inputs[b]
            correct += int((net(x).argmax(1) == y).sum())
        return correct / n

    baseline = accuracy(model)
    feed = _Feed()
    features = getattr(model, "features", None)
    size = int(xs[0].shape[-1])
    fast_ok = True
    table = SensitivityTable(layers=list(graph.names), widths=[graph.width(nm) for nm in graph.names],
                             fractions=fractions, top1=[], baseline=baseline, n=n, removed=[])
    trials = [(nm, f) for nm in graph.names for f in fractions]
    bar = iter(progress(trials, total=len(trials), desc="sensitivity"))
    for name in graph.names:
        width = graph.width(name)
        order = torch.argsort(graph.l1(name), stable=True).tolist()
        k = _first_block(model, graph, name) if fast_ok else 0
        cached = None
        if k > 0:
            cached = [features[:k](x) for x in xs]
            head = copy.deepcopy(model)  # unpruned, fed the cached activations
            head.features = nn.Sequential(feed, *list(head.features)[k:])
            feed.value = cached[0]
            fast_ok = torch.allclose(head(xs[0]), model(xs[0]), atol=1e-4)
            del head
            if not fast_ok:  # forward is not features -> head: use full passes from now on
                cached = None
        accs, removed = [], []
        for f in fractions:
            next(bar, None)
            n_remove = min(width - 1, max(1, int(round(f * width))))
            trial, trial_graph = trial_copy(model, size)
            trial_graph.remove(name, order[:n_remove])
            if cached is not None:
                trial.features = nn.Sequential(feed, *list(trial.features)[k:])
            accs.append(accuracy(trial, cached))
            removed.append(n_remove)
            del trial, trial_graph
        table.top1.append(accs)
        table.removed.append(removed)
        feed.value = None
    next(bar, None)
    return table


# ----------------------------------------------------------------------------- files

def scan_json_path(path: str | Path) -> Path:
    """Return the scan's JSON manifest for a scan directory, its CSV or the JSON itself."""
    p = Path(path)
    if p.is_dir():
        return p / (SCAN_CSV + ".json")
    if p.suffix == ".csv":
        return p.with_name(p.name + ".json")
    return p


def read_scan(path: str | Path) -> SensitivityTable:
    """Load a scan written by :func:`write_scan` (its directory, CSV or JSON)."""
    p = scan_json_path(path)
    if not p.is_file():
        raise InputError(f"{path}: no sensitivity scan there (expected {p.name}; make one with vggc prune --scan)")
    doc = read_json_object(p, "sensitivity scan")
    if "table" not in doc:
        raise InputError(f"{p}: not a sensitivity scan (no 'table')")
    return SensitivityTable.from_dict(doc["table"])


def plot_scan(table: SensitivityTable, path: str | Path, title: str = "") -> Path:
    """Write a PNG with one line per layer: top-1 vs fraction of its filters removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vggc.artifacts import atomic_path

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    cmap = plt.get_cmap("tab20")
    xs = [0.0, *table.fractions]
    for i, name in enumerate(table.layers):
        ax.plot([100 * x for x in xs], [100 * table.baseline, *[100 * a for a in table.top1[i]]],
                marker="o", ms=3, lw=1.3, color=cmap(i % 20), label=f"conv{i + 1} {name} ({table.widths[i]})")
    ax.set_xlabel("filters removed from that layer alone (%), lowest L1 norm first")
    ax.set_ylabel(f"top-1 (%) on {table.n} training images, no fine-tune")
    ax.set_title(title or "Pruning sensitivity per conv layer (Li et al. 2017, Fig. 2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def write_scan(table: SensitivityTable, out_dir: str | Path, *, source: str | Path | None = None,
               settings: dict | None = None) -> dict[str, Path]:
    """Write ``sensitivity.csv``, ``sensitivity.png`` and the manifest ``sensitivity.csv.json``
    (which holds the whole table and is what ``--sensitivity`` reads) into ``out_dir``."""
    from vggc.artifacts import atomic_path, sha256_file, write_manifest

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / SCAN_CSV, out_dir / SCAN_PNG
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["layer", "width", "fraction", "removed", "top1", "drop"])
    w.writeheader()
    w.writerows(table.rows())
    plot_scan(table, png_path)
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue())
    most = {name: round(table.allowed_fraction(name, 0.01), 3) for name in table.layers}
    manifest = write_manifest(csv_path, kind="sensitivity_scan", inputs={"source": source} if source else {},
                              settings=settings or {},
                              metrics={"baseline_top1": table.baseline, "n": table.n,
                                       "fraction_within_1pt_drop": most},
                              extra={"table": table.to_dict(),
                                     "plot": {"path": png_path.name, "sha256": sha256_file(png_path)}})
    return {"csv": csv_path, "png": png_path, "json": manifest}


def scan_file(weights: str | Path, data: str | Path, out_dir: str | Path, *, scan_limit: int = 1000,
              fractions=DEFAULT_FRACTIONS, seed: int = 0, preprocess=None, batch_size: int = 250,
              progress: Progress = no_progress) -> tuple[SensitivityTable, dict[str, Path]]:
    """Scan a weights file on ``scan_limit`` class-balanced training images; write ``out_dir``."""
    from vggc.data import limit_split, load_split
    from vggc.models import load_weights
    from vggc.runtime import preprocess_from_meta, read_manifest

    lm = load_weights(weights)
    pre = preprocess or preprocess_from_meta(read_manifest(Path(weights)))
    train = load_split(data, "train", progress=progress)
    subset = limit_split(train, scan_limit, seed)
    table = scan_sensitivity(lm.model, subset, pre, fractions, batch_size=batch_size, progress=progress)
    paths = write_scan(table, out_dir, source=weights,
                       settings={"scan_limit": len(subset), "seed": seed, "fractions": list(table.fractions),
                                 "split": "train", "data": str(data), "preprocess": pre.to_dict(),
                                 "importance": "L1 norm of each conv filter (Li et al. 2017)"})
    return table, paths


__all__ = ["DEFAULT_FRACTIONS", "SensitivityTable", "plot_scan", "read_scan", "scan_file", "scan_json_path",
           "scan_sensitivity", "write_scan"]
