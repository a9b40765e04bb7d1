"""``vggc distill``: knowledge distillation from a trained teacher into a CIFAR MobileNetV2."""

from __future__ import annotations

import os

import click

from vggc.artifacts import check_out_path
from vggc.cli.common import data_option, download_option, set_threads, teacher_model_options, threads_option
from vggc.train import PRECISIONS, SCHEDULES, TrainConfig


def _threads_per_process(threads: int | None) -> int | None:
    """Under torchrun, split the cores between the local processes unless --threads says otherwise."""
    if threads is not None:
        return threads
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    return max(1, (os.cpu_count() or 1) // local) if local > 1 else None


@click.command("distill")
@click.argument("teacher", type=click.Path(dir_okay=False, path_type=str))
@data_option()
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Output student state_dict (.pt). A manifest OUT.json is written beside it; OUT.ckpt "
                   "(+ OUT.ckpt.json) hold the checkpoint (written every epoch and every 10 minutes within "
                   "one) until training finishes.")
@click.option("--student", type=click.Choice(["mobilenet_v2"]), default="mobilenet_v2", show_default=True,
              help="Student architecture: a CIFAR MobileNetV2 (stem and first downsampling stage at stride 1; "
                   "~88 M MACs at 32x32 and width 1.0).")
@click.option("--width-mult", type=float, default=1.0, show_default=True,
              help="Student width multiplier (torchvision's; 0.5 -> ~28 M MACs, 0.25 -> ~9.5 M).")
@click.option("--temperature", type=float, default=4.0, show_default=True,
              help="KD temperature T: both logit sets are divided by T before the softmax; the KD term is "
                   "scaled by T^2.")
@click.option("--alpha", type=float, default=0.9, show_default=True,
              help="Weight of the KD term; 1-alpha weights the cross-entropy on labels. 0 trains the same "
                   "student without the teacher (the baseline to compare with).")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True,
              help="Images per step (per process under torchrun).")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate (OneCycle max).")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="SGD weight decay (not on BN/bias).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True,
              help="Label smoothing of the cross-entropy term (the KD term uses the teacher's soft targets).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="onecycle", show_default=True,
              help="Learning-rate schedule.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: fp16 AMP on CUDA, bf16 autocast on CPUs with native bf16 (AMX/AVX512-BF16), else fp32. "
                   "Teacher and student both run in it.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Train on a class-balanced subset of this many training images.")
@click.option("--eval-limit", type=click.IntRange(1), default=None,
              help="Evaluate student and teacher on a class-balanced subset of the test split (default: all).")
@click.option("--no-eval", is_flag=True, help="Skip the test-set evaluation at the end.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, subset, order and augmentation.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu or cuda[:N]. Under torchrun with CUDA each process takes cuda:<LOCAL_RANK>.")
@click.option("--curve", is_flag=True,
              help="Evaluate the student on the test images after every epoch: the learning curve (top-1 per "
                   "epoch) in the manifest's train.history. Costs one evaluation per epoch; same weights.")
@click.option("--resume", is_flag=True, help="Continue from OUT.ckpt left by an interrupted run with the same options.")
@teacher_model_options
@download_option
@threads_option
def command(teacher, data, out, student, width_mult, temperature, alpha, epochs, batch_size, lr, weight_decay,
            label_smoothing, schedule, precision, limit, eval_limit, no_eval, seed, device, curve, resume, teacher_model,
            teacher_backend, download, threads):
    """Distil the TEACHER state_dict (e.g. the VGG16) into a CIFAR MobileNetV2 student.

    Loss: alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * cross-entropy, trained by the
    same loop as `vggc train` (OneCycle SGD, crop + flip). The student uses the teacher's
    normalisation (from its manifest or sidecar JSON). Runs data-parallel under
    `torchrun --nproc_per_node=N -m vggc.cli distill ...` (gloo on CPU, NCCL on CUDA); only rank 0
    writes.
    """
    from vggc.compress.distill import KDConfig, distill, distributed_session
    from vggc.progress import no_progress, tqdm_progress

    check_out_path(out, (".pt", ".pth"))
    set_threads(_threads_per_process(threads))
    kd = KDConfig(temperature=temperature, alpha=alpha)
    with distributed_session(device) as (rank, world, dev):
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          label_smoothing=label_smoothing, schedule=schedule, precision=precision, seed=seed,
                          device=dev)
        if world > 1 and rank == 0:
            click.echo(f"distributed: {world} processes ({'nccl' if dev.startswith('cuda') else 'gloo'})", err=True)

        def on_epoch(rec):
            if rank != 0:
                return
            extras = " ".join(f"{k}={v}" for k, v in rec.items()
                              if k not in ("epoch", "seconds", "images_per_s", "lr", "cpu_seconds"))
            click.echo(f"epoch {rec['epoch']}/{epochs}: {extras} lr={rec['lr']:.4g} "
                       f"({rec['seconds']:.0f} s, {rec['images_per_s']:.0f} img/s)", err=True)

        metrics = distill(teacher, data, out, cfg, kd, student=student, width_mult=width_mult, limit=limit,
                          eval_limit=eval_limit, do_eval=not no_eval, resume=resume, download=download,
                          eval_threads=(threads or os.cpu_count()) if world > 1 else None,
                          teacher_model=teacher_model, teacher_backend=teacher_backend,
                          progress=tqdm_progress if rank == 0 else no_progress, on_epoch=on_epoch, curve=curve)
    if rank != 0:
        return
    tr = metrics["train"]
    click.echo(f"distilled {tr['epochs_run']} epoch(s) on {metrics['train_images']} images in {tr['seconds']:.0f} s "
               f"({tr['device']}, {tr['precision']}, {world} process{'es' if world > 1 else ''})")
    if "top1" in metrics:
        click.echo(f"student top-1 {100 * metrics['top1']:.2f}%, teacher top-1 {100 * metrics['teacher_top1']:.2f}%, "
                   f"agreement {100 * metrics['agreement']:.2f}% on {metrics['n']} test images")
        tm = metrics.get("teacher_model")
        if tm:
            click.echo(f"teacher model {teacher_model}: top-1 {100 * tm['top1']:.2f}%, agrees with the PyTorch "
                       f"teacher on {100 * tm['agreement']:.2f}% of {tm['n']} test images")
    click.echo(f"saved {out} (+ {out}.json)")
