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

Layout: :mod:`~vggc.compress.graph` (dependency groups, what-if copies, analytic MACs; shared
with :mod:`vggc.compress.sensitivity`), :mod:`.spec` (:class:`PruneSpec`), :mod:`.plan` (plans
and their search), :mod:`.finetune` (resumable prune + fine-tune), :mod:`.job` (the file job).
This package re-exports their public names.
"""

from vggc.compress.graph import MacModel, Plan, PruningGraph, conv_widths, output_layer, trial_copy
from vggc.compress.prune.finetune import (
    PruneRun,
    epochs_per_step,
    prune_and_finetune,
    remove_work_files,
    settings_file,
    work_files,
)
from vggc.compress.prune.job import prune_file
from vggc.compress.prune.plan import (
    PlanResult,
    check_reachable,
    global_plan,
    make_plan,
    min_width,
    prune_model,
    pruned_macs,
    removed_fraction,
    round_width,
    sensitivity_plan,
    step_plan,
    uniform_plan,
)
from vggc.compress.prune.spec import STRATEGIES, PruneSpec

__all__ = ["STRATEGIES", "MacModel", "Plan", "PlanResult", "PruneRun", "PruneSpec", "PruningGraph",
           "check_reachable", "conv_widths", "epochs_per_step", "global_plan", "make_plan", "min_width",
           "output_layer", "prune_and_finetune", "prune_file", "prune_model", "pruned_macs", "remove_work_files",
           "removed_fraction", "round_width", "sensitivity_plan", "settings_file", "step_plan", "trial_copy",
           "uniform_plan", "work_files"]
