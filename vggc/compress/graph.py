"""Torch-Pruning dependency groups, what-if copies and the analytic MAC model: the pruning
machinery that :mod:`vggc.compress.prune` (plans, fine-tune, file job) and
:mod:`vggc.compress.sensitivity` (per-layer scan) both use, so neither imports the other.

Each prunable unit is a Torch-Pruning *dependency group* rooted at a ``Conv2d``: the conv's output
filters together with everything coupled to them (its BatchNorm channels, the next conv's input
channels, the first classifier ``Linear``'s input features, and for residual nets every other
layer sharing those channels). :class:`PruningGraph` names the groups, ranks filters by L1 norm
and removes them in place; :func:`trial_copy` gives a deep copy to prune without touching the
original; :class:`MacModel` counts the MACs of any plan without pruning anything.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vggc.errors import InputError, VggcError

Plan = dict  # conv (group root) name -> output channels to keep


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


def trial_copy(model: nn.Module, input_size: int = 32, in_channels: int = 3) -> tuple[nn.Module, PruningGraph]:
    """Return ``(a deep copy of model, its PruningGraph)``: something to prune without touching ``model``.

    What-if pruning (a sensitivity trial, a probe of a plan) works on the copy, so the original's
    parameters, buffers and module structure are never edited and need no restoring.
    """
    trial = copy.deepcopy(model)
    return trial, PruningGraph(trial, input_size, in_channels)


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
