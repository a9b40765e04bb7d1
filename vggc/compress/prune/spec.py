"""What to prune: :class:`PruneSpec` (strategy, amount or MAC target, rounding, caps, steps) and
the strategy names. Checked when built, so a bad setting is a one-line :class:`InputError`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vggc.errors import InputError

STRATEGIES = ("uniform", "global", "sensitivity")


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
