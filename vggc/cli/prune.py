"""``vggc prune``: L1-norm structured channel pruning (filters really removed) + fine-tune, or a
per-layer sensitivity scan with ``--scan``."""

from __future__ import annotations

import os

import click

from vggc.artifacts import check_out_path
from vggc.cli.common import data_option, preprocess_options, set_threads, teacher_model_options, threads_option
from vggc.compress.bn_recalib import DEFAULT_IMAGES
from vggc.compress.prune import STRATEGIES
from vggc.errors import InputError


def _fractions(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated fractions, e.g. 0.1,0.3,0.5,0.7,0.9") from None


@click.command("prune")
@click.argument("weights", type=click.Path(dir_okay=False, path_type=str))
@data_option()
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Output state_dict (.pt/.pth; manifest OUT.json beside it; OUT.state.pt, "
                   "OUT.step<k>.ckpt and OUT.settings.json hold resumable state until it finishes). With --scan: a directory "
                   "for sensitivity.csv, sensitivity.png and sensitivity.csv.json.")
@click.option("--scan", is_flag=True,
              help="Only scan per-layer sensitivity: top-1 with each fraction of one conv's lowest-L1 "
                   "filters removed (no fine-tune), on --scan-limit class-balanced TRAINING images.")
@click.option("--amount", type=float, default=None,
              help="Fraction of conv output channels to remove, in (0,1): per layer for uniform, over all "
                   "layers for global/sensitivity. Give this or --target-macs.")
@click.option("--target-macs", type=float, default=None,
              help="Keep at most this fraction of the source's MACs, in (0,1) (0.5: <= 50%); the strategy's "
                   "ratio/threshold/tolerance is searched to meet it. Give this or --amount.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="uniform", show_default=True,
              help="uniform: same fraction of every conv. global: L1 (divided by the layer's mean L1) ranked "
                   "across layers. sensitivity: prune less where a sensitivity scan shows accuracy drops most.")
@click.option("--sensitivity", "sensitivity", type=click.Path(exists=True, path_type=str), default=None,
              help="With --strategy sensitivity: a scan written by --scan (its directory or .json). "
                   "Default: run a scan first on --scan-limit training images.")
@click.option("--max-ratio", type=float, default=0.9, show_default=True,
              help="No conv loses more than this fraction of its filters.")
@click.option("--round-to", type=click.IntRange(1), default=8, show_default=True,
              help="Kept widths are multiples of this (SIMD-friendly; odd widths save FLOPs but little time).")
@click.option("--steps", type=click.IntRange(1), default=1, show_default=True,
              help="Iterative pruning: prune 1/K of the way, fine-tune (epochs split over steps), repeat.")
@click.option("--finetune-epochs", type=click.IntRange(0), default=10, show_default=True,
              help="Total fine-tune epochs after pruning (0: prune only).")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Fine-tune peak learning rate (OneCycle).")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Fine-tune batch size.")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="Fine-tune SGD weight decay.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True,
              help="Fine-tune precision; auto: fp16 AMP on CUDA, bf16 on CPUs with native bf16, else fp32.")
@click.option("--device", default="auto", show_default=True, help="Fine-tune device: auto, cpu or cuda[:N].")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Fine-tune on a class-balanced subset of this many training images.")
@click.option("--eval-limit", type=click.IntRange(1), default=None,
              help="Evaluate on a class-balanced subset of the test split (default: all of it).")
@click.option("--no-eval", is_flag=True, help="Skip test-set evaluations (source, before and after fine-tune).")
@click.option("--scan-limit", type=click.IntRange(1), default=1000, show_default=True,
              help="Training images (class-balanced) for the sensitivity scan.")
@click.option("--fractions", callback=_fractions, default=None, metavar="F1,F2,...",
              help="Scan fractions (default 0.1,0.2,...,0.9).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for subsets, fine-tune order and augmentation.")
@click.option("--kd-alpha", type=float, default=0.0, show_default=True,
              help="Fine-tune with knowledge distillation from the unpruned source model: loss = alpha x "
                   "Hinton KD on its temperature-softened logits + (1 - alpha) x cross-entropy. 0: plain "
                   "cross-entropy. Costs one forward pass of the unpruned model per batch.")
@click.option("--kd-temperature", type=float, default=4.0, show_default=True,
              help="With --kd-alpha: softmax temperature of the KD term (its loss is scaled by T^2).")
@click.option("--bn-recalib", type=click.IntRange(0), default=DEFAULT_IMAGES, show_default=True, metavar="N",
              help="After each prune step (before its fine-tune), re-estimate BatchNorm running statistics on N "
                   "class-balanced TRAINING images (forward passes only, no weight changes). 0: off.")
@click.option("--stop-drop", type=click.FloatRange(0, 100), default=None, metavar="PT",
              help="Early stop: after --stop-after fine-tune epochs evaluate on the test images and stop "
                   "the fine-tune when top-1 is more than PT points below the unpruned source (a target "
                   "already too far outside your budget). The model so far is saved; its manifest's "
                   "metrics.stopped_early says why.")
@click.option("--stop-after", type=click.IntRange(1), default=1, show_default=True,
              help="With --stop-drop: the fine-tune epochs after which top-1 is checked.")
@click.option("--curve", is_flag=True,
              help="Evaluate on the test images after every fine-tune epoch: the learning curve (top-1 per "
                   "epoch) in the manifest's steps[k].history. Costs one evaluation per epoch; the weights are "
                   "the same with or without it.")
@teacher_model_options
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from OUT.state.pt / OUT.step<k>.ckpt (refused when "
                   "OUT.settings.json is missing, unreadable or differs).")
@preprocess_options
@threads_option
def command(weights, data, out, scan, amount, target_macs, strategy, sensitivity, max_ratio, round_to, steps,
            finetune_epochs, lr, batch_size, weight_decay, precision, device, limit, eval_limit, no_eval,
            scan_limit, fractions, seed, kd_alpha, kd_temperature, bn_recalib, stop_drop, stop_after, curve,
            teacher_model, teacher_backend, resume, mean, std, input_size, threads):
    """Prune conv filters with the smallest L1 norm (Li et al. 2017), really removing them with their
    BatchNorm channels and the next layer's inputs, then fine-tune and save a smaller state_dict.

    \b
    vggc prune W.pt --data D --target-macs 0.5 --out W-p50.pt
    vggc prune W.pt --data D --amount 0.3 --strategy global --steps 3 --out W-g30.pt
    vggc prune W.pt --data D --scan --out scan/    (then --strategy sensitivity --sensitivity scan/)
    vggc prune W.pt --data D --target-macs 0.25 --kd-alpha 0.9 --out W-p25.pt   (fine-tune distilling from W)
    """
    from vggc.data import resolve_preprocess
    from vggc.progress import tqdm_progress
    from vggc.runtime import read_manifest

    set_threads(threads)
    pre = None
    if mean or std or input_size:
        from pathlib import Path

        meta = read_manifest(Path(weights))  # the source's manifest, else its <stem>.json sidecar
        base = meta.get("preprocess", meta)
        pre = resolve_preprocess(base, mean, std, input_size)

    if scan:
        if amount is not None or target_macs is not None:
            raise InputError("--scan measures sensitivity only; drop --amount/--target-macs")
        if out.endswith((".pt", ".pth", ".json", ".csv", ".png")) or os.path.isfile(out):
            raise InputError(f"--scan writes a directory; --out {out} looks like a file")
        from vggc.compress.sensitivity import DEFAULT_FRACTIONS, scan_file

        table, paths = scan_file(weights, data, out, scan_limit=scan_limit, fractions=fractions or DEFAULT_FRACTIONS,
                                 seed=seed, preprocess=pre, progress=tqdm_progress)
        click.echo(f"baseline top-1 {100 * table.baseline:.2f}% on {table.n} training images")
        click.echo("layer            width   " + " ".join(f"{int(100 * f):>5}%" for f in table.fractions))
        for i, name in enumerate(table.layers):
            accs = " ".join(f"{100 * a:6.1f}" for a in table.top1[i])
            click.echo(f"{name:<16} {table.widths[i]:>5}   {accs}")
        click.echo(f"saved {paths['csv']}, {paths['png']} (+ {paths['json'].name})")
        return

    from vggc.compress.distill import KDConfig
    from vggc.compress.prune import PruneSpec, prune_file
    from vggc.train import TrainConfig

    spec = PruneSpec(strategy=strategy, amount=amount, target_macs=target_macs, round_to=round_to,
                     max_ratio=max_ratio, steps=steps)
    check_out_path(out, (".pt", ".pth"))
    if sensitivity and strategy != "sensitivity":
        raise InputError("--sensitivity is only used with --strategy sensitivity")
    if not 0.0 <= kd_alpha <= 1.0:
        raise InputError(f"--kd-alpha must be between 0 and 1, got {kd_alpha}")
    if not kd_temperature > 0:
        raise InputError(f"--kd-temperature must be > 0, got {kd_temperature}")
    cfg = TrainConfig(epochs=max(1, finetune_epochs), batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      precision=precision, seed=seed, device=device)

    def on_epoch(rec):
        extras = " ".join(f"{k}={v}" for k, v in rec.items() if k not in ("epoch", "seconds", "images_per_s", "lr", "cpu_seconds"))
        click.echo(f"  fine-tune epoch {rec['epoch']}: {extras} lr={rec['lr']:.4g} "
                   f"({rec['seconds']:.0f} s, {rec['images_per_s']:.0f} img/s)", err=True)

    def on_step(rec):
        widths = " ".join(str(w) for w in rec["widths"].values())
        top = f", top-1 {100 * rec['top1']:.2f}%" if "top1" in rec else ""
        click.echo(f"step {rec['step']}/{steps}: widths {widths}; {rec['macs'] / 1e6:.1f} M MACs{top}", err=True)

    m = prune_file(weights, data, out, spec, train_cfg=cfg, finetune_epochs=finetune_epochs, limit=limit,
                   eval_limit=eval_limit, do_eval=not no_eval, sensitivity=sensitivity, scan_limit=scan_limit,
                   fractions=fractions, preprocess=pre, resume=resume, seed=seed, progress=tqdm_progress,
                   on_epoch=on_epoch, on_step=on_step,
                   kd=KDConfig(temperature=kd_temperature, alpha=kd_alpha) if kd_alpha > 0 else None,
                   bn_recalib=bn_recalib, teacher_model=teacher_model, teacher_backend=teacher_backend,
                   stop_drop_pt=stop_drop, stop_after=stop_after, curve=curve)
    click.echo(f"MACs {m['macs_before'] / 1e6:.1f} M -> {m['macs_after'] / 1e6:.1f} M ({100 * m['macs_ratio']:.1f}%), "
               f"params {m['params_before'] / 1e6:.2f} M -> {m['params_after'] / 1e6:.2f} M, "
               f"{100 * m['channels_removed_fraction']:.1f}% of conv channels removed")
    if "top1" in m:
        bn = f" (BatchNorm re-estimated on {bn_recalib} training images)" if bn_recalib else ""
        click.echo(f"test top-1 on {m['n']} images: source {100 * m['top1_source']:.2f}%, pruned "
                   f"{100 * m['top1_before_finetune']:.2f}% before fine-tune{bn}, {100 * m['top1']:.2f}% after")
    tm = m.get("teacher_model")
    if tm:
        click.echo(f"teacher {tm['name']} on {tm['backend']}: top-1 {100 * tm['top1']:.2f}%, agrees with the "
                   f"unpruned PyTorch model on {100 * tm['agreement']:.2f}% of {tm['n']} test images")
    if m.get("stopped_early"):
        click.echo(f"fine-tune {m['stopped_early']}")
    if finetune_epochs:
        ran = sum(len(st.get("history", [])) for st in m["steps"])
        click.echo(f"fine-tune: {ran} of {finetune_epochs} epoch(s) on {m['train_images']} images, "
                   f"{m['finetune_seconds']:.0f} s wall, {m['finetune_cpu_seconds']:.0f} CPU-s")
    click.echo(f"saved {out} (+ {out}.json)")
