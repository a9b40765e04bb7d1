"""The pipeline's presets: the budgets of one run (``quick`` for ``make demo``, ``full`` for real numbers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Budgets for one pipeline run. ``bench_limit=None`` means all 10,000 test images."""

    name: str
    parity_limit: int | None
    calib_size: int
    prune_target_macs: float
    prune_finetune_epochs: int
    prune_limit: int | None
    distill_epochs: int
    distill_limit: int | None
    distill_width: float
    eval_limit: int | None
    bench_quick: bool
    bench_limit: int | None = None
    bench_batch: int = 64
    train_batch: int = 128
    prune_strategy: str = "uniform"  # sensitivity adds a cached per-layer scan step first
    distill_lr: float = 0.05  # OneCycle peak learning rate of the student
    scan_limit: int = 1000
    skip: tuple[str, ...] = ()  # steps left out of this preset (their rows say so); families match every target
    # the frontier: one pruned model per MAC target (default: prune_target_macs alone), each fine-tuned
    # with KD from the unpruned model (kd_alpha > 0) whose logits come from its INT8 OpenVINO IR
    prune_targets: tuple[float, ...] = ()
    kd_alpha: float = 0.9
    kd_temperature: float = 4.0
    # early stop: after stop_after epochs a target more than (budget + stop_margin_pt) points below
    # the unpruned model stops fine-tuning; None: off. One epoch in, the OneCycle schedule is still near
    # its peak learning rate and a model recovers several points in the remaining epochs, so the margin
    # is wide: only a target with no chance of reaching the budget stops.
    stop_margin_pt: float | None = 10.0
    stop_after: int = 1
    max_fp32_layers: int = 4  # accuracy-aware INT8: at most this many layers kept FP32 per variant
    # the training budget (vggc.pipeline.allocate): None trains every variant for the epochs above; with a
    # budget those epochs are each variant's pilot, and a variant still rising towards the accuracy budget
    # is retrained for up to max_finetune_epochs / max_distill_epochs within its share of the time
    time_budget_s: float | None = None
    max_finetune_epochs: int = 30
    max_distill_epochs: int = 40

    def max_epochs(self, step: str) -> int:
        """Return the most epochs the allocation may give trained step ``step`` (``distill`` or ``prune<T>``)."""
        return self.max_distill_epochs if step == "distill" else self.max_finetune_epochs

    def targets(self) -> tuple[float, ...]:
        """Return the MAC targets of the frontier, largest first."""
        return tuple(sorted(self.prune_targets or (self.prune_target_macs,), reverse=True))


PRESETS = {
    # ~10 minutes on a 2-core CPU: every stage runs, training stages on small budgets (their
    # accuracy is labelled as such; use --preset full for real numbers).
    # Its training budgets are spent where they show the method rather than chance: BatchNorm
    # statistics re-estimated after pruning (no training) plus 1 epoch on 5,000 images for the
    # pruned model; 2 epochs on 5,000 images for the student (~85 % and ~37 % on the quick subset).
    "quick": Preset("quick", parity_limit=256, calib_size=128, prune_target_macs=0.5, prune_finetune_epochs=1,
                    prune_limit=5000, distill_epochs=2, distill_limit=5000, distill_width=1.0, eval_limit=500,
                    distill_lr=0.1, stop_margin_pt=None,  # 1 epoch: nothing to stop early
                    bench_quick=True, bench_limit=1000,
                    # each torch.compile'd INT8 program costs ~1 min of compile time in the bench
                    skip=("int8_torch_dynamic", "pruned_int8_torch_static", "pruned_int8_ov_static",
                          "student_int8_torch_static")),
    # Real budgets, sized for a 2-core CPU: a frontier of three MAC targets (50 %, 25 %, 12.5 %), each
    # fine-tuned 5 epochs with KD from the INT8 teacher, INT8 of each on three backends, distillation,
    # bench on all 10,000 test images (see docs/full-run-amx for the step times measured); a CUDA
    # machine trains the same steps in minutes.
    # Every training step checkpoints each epoch (and every 10 minutes within one), so a killed run
    # resumes where it stopped.
    "full": Preset("full", parity_limit=None, calib_size=1000, prune_target_macs=0.5, prune_finetune_epochs=5,
                   prune_limit=None, distill_epochs=5, distill_limit=None, distill_width=1.0, eval_limit=None,
                   bench_quick=False, prune_strategy="sensitivity", scan_limit=1000,
                   prune_targets=(0.5, 0.25, 0.125), time_budget_s=6 * 3600.0),
}
