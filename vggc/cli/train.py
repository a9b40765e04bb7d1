"""``vggc train``: train a VGG16(-BN) CIFAR baseline, or fine-tune from an ImageNet VGG16."""

from __future__ import annotations

import click

from vggc.artifacts import check_out_path
from vggc.cli.common import (
    data_option,
    download_option,
    preprocess_options,
    set_threads,
    threads_option,
)
from vggc.train import ARCHS, PRECISIONS, SCHEDULES, TrainConfig, train_baseline


@click.command("train")
@data_option()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Output state_dict (.pt). A manifest OUT.json is written beside it; OUT.ckpt holds the "
                   "checkpoint (written every epoch and every 10 minutes within one) until training finishes.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Images per step.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate (OneCycle max).")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="SGD weight decay (not on BN/bias).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True, help="Cross-entropy label smoothing.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="onecycle", show_default=True,
              help="Learning-rate schedule.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: fp16 AMP on CUDA, bf16 autocast on CPUs with native bf16 (AMX/AVX512-BF16), else fp32.")
@click.option("--arch", type=click.Choice(list(ARCHS)), default="vgg16_bn", show_default=True,
              help="Architecture trained from scratch (ignored with --init).")
@click.option("--init", type=click.Path(dir_okay=False, exists=True, path_type=str), default=None,
              help="Start from this VGG16 state_dict (e.g. torchvision's ImageNet weights); its last layer is "
                   "replaced for CIFAR-10's classes.")
@click.option("--freeze", "freeze_what", type=click.Choice(["none", "features"]), default="none", show_default=True,
              help="With --init: train only the classifier (features) or everything (none).")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Train on a class-balanced subset of this many training images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, order and augmentation.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--resume", is_flag=True, help="Continue from OUT.ckpt left by an interrupted run.")
@click.option("--eval-limit", type=click.IntRange(1), default=None,
              help="Evaluate on a class-balanced subset of the test split (default: all of it).")
@click.option("--no-eval", is_flag=True, help="Skip the test-set evaluation at the end.")
@preprocess_options
@download_option
@threads_option
def command(data, out, epochs, batch_size, lr, weight_decay, label_smoothing, schedule, precision, arch, init,
            freeze_what, limit, seed, device, resume, eval_limit, no_eval, mean, std, input_size, download, threads):
    """Train a VGG16-BN CIFAR-10 baseline (or fine-tune one from --init) and save its state_dict."""
    from vggc.progress import tqdm_progress

    check_out_path(out, (".pt", ".pth"))
    set_threads(threads)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      label_smoothing=label_smoothing, schedule=schedule, precision=precision, seed=seed,
                      device=device)

    def on_epoch(rec):
        extras = " ".join(f"{k}={v}" for k, v in rec.items() if k not in ("epoch", "seconds", "images_per_s", "lr", "cpu_seconds"))
        click.echo(f"epoch {rec['epoch']}/{epochs}: {extras} lr={rec['lr']:.4g} "
                   f"({rec['seconds']:.0f} s, {rec['images_per_s']:.0f} img/s)", err=True)

    metrics = train_baseline(data, out, cfg, arch=arch, init=init, freeze_what=freeze_what, limit=limit, mean=mean,
                             std=std, input_size=input_size, resume=resume, eval_limit=eval_limit,
                             do_eval=not no_eval, download=download, progress=tqdm_progress, on_epoch=on_epoch)
    tr = metrics["train"]
    click.echo(f"trained {tr['epochs_run']} epoch(s) on {metrics['train_images']} images in {tr['seconds']:.0f} s "
               f"({tr['device']}, {tr['precision']})")
    if "top1" in metrics:
        click.echo(f"test top-1 {100 * metrics['top1']:.2f}% on {metrics['n']} images")
    click.echo(f"saved {out} (+ {out}.json)")
