"""Knowledge distillation (Hinton et al., 2015) from a trained teacher into a CIFAR MobileNetV2.

The loss is a ``loss_fn`` for :func:`vggc.train.fit` (the project's one training loop), so
distillation gets the trainer's schedule, augmentation, checkpoint/resume and DDP for free::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

The ``T^2`` factor keeps the soft-target gradients on the same scale as the hard-label ones when
``T`` changes. The teacher is frozen (no parameter requires grad), kept in eval mode and run under
``torch.no_grad``; it sees the same augmented batch as the student. It runs inside the trainer's
autocast, so it follows :func:`vggc.train.resolve_precision` (bf16 only on CPUs with native bf16,
fp32 elsewhere, fp16 AMP on CUDA). ``alpha=0`` skips the teacher entirely: the same student trained
on the same budget with cross-entropy alone, the comparison KD has to beat.

Teacher logits are not cached: with random-crop + flip augmentation every epoch shows the teacher
a different view of each image, and caching logits of un-augmented images would distill the wrong
targets (caching per augmentation draw would need the whole epoch's views stored).

Distributed: :func:`distributed_session` initialises a process group when ``WORLD_SIZE`` > 1 (as
set by ``torchrun``; gloo on CPU, NCCL on CUDA), the trainer shards each epoch, and only rank 0
evaluates and writes the output, its manifest and the checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vggc.artifacts import save_state_dict, sha256_file, write_manifest
from vggc.data import Preprocess, limit_split, load_split
from vggc.errors import InputError, StaleCheckpointError
from vggc.evaluate import epoch_curve, evaluate, model_top1
from vggc.progress import Progress, no_progress
from vggc.resume import check_settings, run_key, write_settings
from vggc.train import TrainConfig, fit, load_checkpoint

STUDENTS = ("mobilenet_v2",)


@dataclass
class KDConfig:
    """Distillation settings, recorded in the manifest. ``alpha`` weights the KD term, ``1 - alpha``
    the cross-entropy; ``temperature`` softens both distributions of the KD term."""

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self):
        if not self.temperature > 0:
            raise InputError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"--alpha must be between 0 and 1, got {self.alpha}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                      kd: KDConfig, label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Return ``(alpha * kd + (1 - alpha) * ce, parts)``; parts has ``ce`` and, when the teacher's
    logits are given, ``kd`` and top-1 ``agree`` (fraction of the batch where both argmaxes match)."""
    ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    if teacher_logits is None:
        if kd.alpha != 0:
            raise InputError("teacher logits are needed when alpha > 0")
        return ce, {"ce": ce.detach()}
    kdl = kd_loss(student_logits, teacher_logits, kd.temperature)
    loss = kd.alpha * kdl + (1.0 - kd.alpha) * ce
    agree = (student_logits.detach().argmax(1) == teacher_logits.argmax(1)).float().mean()
    return loss, {"kd": kdl.detach(), "ce": ce.detach(), "agree": agree}


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Make ``teacher`` a constant: no parameter requires grad, eval mode; return it."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


class DistillLoss:
    """``loss_fn(model, x, y) -> (loss, parts)`` for :func:`vggc.train.fit` with a frozen teacher.

    ``teacher``: an ``nn.Module`` or a :class:`vggc.compress.teacher.FileTeacher` (the teacher's
    forward pass from a compiled file, e.g. its INT8 OpenVINO IR). A module teacher moves to the
    batch's device (channels_last) on first use and is re-put in eval mode on every call, so nothing the trainer does to the student can switch its BatchNorm to
    batch statistics.
    """

    def __init__(self, teacher: nn.Module, kd: KDConfig, label_smoothing: float = 0.0):
        # a FileTeacher (vggc.compress.teacher: a compiled model file) is a plain callable
        self.teacher = freeze_teacher(teacher) if isinstance(teacher, nn.Module) else teacher
        self.kd = kd
        self.label_smoothing = label_smoothing
        self._device: torch.device | None = None

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.teacher, nn.Module):
            return self.teacher(x)
        if self._device != x.device:
            self.teacher.to(x.device, memory_format=torch.channels_last)
            self._device = x.device
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            return self.teacher(x)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        t = self.teacher_logits(x) if self.kd.alpha > 0 else None
        return distillation_loss(logits, t, y, self.kd, self.label_smoothing)


# ----------------------------------------------------------------------------- distributed

def _world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def dist_rank() -> tuple[int, int]:
    """Return ``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def distributed_device(device: str) -> str:
    """Return the device this process trains on: under ``torchrun`` with CUDA, ``cuda:<LOCAL_RANK>``."""
    if _world_from_env() > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextlib.contextmanager
def distributed_session(device: str = "auto", timeout_s: float = 1800) -> Iterator[tuple[int, int, str]]:
    """Initialise ``torch.distributed`` when ``WORLD_SIZE`` > 1 (``torchrun``) and tear it down after.

    Yields ``(rank, world_size, device)``; ``device`` is ``cuda:<LOCAL_RANK>`` under torchrun with
    CUDA (backend NCCL), else the given one (backend gloo). A single process yields ``(0, 1, device)``
    and touches nothing. A group that was already initialised is used and left alone.
    """
    world = _world_from_env()
    if world <= 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        rank, w = dist_rank()
        yield rank, w, distributed_device(device)
        return
    if not torch.distributed.is_available():
        raise InputError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dev = distributed_device(device)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(dev))
    torch.distributed.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
    try:
        yield torch.distributed.get_rank(), torch.distributed.get_world_size(), dev
    finally:
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- the run

def build_student(student: str, width_mult: float, num_classes: int, seed: int) -> nn.Module:
    """Return a freshly initialised student (seeded)."""
    from vggc.models import mobilenet_v2_cifar

    if student not in STUDENTS:
        raise InputError(f"--student {student!r}: supported students are {', '.join(STUDENTS)}")
    torch.manual_seed(seed)
    return mobilenet_v2_cifar(width_mult, num_classes)


def teacher_preprocess(teacher_path: str | Path) -> Preprocess:
    """Return the teacher's preprocessing from its manifest (``<file>.json``) or sidecar
    (``<stem>.json``), else CIFAR-10's; the student is trained and evaluated with it."""
    from vggc.runtime import preprocess_from_meta, read_manifest

    return preprocess_from_meta(read_manifest(Path(teacher_path)))


def _run_record(teacher_sha: str, kd: KDConfig, cfg: TrainConfig, student_cfg: dict, limit, data) -> dict:
    train = {k: v for k, v in asdict(cfg).items() if k != "device"}
    return {"teacher_sha256": teacher_sha, "kd": asdict(kd), "train": train, "student": student_cfg,
            "limit": limit, "data": str(Path(data).resolve())}


def work_files(out: str | Path) -> list[Path]:
    """Return the resumable state :func:`distill` keeps beside ``out``: checkpoint, run settings."""
    out = Path(out)
    return [out.with_name(out.name + ".ckpt"), out.with_name(out.name + ".ckpt.json")]


def _check_resume(ckpt: Path, run_file: Path, run: dict, student: nn.Module) -> None:
    """Refuse to resume a checkpoint made by a different run (teacher, settings, student shape)."""
    if not ckpt.is_file():
        raise InputError(f"--resume: no checkpoint at {ckpt}")
    state = load_checkpoint(ckpt)["model"]
    own = student.state_dict()
    if set(state) != set(own) or any(tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise StaleCheckpointError(f"--resume: {ckpt} holds a different student (other --student or --width-mult)")
    check_settings(run_file, run, ckpt)


def _teacher_reference(teacher: nn.Module, test, pre: Preprocess, reference: dict | None,
                       progress: Progress) -> tuple[float, torch.Tensor]:
    """Return the FP32 teacher's ``(top1, predictions)`` on ``test``: from ``reference`` when it
    has predictions (checked to be of these images), else evaluated here."""
    from vggc.reference import evaluate_source, reference_result

    if reference is not None:
        top1, pred = reference_result(reference, test)
        if pred is not None:
            return top1, pred
    res = evaluate_source(teacher, test, pre, progress=progress)
    return res.top1, res.predictions


def distill(teacher_path: str | Path, data: str | Path, out: str | Path, cfg: TrainConfig,
            kd: KDConfig, *, student: str = "mobilenet_v2", width_mult: float = 1.0, limit: int | None = None,
            eval_limit: int | None = None, do_eval: bool = True, resume: bool = False, download: bool = False,
            eval_threads: int | None = None, teacher_model: str | Path | None = None,
            teacher_backend: str | None = None, progress: Progress = no_progress, on_epoch=None,
            reference: dict | None = None, curve: bool = False) -> dict:
    """Distil ``teacher_path`` into a fresh student; save its state_dict at ``out`` with a manifest.

    ``out.ckpt`` (+ ``out.ckpt.json``, the run's settings) hold fit's checkpoint (every epoch, every 10 minutes) until the run
    finishes; ``resume=True`` continues from it. Under an initialised process group the trainer
    shards the data and only rank 0 evaluates and writes; other ranks return ``{}``.
    ``eval_threads``: torch threads for the final evaluation (under torchrun each process trains on
    its share of the cores; rank 0 evaluates alone afterwards). ``teacher_model``: run the teacher's
    forward pass from this model file (e.g. the INT8 OpenVINO IR of ``teacher_path``) on
    ``teacher_backend`` (:func:`vggc.compress.teacher.open_teacher`); ``teacher_path`` stays the
    reference the student is evaluated against, and the metrics' ``teacher_model`` say how the file
    teacher compares with it. ``reference``: the teacher's FP32 result on the same evaluation images
    (a :func:`vggc.reference.reference_doc` record, e.g. the pipeline's ``source_eval``): the teacher is
    not evaluated again (refused when it is of other images). ``curve`` (needs ``do_eval``): evaluate the
    student on the test images after every epoch (rank 0; each record of ``metrics.train.history`` gets
    ``top1`` and ``n_eval``: the learning curve; the weights are the same). Returns the manifest's metrics (history, test top-1 of student and
    teacher, agreement).
    """
    from vggc.models import count_macs, count_params, load_weights

    teacher_path, out = Path(teacher_path), Path(out)
    loaded = load_weights(teacher_path)
    pre = teacher_preprocess(teacher_path)
    rank, world = dist_rank()
    train = limit_split(load_split(data, "train", download=download, progress=progress), limit, cfg.seed)
    classes = len(train.classes)
    with torch.no_grad():
        t_out = loaded.model(torch.zeros(1, 3, pre.input_size, pre.input_size)).shape[-1]
    if t_out != classes:
        raise InputError(f"teacher {teacher_path.name} predicts {t_out} classes but the data has {classes}")
    model = build_student(student, width_mult, classes, cfg.seed)
    ckpt, run_file = work_files(out)
    teacher_sha = sha256_file(teacher_path)
    run = _run_record(teacher_sha, kd, cfg, model.config.to_dict(), limit, data)
    file_teacher = None
    if teacher_model is not None:
        from vggc.compress.teacher import open_teacher

        file_teacher = open_teacher(teacher_model, pre, backend=teacher_backend)
        run["teacher_model"] = {k: file_teacher.facts[k] for k in ("sha256", "backend", "precision")}
    if resume:
        _check_resume(ckpt, run_file, run, model)
    elif rank == 0:
        write_settings(run_file, run)

    loss_fn = DistillLoss(file_teacher or loaded.model, kd, cfg.label_smoothing)
    test = limit_split(load_split(data, "test", progress=progress), eval_limit, cfg.seed) if do_eval else None
    result = fit(model, train, pre, cfg, loss_fn=loss_fn, checkpoint=ckpt, resume=resume,
                 progress=progress, on_epoch=on_epoch, run_key=run_key(run),
                 evaluate_epoch=epoch_curve(model_top1(test, pre), len(test)) if (curve and do_eval and rank == 0) else None)
    loaded.model.to("cpu")
    if rank != 0:
        return {}

    metrics: dict = {"train": result.to_dict(), "train_images": len(train), "world_size": world}
    if do_eval:
        if eval_threads:
            torch.set_num_threads(eval_threads)
        teacher = loaded.model.eval()
        with torch.inference_mode():
            res = evaluate(lambda x: model(x), test, pre, progress=progress)
        t_top1, t_pred = _teacher_reference(teacher, test, pre, reference, progress)
        metrics.update(top1=res.top1, n=res.n, teacher_top1=t_top1,
                       agreement=float((res.predictions == t_pred).float().mean()),
                       per_class=res.per_class)
        if file_teacher is not None:
            from vggc.compress.teacher import check_teacher

            metrics["teacher_model"] = check_teacher(file_teacher, teacher, test, pre, t_pred)
    if file_teacher is not None:
        file_teacher.close()
    save_state_dict(model.state_dict(), out)
    kd_settings = {**asdict(kd), "label_smoothing": cfg.label_smoothing, "student": student,
                   "width_mult": width_mult, "teacher_logits_cached": False, "curve": bool(curve and do_eval),
                   "teacher_model": file_teacher.facts if file_teacher is not None else None}
    write_manifest(out, kind="state_dict", inputs={"teacher": teacher_path},
                   settings={"distill": kd_settings, "train": asdict(cfg), "limit": limit, "eval_limit": eval_limit,
                             "data": run["data"]},
                   metrics=metrics,
                   extra={"arch": model.config.name, "config": model.config.to_dict(),
                          "teacher": {"path": str(teacher_path), "sha256": teacher_sha, "arch": loaded.name,
                                      "params": count_params(loaded.model),
                                      "macs": count_macs(loaded.model, pre.input_size)},
                          "preprocess": pre.to_dict(), "params": count_params(model),
                          "macs": count_macs(model, pre.input_size), "precision": "fp32"})
    ckpt.unlink(missing_ok=True)
    run_file.unlink(missing_ok=True)
    return metrics
