"""Accuracy-aware static INT8 (``vggc quantize --max-drop PT``): keep the fewest, most sensitive
layers in FP32 so that the INT8 model's top-1 stays within a stated budget of the FP32 model's.

How it decides, in two measured stages (one algorithm, :func:`search`, for every static backend):

1. **Rank** (training images only): for every quantizable layer (conv / linear) the model is
   quantized with *that one layer* kept in FP32, and the KL divergence of its softmax from the FP32
   model's is measured on a class-balanced subset of the calibration images. A layer's gain is how
   much keeping it in FP32 alone lowers that divergence against the fully quantized model.
2. **Select**: the fully quantized model is checked first; when its drop already fits the budget
   nothing is ranked or excluded. Otherwise the top-``k`` layers by gain are excluded for
   ``k = 1, 2, ...`` until the drop on the evaluation images fits (or ``max_layers`` is reached:
   then an error).

The evaluation images are the ones ``vggc quantize`` reports top-1 on (the test split, or its
``--eval-limit`` subset); the manifest records that the budget was checked on them and on which
backend (:data:`TRIAL_BACKENDS`, the format table's ``trial_backend``). Each backend supplies a :class:`Trials` (how to quantize with some
layers kept FP32, and how to run the result):

* ``onnxruntime``: ``nodes_to_exclude`` (ONNX node names), trials on ``onnxruntime-cpu``
  (:func:`search_ort`);
* ``torch``: ``X86InductorQuantizer.set_module_name_qconfig(name, None)`` (torch module names such
  as ``features.0``), trials on the *eager* converted PT2E program (``torch-int8-eager``: a compile
  per trial would cost about a minute each); the written ``.pt2`` is then evaluated as usual
  (:mod:`vggc.compress.quantize.backend_torch`);
* ``openvino``: ``nncf.IgnoredScope`` (ONNX node names of vggc's FP32 export), trials on
  ``openvino-cpu`` (:mod:`vggc.compress.quantize.backend_openvino`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vggc import formats
from vggc.errors import InputError, VggcError

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
RANK_IMAGES = 256  # calibration images used to rank layers (their first batches)
ORT_TRIAL_BACKEND = formats.get("onnx").trial_backend
# what each --backend's trials run on (the backend the budget is checked on): the format table's trial_backend
TRIAL_BACKENDS = formats.QuantizeView("trial_backend", skip_none=True)


class BudgetNotMetError(VggcError):
    """No allowed number of FP32 layers brings the INT8 model within the budget (exit 1, not bad input)."""


@dataclass
class BudgetResult:
    """What the search did: the budget, the layers kept in FP32 (most sensitive first) and why,
    each tried exclusion set with its measured top-1, the ranking, and the backend the trials ran on."""

    max_drop_pt: float
    fp32_top1: float
    excluded: list[str] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    ranking: list[dict] = field(default_factory=list)
    rank_images: int = 0
    checked_on: str = "evaluation images (test split)"
    backend: str = ORT_TRIAL_BACKEND

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
    ``drop_pt``). Tries nothing excluded first. Raises :class:`BudgetNotMetError` when even
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
    raise BudgetNotMetError(f"--max-drop {max_drop_pt}: INT8 still loses {trials[-1]['drop_pt']:.2f} pt with the "
                    f"{limit} most sensitive layers kept in FP32; raise --max-drop or ship FP32")


def rank_subset(arrays: Sequence[np.ndarray], limit: int = RANK_IMAGES) -> tuple[list[np.ndarray], int]:
    """Return ``(batches, n)``: the first ``limit`` images of ``arrays`` (calibration batches) and their count."""
    out, n = [], 0
    for a in arrays:
        if n >= limit:
            break
        out.append(np.asarray(a[:limit - n]))
        n += len(out[-1])
    return out, n


@dataclass
class Trials:
    """One backend's side of the search. ``nodes``: the quantizable layers in graph order, named as
    the backend excludes them; ``open_with(excluded)`` quantizes the model keeping ``excluded`` FP32
    and returns a runner (``predict(x)`` -> logits, ``close()``) of the result; ``open_fp32()`` the
    FP32 model on the same backend; ``backend``: what the trial runners run on (recorded)."""

    nodes: list[str]
    open_with: Callable[[list[str]], object]
    open_fp32: Callable[[], object]
    backend: str


def search(trials: Trials, arrays: Sequence[np.ndarray], *, top1_of: Callable[[object], float], fp32_top1: float,
           max_drop_pt: float, max_layers: int | None = None, progress=None) -> BudgetResult:
    """Run the rank-then-select search (module docstring) for any backend; return a :class:`BudgetResult`.

    ``top1_of(runner)`` evaluates an opened trial on the evaluation images. Ranking uses the first
    :data:`RANK_IMAGES` images of ``arrays`` (calibration batches). Plain INT8 is tried first and,
    when it fits, nothing is ranked."""
    rank_arrays, n = rank_subset(arrays)

    def measure(runner, fn):
        try:
            return fn(runner)
        finally:
            runner.close()

    def logits(runner) -> np.ndarray:
        return np.concatenate([runner.predict(torch.from_numpy(a)).numpy() for a in rank_arrays])

    res = BudgetResult(max_drop_pt=max_drop_pt, fp32_top1=fp32_top1, rank_images=n, backend=trials.backend)
    first = measure(trials.open_with([]), top1_of)
    drop0 = round(100 * (fp32_top1 - first), 4)
    if drop0 <= max_drop_pt + 1e-9:  # plain INT8 already fits: rank nothing, exclude nothing
        res.trials = [{"excluded": [], "top1": first, "drop_pt": drop0}]
        return res
    ref = measure(trials.open_fp32(), logits)
    res.ranking = rank_layers(trials.nodes, lambda ex: measure(trials.open_with(ex), logits), ref, progress)
    cache = {(): first}
    res.excluded, res.trials = select_exclusions(
        res.ranking, lambda ex: cache[tuple(ex)] if tuple(ex) in cache else measure(trials.open_with(ex), top1_of),
        fp32_top1, max_drop_pt, max_layers=max_layers)
    return res


class _OrtRunner:
    """An ONNX Runtime CPU session that remembers the file it runs (for path-based evaluators)."""

    def __init__(self, path: Path, threads: int | None):
        from vggc.export.ort_backend import open_onnx_cpu

        self.path, self._runner = Path(path), open_onnx_cpu(path, threads=threads)
        self.predict = self._runner.predict

    def close(self) -> None:
        self._runner.close()


def ort_trials(pre_path: Path, quantize: Callable[[Path, list[str]], None], workdir: Path,
               threads: int | None = None) -> Trials:
    """Return the ONNX Runtime :class:`Trials` of a pre-processed FP32 ONNX model: ``quantize(out,
    excluded)`` writes a QDQ model of ``pre_path`` keeping ``excluded`` (node names) in FP32, run on
    ``onnxruntime-cpu`` from ``workdir/candidate.onnx``."""
    candidate = Path(workdir) / "candidate.onnx"

    def open_with(excluded: list[str]) -> _OrtRunner:
        quantize(candidate, excluded)
        return _OrtRunner(candidate, threads)

    return Trials(quantizable_nodes(pre_path), open_with, lambda: _OrtRunner(pre_path, threads), ORT_TRIAL_BACKEND)


class _EagerRunner:
    """A graph module (a converted Q/DQ reference program, or the FP32 model) run eagerly on the CPU."""

    def __init__(self, module):
        self.module = module

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float().contiguous()).float().cpu()

    def close(self) -> None:
        self.module = None


def ov_trials(fp32_onnx: Path, ov_model, nncf_run, workdir: Path, threads: int | None, input_size: int) -> Trials:
    """Return the NNCF :class:`Trials` of vggc's FP32 ONNX export ``fp32_onnx`` (read as ``ov_model``):
    layers are its ONNX node names; each trial runs ``nncf_run`` (a
    :class:`vggc.compress.quantize.backend_openvino.NncfSettings`) with them in ``nncf.IgnoredScope``, saves the IR
    in ``workdir`` and opens it on ``openvino-cpu``."""
    import openvino as ov

    from vggc.export.openvino_backend import open_openvino

    xml = Path(workdir) / "candidate.xml"

    def open_with(excluded: list[str]):
        ov.save_model(nncf_run.quantize(ov_model.clone(), excluded), str(xml), compress_to_fp16=False)
        return open_openvino(xml, threads=threads, input_size=input_size)

    return Trials(quantizable_nodes(fp32_onnx), open_with,
                  lambda: open_openvino(fp32_onnx, threads=threads, input_size=input_size), TRIAL_BACKENDS["openvino"])


def search_ort(pre_path: Path, arrays: Sequence[np.ndarray], *, quantize: Callable[[Path, list[str]], None],
               top1_of: Callable[[Path], float], fp32_top1: float, max_drop_pt: float, workdir: Path,
               threads: int | None = None, max_layers: int | None = None, progress=None) -> BudgetResult:
    """:func:`search` with :func:`ort_trials`; ``top1_of(path)`` evaluates a QDQ file on the evaluation
    images. Returns a :class:`BudgetResult`."""
    return search(ort_trials(pre_path, quantize, workdir, threads), arrays, top1_of=lambda r: top1_of(r.path),
                  fp32_top1=fp32_top1, max_drop_pt=max_drop_pt, max_layers=max_layers, progress=progress)


def check_budget_settings(max_drop, *, mode, backend, data, evaluate, max_fp32_layers) -> None:
    """Raise a one-line :class:`InputError` for a ``--max-drop`` that cannot be honoured."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise InputError(f"--max-drop {max_drop}: must be >= 0 (percentage points of top-1)")
    if mode != "static" or backend not in TRIAL_BACKENDS:
        raise InputError(f"--max-drop: accuracy-aware INT8 needs --mode static (backend "
                         f"{formats.choose_text(list(TRIAL_BACKENDS))})")
    if not data or not evaluate:
        raise InputError("--max-drop: the budget is checked on test images: pass --data and do not use --no-eval")
    if max_fp32_layers is not None and max_fp32_layers < 1:
        raise InputError(f"--max-fp32-layers {max_fp32_layers}: must be at least 1")


def budget_search(fp32_top1, max_drop, max_layers, data, pre, eval_limit, seed, batch_size, progress):
    """Return ``run(trials, arrays) -> BudgetResult``: :func:`search` bound to the evaluation images
    (the test split, or its ``eval_limit`` subset) and the FP32 top-1 on them."""
    from vggc.data import limit_split, load_split
    from vggc.evaluate import evaluate

    split = limit_split(load_split(data, "test", progress=progress), eval_limit, seed)

    def top1_of(runner) -> float:
        return evaluate(runner.predict, split, pre, batch_size=batch_size).top1

    def run(trials: Trials, arrays: Sequence[np.ndarray]) -> BudgetResult:
        return search(trials, arrays, top1_of=top1_of, fp32_top1=fp32_top1, max_drop_pt=max_drop,
                      max_layers=max_layers, progress=progress)

    return run


def final_budget_note(budget: dict, top1: float, fp32_top1: float, eval_backend: str) -> str | None:
    """Return a note (for the manifest's ``notes``) when the written file, evaluated on ``eval_backend``,
    misses the budget its trials met on ``budget["backend"]`` (torch: eager trials, compiled file);
    ``None`` when it meets it."""
    drop = round(100 * (fp32_top1 - top1), 4)
    if drop <= budget["max_drop_pt"] + 1e-9:
        return None
    return (f"--max-drop {budget['max_drop_pt']:g}: met on {budget['backend']} (drop "
            f"{budget['trials'][-1]['drop_pt']:.2f} pt) but the written file loses {drop:.2f} pt on {eval_backend}")
