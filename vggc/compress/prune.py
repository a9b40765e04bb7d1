"""Structured channel pruning: L1-norm filter importance (Li et al., 2017), filters really removed.

Each prunable unit is a Torch-Pruning *dependency group* rooted at a ``Conv2d``: the conv's output
filters together with everything coupled to them (its BatchNorm channels, the next conv's input
channels, the first classifier ``Linear``'s input features, and for residual nets every other
layer sharing those channels). Removing a filter removes it from all of them, so the result is a
smaller dense model that :func:`vggc.models.load_weights` rebuilds from its state_dict alone.

Importance of a filter is the L1 norm of its own weights (``MagnitudeImportance(p=1,
normalizer=None, group_reduction="first")``), computed for every layer on the weights as they are
before the step (Li et al.'s "independent" strategy), so the result does not depend on the order
in which layers are cut. Only conv output channels are pruned: the classifier's hidden widths and
the final ``Linear`` (the logits) stay as they are.

How many filters each layer keeps (a *plan*, ``{conv name: width}``) comes from a strategy:

* ``uniform``: the same fraction of every layer;
* ``global``: filters ranked across all layers by L1 norm divided by their layer's mean L1 norm
  (raw norms are not comparable between layers of different fan-in), lowest removed first;
* ``sensitivity``: per-layer fractions from a sensitivity scan (:mod:`vggc.compress.sensitivity`):
  each layer loses as much as it can while its accuracy drop stays within one shared tolerance.

Every strategy keeps at least ``1 - max_ratio`` of each layer and rounds widths to multiples of
``round_to`` (odd widths waste SIMD lanes: FLOPs saved are not time saved). The amount is either
``amount`` (fraction of channels removed: per layer for ``uniform``, overall otherwise) or
``target_macs`` (fraction of the baseline MACs to keep at most); the strategy's single knob is
searched by bisection on an exact analytic MAC count (:class:`MacModel`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import nn

from vggc.errors import InputError, StaleCheckpointError, VggcError
from vggc.progress import Progress, no_progress
from vggc.resume import run_key

if TYPE_CHECKING:  # pragma: no cover
    from vggc.compress.distill import KDConfig
    from vggc.compress.sensitivity import SensitivityTable
    from vggc.data import Preprocess, Split
    from vggc.train import LossFn, TrainConfig

STRATEGIES = ("uniform", "global", "sensitivity")
Plan = dict  # conv (group root) name -> output channels to keep


# ----------------------------------------------------------------------------- settings

@dataclass
class PruneSpec:
    """What to prune: strategy, amount (``amount`` XOR ``target_macs``), rounding, caps, steps.

    ``amount``: fraction of conv output channels removed, in (0, 1) — per layer for ``uniform``,
    over all layers for ``global``/``sensitivity``. ``target_macs``: keep at most this fraction of
    the baseline MACs, in (0, 1). ``max_ratio``: no layer loses more than this fraction of its
    filters. ``round_to``: kept widths are multiples of it (a layer narrower than that is left
    alone). ``steps``: prune in this many steps, fine-tuning after each.
    """

    strategy: str = "uniform"
    amount: float | None = None
    target_macs: float | None = None
    round_to: int = 8
    max_ratio: float = 0.9
    steps: int = 1

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise InputError(f"--strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if (self.amount is None) == (self.target_macs is None):
            raise InputError("give exactly one of --amount (fraction of channels to remove) or "
                             "--target-macs (fraction of MACs to keep)")
        if self.amount is not None and not 0 < self.amount < 1:
            raise InputError(f"--amount {self.amount}: must be between 0 and 1 (exclusive)")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise InputError(f"--target-macs {self.target_macs}: must be between 0 and 1 (exclusive)")
        if self.round_to < 1:
            raise InputError(f"--round-to {self.round_to}: must be >= 1")
        if not 0 < self.max_ratio < 1:
            raise InputError(f"--max-ratio {self.max_ratio}: must be between 0 and 1 (exclusive)")
        if self.steps < 1:
            raise InputError(f"--steps {self.steps}: must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- dependency groups

def output_layer(model: nn.Module) -> nn.Module:
    """Return the layer that produces the logits (the last ``Linear``, else the last conv)."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                last = m
    if last is None:
        raise InputError("model has no Conv2d or Linear layer to prune")
    return last


class PruningGraph:
    """Torch-Pruning's dependency graph of ``model`` plus its conv-rooted groups by name.

    ``names``: group roots (conv module names) in model order. The graph follows the model as it
    is pruned in place; build a new one for a different model object.
    """

    def __init__(self, model: nn.Module, input_size: int = 32, in_channels: int = 3):
        import torch_pruning as tp

        self.tp = tp
        self.model = model
        was_training = model.training
        model.eval()  # BatchNorm on a 1-image 1x1 map fails in train mode
        try:
            with torch.enable_grad():  # Torch-Pruning traces through autograd
                self.DG = tp.DependencyGraph().build_dependency(
                    model, example_inputs=torch.zeros(1, in_channels, input_size, input_size))
        finally:
            model.train(was_training)
        self.module_names = {m: n for n, m in model.named_modules()}
        order = {n: i for i, n in enumerate(self.module_names.values())}
        self.roots: dict[str, nn.Module] = {}
        for group in self.DG.get_all_groups(ignored_layers=[output_layer(model)], root_module_types=[nn.Conv2d]):
            # name a group after its earliest conv whose filters it removes (the stem, not the
            # depthwise conv coupled to it): that conv's filter norms rank the group's channels
            convs = [d.target.module for d, _ in group if isinstance(d.target.module, nn.Conv2d)
                     and self.DG.is_out_channel_pruning_fn(d.handler)]
            root = min(convs or [group[0].dep.target.module], key=lambda m: order[self.module_names[m]])
            self.roots[self.module_names[root]] = root
        self.names = sorted(self.roots, key=order.__getitem__)
        self._importance = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")

    def width(self, name: str) -> int:
        return int(self.DG.get_out_channels(self.roots[name]))

    def widths(self) -> dict[str, int]:
        """Return ``{conv name: output channels}`` of every prunable group, in model order."""
        return {n: self.width(n) for n in self.names}

    def group(self, name: str, idxs=None):
        """Return the dependency group that removes ``idxs`` (default: all) filters of ``name``."""
        root = self.roots[name]
        fn = self.DG.get_pruner_of_module(root).prune_out_channels
        return self.DG.get_pruning_group(root, fn, list(range(self.width(name))) if idxs is None else idxs)

    def l1(self, name: str) -> torch.Tensor:
        """Return the L1 norm of each output filter of conv ``name`` (Li et al.'s importance)."""
        return self._importance(self.group(name)).float()

    def importances(self) -> dict[str, torch.Tensor]:
        return {n: self.l1(n) for n in self.names}

    def remove(self, name: str, idxs: list[int]) -> None:
        """Remove filters ``idxs`` of conv ``name`` and every coupled channel, in place."""
        if not idxs:
            return
        if len(idxs) >= self.width(name):
            raise VggcError(f"refusing to remove all {self.width(name)} filters of {name}")
        g = self.group(name, sorted(int(i) for i in idxs))
        if not self.DG.check_pruning_group(g):
            raise VggcError(f"cannot remove {len(idxs)} filters of {name}: a coupled layer would vanish")
        g.prune()

    def apply(self, keep: Plan, importances: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
        """Prune every layer to ``keep[name]`` filters, removing its lowest-L1 filters.

        All importances are taken before anything is cut (order-independent). Returns the
        removed filter indices per layer (indices into the layer as it was).
        """
        imps = importances or {n: self.l1(n) for n in keep if keep[n] < self.width(n)}
        removed = {}
        for name in self.names:
            if name not in keep:
                continue
            n_remove = self.width(name) - int(keep[name])
            if n_remove < 0:
                raise VggcError(f"plan keeps {keep[name]} filters of {name}, which has only {self.width(name)}")
            if n_remove == 0:
                continue
            idxs = torch.argsort(imps[name], stable=True)[:n_remove].tolist()
            self.remove(name, idxs)
            removed[name] = sorted(idxs)
        return removed


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Return ``{name: out_channels}`` of every ``Conv2d`` in ``model`` (model order)."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Let the body prune ``model`` in place, then put every module back as it was.

    Torch-Pruning replaces parameters and buffers with new tensors and edits attributes such as
    ``out_channels``; a shallow snapshot of each module's attributes restores it for free.
    """
    snap = []
    for m in model.modules():
        attrs = {k: v for k, v in m.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")}
        snap.append((m, attrs, dict(m._parameters), dict(m._buffers), dict(m._modules)))
    try:
        yield model
    finally:
        for m, attrs, params, buffers, modules in snap:
            for k in [k for k in m.__dict__ if k not in attrs and k not in ("_parameters", "_buffers", "_modules")]:
                del m.__dict__[k]
            m.__dict__.update(attrs)
            for d, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, modules)):
                d.clear()
                d.update(saved)


# ----------------------------------------------------------------------------- analytic MACs

class MacModel:
    """Exact MAC count of ``model`` after any plan, without pruning anything.

    Conv2d MACs are ``positions * out * in / groups * kh * kw`` and Linear MACs
    ``positions * in * out`` (as :func:`vggc.models.count_macs` counts them). A plan changes
    ``out`` of each layer whose filters it removes and ``in`` of each layer fed by them (by the
    group's index multiplicity, e.g. ``k*k`` features per channel after a ``k x k`` flatten).
    """

    def __init__(self, graph: PruningGraph, input_size: int = 32, in_channels: int = 3):
        self.layers: dict[nn.Module, dict] = {}
        hooks = []

        def hook(m, _inp, out):
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                self.layers[m] = dict(pos=out.numel() // out.shape[1], k=kh * kw, inp=m.in_channels,
                                      out=m.out_channels, groups=m.groups,
                                      depthwise=m.groups > 1 and m.groups == m.in_channels == m.out_channels)
            else:
                self.layers[m] = dict(pos=out.numel() // out.shape[-1], k=1, inp=m.in_features,
                                      out=m.out_features, groups=1, depthwise=False)

        model = graph.model
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(hook))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, in_channels, input_size, input_size))
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        # per group: (module, "out"|"in", indices per root channel)
        self.effects: dict[str, list[tuple[nn.Module, str, float]]] = {}
        self.widths = graph.widths()
        for name in graph.names:
            eff = []
            for dep, idxs in graph.group(name):
                mod = dep.target.module
                if mod not in self.layers:
                    continue
                kind = "out" if graph.DG.is_out_channel_pruning_fn(dep.handler) else "in"
                eff.append((mod, kind, len(idxs) / self.widths[name]))
            self.effects[name] = eff

    def macs(self, keep: Plan | None = None) -> int:
        """Return the MACs of the model pruned to ``keep`` (``None``: as it is)."""
        d_out = {m: 0.0 for m in self.layers}
        d_in = {m: 0.0 for m in self.layers}
        for name, k in (keep or {}).items():
            removed = self.widths[name] - int(k)
            for mod, kind, mult in self.effects.get(name, ()):
                (d_out if kind == "out" else d_in)[mod] += removed * mult
        total = 0
        for m, r in self.layers.items():
            out = r["out"] - round(d_out[m])
            if r["depthwise"]:
                total += r["pos"] * out * r["k"]
            else:
                inp = r["inp"] - round(d_in[m])
                total += r["pos"] * out * (inp // r["groups"]) * r["k"]
        return int(total)


# ----------------------------------------------------------------------------- plans

def min_width(width: int, spec: PruneSpec) -> int:
    """Return the fewest filters a layer of ``width`` may keep: ``1 - max_ratio`` of it, rounded up."""
    q = spec.round_to
    if width <= q:
        return width
    return min(width, max(q, q * math.ceil(width * (1 - spec.max_ratio) / q - 1e-9)))


def round_width(x: float, width: int, spec: PruneSpec) -> int:
    """Return ``x`` rounded to the nearest multiple of ``round_to``, within [min width, width]."""
    q = spec.round_to
    r = int(math.floor(x / q + 0.5)) * q
    r = max(r, min_width(width, spec))
    return width if r >= width else r


def uniform_plan(widths: dict[str, int], ratio: float, spec: PruneSpec) -> Plan:
    """Remove the same fraction ``ratio`` of every layer (rounded, capped)."""
    return {n: round_width(w * (1 - min(ratio, spec.max_ratio)), w, spec) for n, w in widths.items()}


def global_plan(widths: dict[str, int], importances: dict[str, torch.Tensor], frac: float,
                spec: PruneSpec) -> Plan:
    """Remove the ``frac`` lowest of all filters, ranked by L1 / layer-mean L1 (rounded, capped)."""
    names = list(widths)
    scores = torch.cat([importances[n] / importances[n].mean().clamp_min(1e-12) for n in names])
    owner = torch.cat([torch.full((widths[n],), i) for i, n in enumerate(names)])
    k = int(round(frac * scores.numel()))
    order = torch.argsort(scores, stable=True)[:k]
    removed = torch.bincount(owner[order], minlength=len(names)).tolist()
    return {n: round_width(widths[n] - removed[i], widths[n], spec) for i, n in enumerate(names)}


def sensitivity_plan(widths: dict[str, int], table: "SensitivityTable", tolerance: float,
                     spec: PruneSpec) -> Plan:
    """Remove from each layer the largest scanned fraction whose accuracy drop is <= ``tolerance``."""
    return {n: round_width(w * (1 - min(table.allowed_fraction(n, tolerance), spec.max_ratio)), w, spec)
            for n, w in widths.items()}


def removed_fraction(widths: dict[str, int], keep: Plan) -> float:
    """Return the fraction of all conv output channels a plan removes."""
    return 1 - sum(keep.values()) / sum(widths[n] for n in keep)


@dataclass
class PlanResult:
    """A chosen plan: widths to keep, its MACs, and the strategy knob found (``knob``)."""

    keep: Plan
    macs: int
    base_macs: int
    knob: float
    removed_fraction: float
    widths_before: dict = field(default_factory=dict)

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.base_macs

    def to_dict(self) -> dict:
        return {"keep": dict(self.keep), "macs": self.macs, "base_macs": self.base_macs,
                "macs_ratio": round(self.macs_ratio, 6), "knob": self.knob,
                "removed_fraction": round(self.removed_fraction, 6)}


def make_plan(model: nn.Module, spec: PruneSpec, input_size: int = 32,
              table: "SensitivityTable | None" = None, graph: PruningGraph | None = None) -> PlanResult:
    """Choose per-layer widths for ``model`` under ``spec``; nothing is pruned.

    Raises :class:`InputError` when the amount or MAC target cannot be reached within
    ``max_ratio``/``round_to``, or when a sensitivity table does not describe this model.
    """
    graph = graph or PruningGraph(model, input_size)
    widths = graph.widths()
    if not widths:
        raise InputError("model has no prunable conv layers")
    macs_of = MacModel(graph, input_size)
    base = macs_of.macs()
    if spec.strategy == "uniform":
        def family(p: float) -> Plan:
            return uniform_plan(widths, p * spec.max_ratio, spec)
        scale = spec.max_ratio
    elif spec.strategy == "global":
        imps = graph.importances()

        def family(p: float) -> Plan:
            return global_plan(widths, imps, p, spec)
        scale = 1.0
    else:
        if table is None:
            raise InputError("--strategy sensitivity needs a sensitivity scan")
        table.check_matches(widths)
        scale = max(table.max_drop(), 1e-6)

        def family(p: float) -> Plan:
            return sensitivity_plan(widths, table, p * scale, spec)

    if spec.amount is not None and spec.strategy == "uniform":
        if spec.amount > spec.max_ratio:
            raise InputError(f"--amount {spec.amount} exceeds --max-ratio {spec.max_ratio}")
        keep = family(spec.amount / spec.max_ratio)
        return PlanResult(keep, macs_of.macs(keep), base, spec.amount, removed_fraction(widths, keep), widths)
    if spec.amount is not None:
        def ok(keep: Plan) -> bool:
            return removed_fraction(widths, keep) >= spec.amount - 1e-9
        what = f"removing {spec.amount:.0%} of the channels"
    else:
        def ok(keep: Plan) -> bool:
            return macs_of.macs(keep) <= spec.target_macs * base
        what = f"{spec.target_macs:.0%} of the baseline MACs ({spec.target_macs * base / 1e6:.1f} M)"
    most = family(1.0)
    if not ok(most):
        raise InputError(f"cannot reach {what} with --strategy {spec.strategy}: at most "
                         f"{removed_fraction(widths, most):.0%} of channels / "
                         f"{macs_of.macs(most) / base:.0%} of MACs within --max-ratio {spec.max_ratio} "
                         f"and --round-to {spec.round_to}")
    lo, hi = 0.0, 1.0  # smallest knob p with ok(family(p))
    for _ in range(40):
        mid = (lo + hi) / 2
        if ok(family(mid)):
            hi = mid
        else:
            lo = mid
    keep = family(hi)
    return PlanResult(keep, macs_of.macs(keep), base, round(hi * scale, 6), removed_fraction(widths, keep), widths)


def step_plan(before: dict[str, int], final: Plan, step: int, steps: int, spec: PruneSpec) -> Plan:
    """Return the widths after ``step`` of ``steps``: linearly from ``before`` to ``final``, rounded."""
    if step >= steps:
        return dict(final)
    out = {}
    for n, w in before.items():
        target = w - (w - final[n]) * step / steps
        out[n] = min(w, max(final[n], round_width(target, w, spec)))
    return out


def prune_model(model: nn.Module, spec: PruneSpec, input_size: int = 32,
                table: "SensitivityTable | None" = None) -> tuple[PlanResult, dict[str, list[int]]]:
    """One-shot prune ``model`` in place to ``spec``'s final widths (no fine-tune).

    Returns the plan and the removed filter indices per layer.
    """
    graph = PruningGraph(model, input_size)
    plan = make_plan(model, spec, input_size, table, graph)
    removed = graph.apply(plan.keep)
    return plan, removed


# ----------------------------------------------------------------------------- prune + fine-tune

@dataclass
class PruneRun:
    """What :func:`prune_and_finetune` did: the final plan, per-step records, fine-tune cost."""

    plan: PlanResult
    steps: list[dict] = field(default_factory=list)
    finetune_seconds: float = 0.0
    finetune_cpu_seconds: float = 0.0
    resumed_from_step: int = 0


def epochs_per_step(total: int, steps: int) -> list[int]:
    """Split ``total`` fine-tune epochs over ``steps`` (earlier steps get the remainder)."""
    return [total // steps + (1 if k < total % steps else 0) for k in range(steps)]


def _state_paths(work: Path) -> tuple[Path, Callable[[int], Path]]:
    return (work.with_name(work.name + ".state.pt"),
            lambda k: work.with_name(work.name + f".step{k}.ckpt"))


def work_files(work: str | Path, steps: int) -> list[Path]:
    """Return the resumable-state paths :func:`prune_and_finetune` keeps beside ``work``."""
    state_path, ckpt_of = _state_paths(Path(work))
    return [state_path, *(ckpt_of(k) for k in range(1, steps + 1))]


def remove_work_files(work: str | Path, steps: int) -> None:
    """Delete the resumable state :func:`prune_and_finetune` keeps beside ``work``."""
    for p in work_files(work, steps):
        p.unlink(missing_ok=True)


def prune_and_finetune(model: nn.Module, spec: PruneSpec, *, train: "Split | None", preprocess: "Preprocess",
                       train_cfg: "TrainConfig | None", finetune_epochs: int = 0,
                       table: "SensitivityTable | None" = None, work: str | Path | None = None,
                       resume: bool = False, cleanup: bool = True,
                       evaluate_step: Callable[[nn.Module], float] | None = None,
                       progress: Progress = no_progress, on_epoch: Callable[[dict], None] | None = None,
                       on_step: Callable[[dict], None] | None = None, loss_fn: "LossFn | None" = None,
                       loss_settings: dict | None = None) -> tuple[nn.Module, PruneRun]:
    """Prune ``model`` to ``spec`` in ``spec.steps`` steps, fine-tuning with :func:`vggc.train.fit`.

    The final widths are planned once on the original model; step ``k`` prunes every layer
    ``k/steps`` of the way there (lowest-L1 filters of the *current*, fine-tuned weights) and
    fine-tunes for its share of ``finetune_epochs`` (seed ``train_cfg.seed + k - 1``).

    ``work``: file prefix for resumable state — ``<work>.state.pt`` after each finished step and
    ``<work>.step<k>.ckpt`` (fit's checkpoint: every epoch and every 10 minutes); ``resume=True`` continues from them.
    ``cleanup``: delete them at the end (:func:`prune_file` does so only once its output is saved).
    ``evaluate_step(model) -> top1`` is called after each step but the last (whose result the
    caller evaluates anyway). ``loss_fn``: the fine-tune loss (default: the trainer's
    cross-entropy), e.g. :class:`vggc.compress.distill.DistillLoss` from the unpruned model;
    ``loss_settings`` describe it in the resume key.
    Returns ``(pruned model, PruneRun)``; the model is on CPU in eval mode.
    """
    from vggc.artifacts import atomic_path, safe_torch_load
    from vggc.models import model_from_state_dict

    if finetune_epochs > 0 and (train is None or train_cfg is None):
        raise InputError("fine-tuning needs training data and a TrainConfig")
    size = preprocess.input_size
    model = model.eval()
    plan = make_plan(model, spec, size, table)
    before = plan.widths_before
    per_step = epochs_per_step(finetune_epochs, spec.steps)
    key = run_key({"spec": spec.to_dict(), "keep": plan.keep, "epochs": per_step,
                       "train": asdict(train_cfg) if train_cfg else None, "n_train": len(train) if train else 0,
                       **({"loss": loss_settings} if loss_settings else {})})
    state_path, ckpt_of = _state_paths(Path(work)) if work else (None, None)
    run = PruneRun(plan=plan)
    start = 0
    if resume:
        if state_path is None:
            raise InputError("--resume needs a work path for checkpoints")
        if state_path.is_file():
            st = safe_torch_load(state_path)
            if not isinstance(st, dict) or st.get("key") != key:
                raise StaleCheckpointError(f"--resume: {state_path} was written with different settings; "
                                 "rerun without --resume or with the same options")
            model, _, _ = model_from_state_dict(st["model"])
            start = int(st["step"])
            run.steps = list(st["steps"])
            run.finetune_seconds = float(st["finetune_seconds"])
            run.finetune_cpu_seconds = float(st["finetune_cpu_seconds"])
            run.resumed_from_step = start
        elif not ckpt_of(1).is_file():
            raise InputError(f"--resume: nothing to resume, no {state_path.name} or {ckpt_of(1).name} "
                             f"beside {Path(work).name}")

    for k in range(start + 1, spec.steps + 1):
        graph = PruningGraph(model, size)
        keep = step_plan(before, plan.keep, k, spec.steps, spec)
        graph.apply(keep)
        macs = MacModel(graph, size).macs()
        rec = {"step": k, "widths": graph.widths(), "macs": macs, "epochs": per_step[k - 1]}
        if per_step[k - 1] > 0:
            from vggc.train import fit

            cfg = replace(train_cfg, epochs=per_step[k - 1], seed=train_cfg.seed + k - 1)
            ckpt = ckpt_of(k) if ckpt_of else None
            resume_fit = bool(resume and ckpt is not None and ckpt.is_file())
            res = fit(model.train(), train, preprocess, cfg, loss_fn=loss_fn, checkpoint=ckpt, resume=resume_fit,
                      progress=progress, on_epoch=on_epoch, run_key=key)
            # summed over the epoch records, so epochs done before a kill (restored on resume) count too
            wall = sum(h["seconds"] for h in res.history)
            cpu = sum(h.get("cpu_seconds", 0.0) for h in res.history)
            run.finetune_seconds += wall
            run.finetune_cpu_seconds += cpu
            rec.update(finetune_seconds=round(wall, 2), finetune_cpu_seconds=round(cpu, 2),
                       precision=res.precision, history=res.history, resumed_from_epoch=res.resumed_from)
        model = model.eval()
        if evaluate_step is not None and k < spec.steps:
            rec["top1"] = evaluate_step(model)
        run.steps.append(rec)
        if state_path is not None and k < spec.steps and per_step[k - 1] > 0:
            with atomic_path(state_path) as tmp:
                torch.save({"key": key, "step": k, "model": model.state_dict(), "steps": run.steps,
                            "finetune_seconds": run.finetune_seconds,
                            "finetune_cpu_seconds": run.finetune_cpu_seconds}, tmp)
            if ckpt_of:
                ckpt_of(k).unlink(missing_ok=True)
        if on_step:
            on_step(rec)
    if cleanup and work:
        remove_work_files(work, spec.steps)
    run.finetune_seconds = round(run.finetune_seconds, 2)
    run.finetune_cpu_seconds = round(run.finetune_cpu_seconds, 2)
    return model.cpu().eval(), run


# ----------------------------------------------------------------------------- the whole job

def prune_file(weights: str | Path, data: str | Path, out: str | Path, spec: PruneSpec, *,
               train_cfg: "TrainConfig | None" = None, finetune_epochs: int = 0, limit: int | None = None,
               eval_limit: int | None = None, do_eval: bool = True, sensitivity: str | Path | None = None,
               scan_limit: int = 1000, fractions=None, preprocess: "Preprocess | None" = None,
               resume: bool = False, seed: int = 0, progress: Progress = no_progress,
               on_epoch: Callable[[dict], None] | None = None,
               on_step: Callable[[dict], None] | None = None, kd: "KDConfig | None" = None) -> dict:
    """Prune a weights file, fine-tune, evaluate, save ``out`` (state_dict) + ``out.json`` manifest.

    ``preprocess`` defaults to the source's manifest/sidecar (so the result evaluates with the
    same normalisation). ``sensitivity``: a scan written by :func:`vggc.compress.sensitivity.write_scan`
    (directory or its JSON); for ``--strategy sensitivity`` without one, a scan is run on
    ``scan_limit`` class-balanced training images. ``limit``: fine-tune on a class-balanced
    subset; ``eval_limit``: evaluate on a class-balanced subset of the test split.
    ``kd``: fine-tune with knowledge distillation from the unpruned source (a frozen copy is the
    teacher; ``kd.alpha`` weights the KD term, ``1 - alpha`` the cross-entropy); ``None`` or
    ``alpha == 0``: plain cross-entropy. Returns the manifest's metrics.
    """
    from vggc.artifacts import save_state_dict, write_manifest
    from vggc.compress import sensitivity as sens
    from vggc.data import limit_split, load_split
    from vggc.evaluate import evaluate
    from vggc.models import count_macs, count_params, load_weights
    from vggc.runtime import preprocess_from_meta, read_manifest

    weights, out = Path(weights), Path(out)
    lm = load_weights(weights)
    source_meta = read_manifest(weights)
    pre = preprocess or preprocess_from_meta(source_meta)
    model = lm.model
    size = pre.input_size
    base_macs, base_params = count_macs(model, size), count_params(model)

    need_train = finetune_epochs > 0 or (spec.strategy == "sensitivity" and sensitivity is None)
    train_full = load_split(data, "train", progress=progress) if need_train else None
    test = limit_split(load_split(data, "test", progress=progress), eval_limit, seed) if do_eval else None

    def top1(m: nn.Module) -> float:
        with torch.inference_mode():
            return evaluate(lambda x: m(x), test, pre, progress=progress).top1

    table, scan_info = None, None
    if spec.strategy == "sensitivity":
        if sensitivity is not None:
            table = sens.read_scan(sensitivity)
            scan_info = {"path": str(sensitivity)}
        else:
            subset = limit_split(train_full, scan_limit, seed)
            table = sens.scan_sensitivity(model, subset, pre, fractions or sens.DEFAULT_FRACTIONS,
                                          progress=progress)
            scan_info = {"scan_limit": len(subset), "seed": seed, "baseline_top1": table.baseline}

    metrics: dict = {}
    if do_eval:
        metrics["top1_source"] = top1(model)
        probe = copy.deepcopy(model)
        prune_model(probe, spec, size, table)
        metrics["top1_before_finetune"] = top1(probe)
        del probe

    train = limit_split(train_full, limit, seed) if train_full is not None and finetune_epochs > 0 else None
    loss_fn = loss_settings = None
    if kd is not None and kd.alpha > 0 and finetune_epochs > 0:
        from vggc.compress.distill import DistillLoss

        loss_fn = DistillLoss(copy.deepcopy(model), kd, train_cfg.label_smoothing if train_cfg else 0.0)
        loss_settings = {"distill_from_source": asdict(kd)}
    pruned, run = prune_and_finetune(model, spec, train=train, preprocess=pre, train_cfg=train_cfg,
                                     loss_fn=loss_fn, loss_settings=loss_settings,
                                     finetune_epochs=finetune_epochs, table=table, work=out, resume=resume,
                                     cleanup=False,
                                     evaluate_step=top1 if do_eval else None, progress=progress,
                                     on_epoch=on_epoch, on_step=on_step)
    macs, params = count_macs(pruned, size), count_params(pruned)
    if spec.target_macs is not None and macs > spec.target_macs * base_macs:
        raise VggcError(f"internal error: pruned model has {macs} MACs, above the target "
                        f"{spec.target_macs * base_macs:.0f}")
    if do_eval:
        same = finetune_epochs == 0 and spec.steps == 1  # the one-shot probe is this very model
        metrics["top1"] = metrics["top1_before_finetune"] if same else top1(pruned)
        metrics["n"] = len(test)
        if spec.steps > 1:
            run.steps[-1]["top1"] = metrics["top1"]
    widths_after = PruningGraph(pruned, size).widths()
    metrics.update(macs_before=base_macs, macs_after=macs, macs_ratio=round(macs / base_macs, 6),
                   params_before=base_params, params_after=params, params_ratio=round(params / base_params, 6),
                   channels_removed_fraction=round(run.plan.removed_fraction, 6),
                   finetune_seconds=run.finetune_seconds, finetune_cpu_seconds=run.finetune_cpu_seconds,
                   train_images=len(train) if train is not None else 0, steps=run.steps)
    sd = {k: v.contiguous() for k, v in pruned.state_dict().items()}
    save_state_dict(sd, out)
    inputs = {"source": weights}
    if sensitivity is not None:
        p = sens.scan_json_path(sensitivity)
        inputs["sensitivity"] = p
    write_manifest(out, kind="state_dict", inputs=inputs,
                   settings={"prune": spec.to_dict(), "finetune_epochs": finetune_epochs,
                             "finetune": asdict(train_cfg) if train_cfg and finetune_epochs > 0 else None,
                             "limit": limit, "eval_limit": eval_limit, "seed": seed, "data": str(data),
                             "importance": "L1 norm of each conv filter (Li et al. 2017), independent per step",
                             "sensitivity_scan": scan_info,
                             "distill_from_source": asdict(kd) if loss_fn is not None else None},
                   metrics=metrics,
                   extra={"preprocess": pre.to_dict(), "params": params, "macs": macs, "precision": "fp32",
                          "arch": lm.name, "widths_before": run.plan.widths_before, "widths": widths_after,
                          "plan": run.plan.to_dict(), "config": _config_dict(pruned),
                          "classes": source_meta.get("classes")})
    remove_work_files(out, spec.steps)
    return metrics


def _config_dict(model: nn.Module) -> dict | None:
    """Return the architecture config read back from the pruned weights' shapes (or ``None``)."""
    from vggc.models.registry import detect

    try:
        _, cfg = detect(model.state_dict())
        return cfg.to_dict()
    except Exception:  # noqa: BLE001 - informational only
        return None
