"""Accuracy-aware static INT8 (``vggc quantize --max-drop PT``): keep the fewest, most sensitive
layers in FP32 so that the INT8 model's top-1 stays within a stated budget of the FP32 model's.

How it decides, in two measured stages:

1. **Rank** (training images only): for every quantizable layer (Conv, Gemm, MatMul) the model is
   quantized with *that one layer* kept in FP32, and the KL divergence of its softmax from the FP32
   model's is measured on a class-balanced subset of the calibration images. A layer's gain is how
   much keeping it in FP32 alone lowers that divergence against the fully quantized model.
2. **Select**: the fully quantized model is checked first; when its drop already fits the budget
   nothing is excluded. Otherwise the top-``k`` layers by gain are excluded for ``k = 1, 2, ...``
   until the drop on the evaluation images fits (or ``max_layers`` is reached: then an error).

The evaluation images are the ones ``vggc quantize`` reports top-1 on (the test split, or its
``--eval-limit`` subset); the manifest records that the budget was checked on them. ONNX Runtime
keeps an excluded node in FP32 through ``nodes_to_exclude``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vggc.errors import InputError, VggcError

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
RANK_IMAGES = 256  # calibration images used to rank layers (their first batches)


@dataclass
class BudgetResult:
    """What the search did: the budget, the layers kept in FP32 (most sensitive first) and why,
    each tried exclusion set with its measured top-1, and the ranking."""

    max_drop_pt: float
    fp32_top1: float
    excluded: list[str] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    ranking: list[dict] = field(default_factory=list)
    rank_images: int = 0
    checked_on: str = "evaluation images (test split)"

    def to_dict(self) -> dict:
        return asdict(self)


def quantizable_nodes(onnx_path: str | Path) -> list[str]:
    """Return the names of the nodes static INT8 quantizes (Conv, Gemm, MatMul), in graph order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    names = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS]
    if any(not n for n in names):
        raise VggcError(f"{onnx_path}: a quantizable node has no name; cannot exclude it by name")
    return names


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def kl_to_reference(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Return the mean KL(ref || q) between the softmaxes of two ``(N, classes)`` logit arrays."""
    p, q = _softmax(ref_logits.astype(np.float64)), _softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def rank_layers(nodes: Sequence[str], logits_with: Callable[[list[str]], np.ndarray], ref_logits: np.ndarray,
                progress=None) -> list[dict]:
    """Return one dict per node (``node``, ``kl``, ``gain``), most sensitive first.

    ``logits_with(excluded)`` quantizes the model keeping ``excluded`` in FP32 and returns its logits
    on the ranking images; ``ref_logits`` are the FP32 model's on the same images."""
    base = kl_to_reference(ref_logits, logits_with([]))
    rows = []
    for node in (progress(nodes, total=len(nodes), desc="rank layers") if progress else nodes):
        kl = kl_to_reference(ref_logits, logits_with([node]))
        rows.append({"node": node, "kl": kl, "gain": base - kl})
    rows.sort(key=lambda r: -r["gain"])
    return [{"kl_all_int8": base, **r} if i == 0 else r for i, r in enumerate(rows)]


def select_exclusions(ranking: Sequence[dict], top1_with: Callable[[list[str]], float], fp32_top1: float,
                      max_drop_pt: float, *, max_layers: int | None = None) -> tuple[list[str], list[dict]]:
    """Return ``(excluded, trials)``: the shortest prefix of ``ranking`` whose exclusion keeps
    ``100 * (fp32_top1 - top1) <= max_drop_pt``, and every measured trial (``excluded``, ``top1``,
    ``drop_pt``). Tries nothing excluded first. Raises :class:`VggcError` when even
    ``max_layers`` exclusions miss the budget."""
    if max_drop_pt < 0:
        raise InputError(f"--max-drop {max_drop_pt}: must be >= 0 (percentage points of top-1)")
    order = [r["node"] for r in ranking]
    limit = len(order) if max_layers is None else min(max_layers, len(order))
    trials = []
    for k in range(0, limit + 1):
        excl = order[:k]
        top1 = top1_with(excl)
        drop = round(100 * (fp32_top1 - top1), 4)
        trials.append({"excluded": list(excl), "top1": top1, "drop_pt": drop})
        if drop <= max_drop_pt + 1e-9:
            return list(excl), trials
    raise VggcError(f"--max-drop {max_drop_pt}: INT8 still loses {trials[-1]['drop_pt']:.2f} pt with the "
                    f"{limit} most sensitive layers kept in FP32; raise --max-drop or ship FP32")


def search_ort(pre_path: Path, arrays: Sequence[np.ndarray], *, quantize: Callable[[Path, list[str]], None],
               top1_of: Callable[[Path], float], fp32_top1: float, max_drop_pt: float, workdir: Path,
               threads: int | None = None, max_layers: int | None = None, progress=None) -> BudgetResult:
    """Run the rank-then-select search on a pre-processed FP32 ONNX model; return a :class:`BudgetResult`.

    ``quantize(out, excluded)`` writes a QDQ model of ``pre_path`` keeping ``excluded`` in FP32 (the
    caller's calibration settings); ``top1_of(path)`` evaluates a QDQ file on the evaluation images.
    Ranking uses the first :data:`RANK_IMAGES` images of ``arrays`` (calibration batches)."""
    from vggc.export.ort_backend import open_onnx_cpu

    rank_arrays, n = [], 0
    for a in arrays:
        if n >= RANK_IMAGES:
            break
        rank_arrays.append(a[:RANK_IMAGES - n])
        n += len(rank_arrays[-1])

    def logits_of(path: Path) -> np.ndarray:
        runner = open_onnx_cpu(path, threads=threads)
        try:
            return np.concatenate([runner.predict(torch.from_numpy(a)).numpy() for a in rank_arrays])
        finally:
            runner.close()

    ref = logits_of(pre_path)
    candidate = workdir / "candidate.onnx"

    def logits_with(excluded: list[str]) -> np.ndarray:
        quantize(candidate, excluded)
        return logits_of(candidate)

    def top1_with(excluded: list[str]) -> float:
        quantize(candidate, excluded)
        return top1_of(candidate)

    res = BudgetResult(max_drop_pt=max_drop_pt, fp32_top1=fp32_top1, rank_images=n)
    first = top1_with([])
    drop0 = round(100 * (fp32_top1 - first), 4)
    if drop0 <= max_drop_pt + 1e-9:  # plain INT8 already fits: rank nothing, exclude nothing
        res.trials = [{"excluded": [], "top1": first, "drop_pt": drop0}]
        return res
    res.ranking = rank_layers(quantizable_nodes(pre_path), logits_with, ref, progress)
    cache = {(): first}
    res.excluded, res.trials = select_exclusions(
        res.ranking, lambda ex: cache[tuple(ex)] if tuple(ex) in cache else top1_with(ex), fp32_top1,
        max_drop_pt, max_layers=max_layers)
    return res


def check_budget_settings(max_drop, *, mode, backend, data, evaluate, max_fp32_layers) -> None:
    """Raise a one-line :class:`InputError` for a ``--max-drop`` that cannot be honoured."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise InputError(f"--max-drop {max_drop}: must be >= 0 (percentage points of top-1)")
    if mode != "static" or backend != "onnxruntime":
        raise InputError("--max-drop: accuracy-aware INT8 needs --mode static --backend onnxruntime")
    if not data or not evaluate:
        raise InputError("--max-drop: the budget is checked on test images: pass --data and do not use --no-eval")
    if max_fp32_layers is not None and max_fp32_layers < 1:
        raise InputError(f"--max-fp32-layers {max_fp32_layers}: must be at least 1")


def budget_search(fp32_top1, max_drop, max_layers, data, pre, eval_limit, seed, batch_size, threads, progress):
    """Return ``search(pre_path, arrays, quantize) -> BudgetResult`` bound to the evaluation images."""
    from vggc.data import limit_split, load_split
    from vggc.evaluate import evaluate
    from vggc.export.ort_backend import open_onnx_cpu

    split = limit_split(load_split(data, "test", progress=progress), eval_limit, seed)

    def top1_of(path: Path) -> float:
        runner = open_onnx_cpu(path, threads=threads)
        try:
            return evaluate(runner.predict, split, pre, batch_size=batch_size).top1
        finally:
            runner.close()

    def search(pre_path, arrays, quantize):
        return search_ort(pre_path, arrays, quantize=quantize, top1_of=top1_of, fp32_top1=fp32_top1,
                          max_drop_pt=max_drop, workdir=Path(pre_path).parent, threads=threads,
                          max_layers=max_layers, progress=progress)

    return search
