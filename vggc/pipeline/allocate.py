"""Where the training budget goes: how many epochs each trained variant of a timed pipeline gets.

A pipeline with a time budget (``vggc pipeline --time-budget``, 6 h for the ``full`` preset) trains
every variant (each pruned target, the distilled student) first for its preset's *pilot* epochs with
a learning curve (top-1 after every epoch). :func:`allocate` then decides from where the variant
stands:

* within the accuracy budget already -> finished, no more epochs;
* stopped early (``--stop-drop``: hopelessly far below) -> no more;
* its curve flat over the pilot's second half -> no more (more of the same schedule will not move it);
* still rising -> the projection below says how many epochs of one longer schedule should reach the
  budget; the variant is retrained from its start with twice that (the projection is rough), capped
  by ``max_epochs`` and by what its share of the time budget still affords at the pilot's median
  seconds per epoch. A projection more than ``CLOSE_PT`` short of the budget even at that cap -> no more.

Projection: a OneCycle run of ``n`` epochs ends at ``top1(E) + DISCOUNT * g * log2(n / E)``, where
``E`` is the pilot's length and ``g`` its top-1 gain over its second half (``top1(E) - top1(E/2)``).
It is a heuristic, not a fit: it says "each doubling of the schedule is worth about half what the
pilot's second half gained", and the decision and its numbers are recorded (``Allocation.why``).

The longer run restarts from the pruned (or fresh) model rather than continuing the pilot, so the
shipped file is one plain ``vggc prune`` / ``vggc distill`` command with ``--finetune-epochs`` /
``--epochs N``: what the report's rebuild commands say.

Time: :func:`time_shares` splits the budget minus a reserve for the untrained steps (exports,
quantization, bench) between the trained variants by weight; each variant's pilot counts against
its own share, and a share a variant does not use is not handed on (the run ends earlier instead),
so one variant's decision never depends on another's timing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

DISCOUNT = 0.5  # each doubling of the schedule is worth this share of the pilot's second-half gain
FLAT_PT = 0.1  # a pilot gaining less than this over its second half is flat
CLOSE_PT = 0.5  # a projection this close to the budget at the affordable cap is still tried
# the untrained steps of the full preset (exports, INT8, scan, bench): ~31 min measured on the AMX
# machine (docs/full-run-amx), plus half again for a slower host
RESERVE_S = 2700.0
# the student's share relative to one pruned target's: an epoch of it costs ~7.7x one of the 12.5 %
# target (345 vs 45 s on the AMX machine, docs/budget-amx) and it trains from scratch, so it needs
# more of them; 6 leaves each target ~35 min of a 6 h budget (the 12.5 % target used ~25 min of
# training for 24 epochs) and the student 3.5 h (~31 epochs at 345 s)
STUDENT_WEIGHT = 6.0


@dataclass(frozen=True)
class Allocation:
    """The decision for one trained variant: ``epochs`` of its final run (the pilot's own count
    when it gets no more), ``why`` in one line, and the numbers behind it."""

    epochs: int
    pilot_epochs: int
    why: str
    extended: bool = False
    pilot_top1: float | None = None
    floor_top1: float | None = None
    projected_top1: float | None = None
    seconds_per_epoch: float | None = None
    share_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_duration(text: str | float | int | None) -> float | None:
    """Return seconds from ``"6h"``, ``"90m"``, ``"45s"``, ``"1.5h"`` or a bare number of seconds;
    ``None``/``"none"``/``"off"`` -> ``None`` (no budget). Raises ``ValueError`` on anything else."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        t = text.strip().lower()
        if t in ("none", "off", ""):
            return None
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0}.get(t[-1])
        try:
            value = float(t[:-1]) * scale if scale else float(t)
        except ValueError:
            raise ValueError(f"time budget {text!r}: use e.g. 6h, 90m, 45s or seconds") from None
    if not value > 0 or math.isinf(value):
        raise ValueError(f"time budget {text!r} must be a positive duration")
    return value


def time_shares(budget_s: float, targets: list[str], student: str | None, *, reserve_s: float = RESERVE_S,
                student_weight: float = STUDENT_WEIGHT) -> dict[str, float]:
    """Return ``{step name: seconds of training it may use}``: ``budget_s - reserve_s`` split between
    ``targets`` (weight 1 each) and ``student`` (``student_weight``). Raises ``ValueError`` when the
    reserve leaves nothing to train with."""
    left = budget_s - reserve_s
    if left <= 0:
        raise ValueError(f"a time budget of {budget_s / 60:.0f} min leaves nothing for training after the "
                         f"{reserve_s / 60:.0f} min the other steps need")
    weights = {t: 1.0 for t in targets}
    if student:
        weights[student] = student_weight
    total = sum(weights.values()) or 1.0
    return {name: left * w / total for name, w in weights.items()}


def curve_of(history: list[dict]) -> list[float]:
    """Return the top-1 of each epoch of ``history`` that has one, in epoch order."""
    return [float(h["top1"]) for h in history if h.get("top1") is not None]


def epoch_wall(record: dict) -> float:
    """Return the wall seconds of one epoch record: its training plus its evaluation."""
    return float(record.get("seconds", 0.0)) + float(record.get("eval_seconds", 0.0))


def seconds_per_epoch(history: list[dict]) -> float | None:
    """Return the median wall seconds of an epoch (training + its evaluation) of ``history``: the
    median, so one epoch slowed by another process on the machine does not decide the allocation."""
    secs = [epoch_wall(h) for h in history]
    return statistics.median(secs) if secs else None


def project(top1: list[float], epochs: int) -> float:
    """Return the projected final top-1 of one ``epochs``-long schedule from a pilot's curve ``top1``
    (see the module docstring)."""
    e = len(top1)
    gain = top1[-1] - top1[max(0, math.ceil(e / 2) - 1)]
    return top1[-1] + DISCOUNT * max(0.0, gain) * math.log2(max(epochs, e) / e)


def allocate(history: list[dict], floor: float, *, share_s: float, max_epochs: int,
             stopped_early: str | None = None) -> Allocation:
    """Return the :class:`Allocation` of a variant whose pilot trained ``history`` (epoch records with
    ``top1``), given the accuracy ``floor`` (a fraction: the budget's lowest acceptable top-1), its
    time ``share_s`` (seconds; the pilot counts against it) and the most epochs one run may have."""
    top1, pilot = curve_of(history), len(history)
    spe = seconds_per_epoch(history)
    base = {"pilot_epochs": pilot, "floor_top1": floor, "seconds_per_epoch": spe, "share_s": share_s}
    if stopped_early:
        return Allocation(pilot, why=f"stopped early: {stopped_early}", **base)
    if not top1 or len(top1) != pilot:
        return Allocation(pilot, why="no learning curve (top-1 per epoch): nothing to project from", **base)
    last = top1[-1]
    base["pilot_top1"] = last
    if last >= floor:
        return Allocation(pilot, why=f"within the budget after {pilot} epochs ({100 * last:.2f}% >= "
                                     f"{100 * floor:.2f}%): finished", **base)
    half = top1[max(0, math.ceil(pilot / 2) - 1)]
    if pilot < 2 or last - half < FLAT_PT / 100:
        return Allocation(pilot, why=f"{100 * last:.2f}% < {100 * floor:.2f}% and flat ({100 * (last - half):+.2f} pt "
                                     f"over the pilot's second half): no more epochs", **base)
    afford = int((share_s - pilot * spe) // spe) if spe else 0
    cap = min(max_epochs, afford)
    if cap <= pilot:
        return Allocation(pilot, why=f"{100 * last:.2f}% < {100 * floor:.2f}%, rising, but its time share "
                                     f"({share_s / 60:.0f} min at {spe:.0f} s/epoch) affords no longer run", **base)
    need = next((n for n in range(pilot + 1, cap + 1) if project(top1, n) >= floor), None)
    if need is None and project(top1, cap) < floor - CLOSE_PT / 100:
        return Allocation(pilot, projected_top1=project(top1, cap),
                          why=f"{100 * last:.2f}% < {100 * floor:.2f}%; projected {100 * project(top1, cap):.2f}% "
                              f"at {cap} epochs, more than {CLOSE_PT} pt short: no more epochs", **base)
    epochs = cap if need is None else min(cap, 2 * need)
    proj = project(top1, epochs)
    return Allocation(epochs, extended=True, projected_top1=proj,
                      why=f"{100 * last:.2f}% < {100 * floor:.2f}% after {pilot} epochs, still rising "
                          f"({100 * (last - half):+.2f} pt over the pilot's second half): projected "
                          f"{100 * proj:.2f}% at {epochs} epochs "
                          + (f"(2x the {need} projected to reach the budget" if need else "(the most it affords")
                          + f"; cap {cap} = min(max {max_epochs}, {afford} its {share_s / 60:.0f}-min share "
                            f"affords at {spe:.0f} s/epoch))", **base)
