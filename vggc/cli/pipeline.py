"""``vggc pipeline``: every stage on one state_dict, cached and resumable, ending in the comparison table."""

from __future__ import annotations

import os
from pathlib import Path

import click

from vggc.cli.bench import max_drop_option
from vggc.cli.common import set_threads, threads_option
from vggc.errors import InputError

STEP_NAMES = ("source_eval, onnx_fp32, onnx_fp16, int8_ort_dynamic, int8_ort_static, int8_torch_dynamic, "
              "int8_torch_static, int8_ov_static, prune_scan, and per MAC target T (50, 25, 12_5, ...): pruneT, "
              "prunedT_onnx, prunedT_int8_ort_static, prunedT_int8_torch_static, prunedT_int8_ov_static; distill, "
              "student_onnx, student_int8_ort_static, student_int8_torch_static, student_int8_ov_static, trt_fp16, "
              "trt_int8 (prune, pruned_onnx, ... without T: every target's)")


def _targets(ctx, param, value):
    """Click callback: ``"0.5,0.25"`` -> ``(0.5, 0.25)`` (fractions of the unpruned model's MACs)."""
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("expected comma-separated fractions, e.g. 0.5,0.25,0.125") from None
    if not vals or any(not 0.0 < v < 1.0 for v in vals) or len(set(vals)) != len(vals):
        raise click.BadParameter("expected distinct fractions between 0 and 1, e.g. 0.5,0.25,0.125")
    return vals


def default_inputs(weights: str | None, data: str | None) -> tuple[str, str]:
    """Return (weights, data): the arguments, else VGGC_WEIGHTS / VGGC_DATA, else ../shared's."""
    weights = weights or os.environ.get("VGGC_WEIGHTS") or "../shared/models/vgg16_bn_cifar10.pt"
    data = data or os.environ.get("VGGC_DATA") or "../shared/data/cifar10-jpeg"
    if not Path(weights).is_file():
        raise InputError(f"{weights}: no such weights file (pass WEIGHTS or set VGGC_WEIGHTS)")
    return weights, data


@click.command("pipeline")
@click.argument("weights", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", default=None, type=click.Path(file_okay=False, path_type=str),
              help="CIFAR-10 directory (cifar-10-batches-py or ImageFolder train/ + test/). "
                   "Default: $VGGC_DATA, else ../shared/data/cifar10-jpeg.")
@click.option("--preset", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: about 10 minutes on a 2-core CPU, training stages on tiny budgets and the bench on "
                   "2,000 test images; full: real fine-tune/distillation budgets and all 10,000 test images.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Run directory (default artifacts/<weights stem>-<preset>). Finished steps found there are "
                   "reused when their inputs and settings are unchanged.")
@click.option("--only", default=None,
              help=f"Comma-separated steps to run (plus what they need), then the bench. Steps: {STEP_NAMES}.")
@click.option("--force", is_flag=True, help="Rerun every step even when a cached result matches.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every subset, calibration and training.")
@click.option("--prune-targets", callback=_targets, default=None, metavar="F1,F2,...",
              help="MAC targets of the pruning frontier, as fractions of the unpruned model's MACs (each is "
                   "pruned from one sensitivity scan, fine-tuned with KD and quantized on every INT8 backend). "
                   "Default: the preset's (quick 0.5; full 0.5,0.25,0.125).")
@click.option("--time-budget", default="preset", metavar="DURATION",
              help="Training budget of the whole run, e.g. 6h, 90m or seconds ('off': none). With a budget each "
                   "trained variant (pruned target, student) first trains its preset's epochs as a pilot with a "
                   "learning curve; one still rising towards the accuracy budget is retrained longer (up to 30 "
                   "fine-tune / 40 distillation epochs) within its share of the time, one within the budget or "
                   "flat gets no more. The step log and report say how many epochs each got and why. "
                   "Default: the preset's (full 6h, quick off).")
@threads_option
@max_drop_option
def command(weights, data, preset, out_dir, only, force, seed, prune_targets, time_budget, threads, max_drop):
    """Run every stage on WEIGHTS and print the comparison table.

    Stages: ONNX FP32/FP16 export, dynamic and static INT8 (ONNX Runtime and torchao PT2E), L1 pruning +
    fine-tune (and pruned INT8), distillation into MobileNetV2, TensorRT engines where TensorRT and a GPU
    exist, then `vggc bench` over everything. A step that fails is reported in the table and the rest go on;
    Ctrl-C or a kill leaves no complete-looking artifact and the next run resumes. WEIGHTS defaults to
    $VGGC_WEIGHTS, else ../shared/models/vgg16_bn_cifar10.pt.
    """
    from vggc.bench.answer import answer, screen_lines
    from vggc.bench.report import screen_table
    from vggc.pipeline import run_pipeline
    from vggc.progress import tqdm_progress

    n_threads = set_threads(threads)
    weights, data = default_inputs(weights, data)
    summary = run_pipeline(weights, data, preset=preset, out_dir=out_dir, seed=seed, force=force, threads=n_threads,
                           only=[s.strip() for s in only.split(",") if s.strip()] if only else None,
                           progress=tqdm_progress, log=lambda m: click.echo(m, err=True), max_drop_pt=max_drop,
                           prune_targets=prune_targets, time_budget=time_budget)
    click.echo("")
    click.echo("step                      status       seconds")
    for s in summary["steps"]:
        why = "" if s["status"] == "cached" else s.get("why", "")
        click.echo(f"{s['name']:<25} {s['status'][:70]:<12} {s['seconds']:>7.1f}  {why}".rstrip())
    click.echo(f"step work: {summary['step_seconds']:.0f} s, wall: {summary['wall_seconds']:.0f} s")
    click.echo("")
    if summary["rows"]:
        click.echo(screen_table(summary["rows"], {"max_drop_pt": max_drop}))
    click.echo(f"report: {summary['report']}")
    if summary["rows"]:
        click.echo("")
        run_out = summary.get("out_as_given") or summary.get("out")  # the $OUT of the rebuild commands
        click.echo("\n".join(screen_lines(answer(summary["rows"], max_drop, run_out))))
