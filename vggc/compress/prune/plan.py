"""Pruning plans: how many filters each conv keeps (``{conv name: width}``) under a
:class:`~vggc.compress.prune.spec.PruneSpec`, found on the analytic MAC count; nothing is trained.

The strategy's single knob (uniform ratio, global L1 threshold, sensitivity tolerance) is searched
by bisection so the plan meets ``amount`` or ``target_macs``; :func:`step_plan` interpolates the
widths of iterative steps; :func:`prune_model` applies a plan one-shot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from vggc.compress.graph import MacModel, Plan, PruningGraph, trial_copy
from vggc.compress.prune.spec import PruneSpec
from vggc.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from vggc.compress.sensitivity import SensitivityTable


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
    ``max_ratio``/``round_to``, when a sensitivity table does not describe this model, or when
    the model really pruned to the plan (a copy, :func:`pruned_macs`) misses the MAC target
    the analytic count promised — all before anything is trained. Returns the :class:`PlanResult`.
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
        _check_amount(spec)
        keep = family(spec.amount / spec.max_ratio)
        return PlanResult(keep, macs_of.macs(keep), base, spec.amount, removed_fraction(widths, keep), widths)
    ok, what = _goal(spec, widths, macs_of, base)
    most = family(1.0)
    if not ok(most):
        raise _unreachable(what, spec, widths, most, macs_of, base)
    lo, hi = 0.0, 1.0  # smallest knob p with ok(family(p))
    for _ in range(40):
        mid = (lo + hi) / 2
        if ok(family(mid)):
            hi = mid
        else:
            lo = mid
    keep = family(hi)
    if spec.target_macs is not None:
        _check_real_macs(model, keep, spec, input_size, macs_of.macs(keep))
    return PlanResult(keep, macs_of.macs(keep), base, round(hi * scale, 6), removed_fraction(widths, keep), widths)


def _check_amount(spec: PruneSpec) -> None:
    if spec.amount is not None and spec.strategy == "uniform" and spec.amount > spec.max_ratio:
        raise InputError(f"--amount {spec.amount} exceeds --max-ratio {spec.max_ratio}")


def _goal(spec: PruneSpec, widths: dict[str, int], macs_of: MacModel, base: int):
    """Return ``(ok(plan) -> bool, what)``: whether a plan meets the spec's amount or MAC target."""
    if spec.amount is not None:
        return (lambda keep: removed_fraction(widths, keep) >= spec.amount - 1e-9,
                f"removing {spec.amount:.0%} of the channels")
    return (lambda keep: macs_of.macs(keep) <= spec.target_macs * base,
            f"{spec.target_macs:.0%} of the baseline MACs ({spec.target_macs * base / 1e6:.1f} M)")


def _unreachable(what: str, spec: PruneSpec, widths: dict[str, int], most: Plan, macs_of: MacModel,
                 base: int) -> InputError:
    return InputError(f"cannot reach {what} with --strategy {spec.strategy}: at most "
                      f"{removed_fraction(widths, most):.0%} of channels / "
                      f"{macs_of.macs(most) / base:.0%} of MACs within --max-ratio {spec.max_ratio} "
                      f"and --round-to {spec.round_to}")


def check_reachable(model: nn.Module, spec: PruneSpec, input_size: int = 32, *, max_fraction: float = 1.0) -> None:
    """Raise :class:`InputError` (the message :func:`make_plan` gives) when no plan can meet ``spec``.

    Cheap and needs no data or sensitivity scan, so a job can refuse before it reads images: the
    most any strategy removes is every layer down to ``1 - max_ratio`` of its filters (rounded;
    for ``sensitivity``, also at most ``max_fraction``, the largest fraction its scan tries).
    """
    _check_amount(spec)
    graph = PruningGraph(model, input_size)
    widths = graph.widths()
    if not widths:
        raise InputError("model has no prunable conv layers")
    macs_of = MacModel(graph, input_size)
    base = macs_of.macs()
    ok, what = _goal(spec, widths, macs_of, base)
    most = uniform_plan(widths, min(max_fraction, spec.max_ratio), spec)
    if not ok(most):
        raise _unreachable(what, spec, widths, most, macs_of, base)


def pruned_macs(model: nn.Module, keep: Plan, input_size: int = 32) -> int:
    """Return :func:`vggc.models.count_macs` of a copy of ``model`` really pruned to ``keep``
    (``model`` is not touched)."""
    from vggc.models import count_macs

    trial, graph = trial_copy(model, input_size)
    graph.apply(keep)
    return count_macs(trial, input_size)


def _check_real_macs(model: nn.Module, keep: Plan, spec: PruneSpec, input_size: int, predicted: int) -> None:
    """Refuse a plan whose really pruned model misses the MAC target (before anything trains)."""
    from vggc.models import count_macs

    base, real = count_macs(model, input_size), pruned_macs(model, keep, input_size)
    if real > spec.target_macs * base:
        raise InputError(f"the plan for {spec.target_macs:.0%} of the baseline MACs has {real / 1e6:.2f} M MACs "
                         f"when really pruned ({real / base:.1%} of {base / 1e6:.2f} M; the analytic count said "
                         f"{predicted / 1e6:.2f} M): refusing it before any fine-tune")


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
