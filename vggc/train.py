"""The project's one training loop: baseline training, pruning fine-tune and distillation all use it.

SGD (Nesterov) + OneCycle by default, random-crop + flip, label smoothing, channels_last,
bf16 autocast on CPUs with native bf16 (AMX / AVX512-BF16; strided depthwise convolutions stay fp32,
see :func:`fp32_islands`) and fp16 AMP on CUDA, an optional evaluation after every epoch (the
learning curve), a checkpoint
after every epoch and every 10 minutes within one (atomic) with ``resume``, deterministic under
``seed``, and DDP when ``torch.distributed`` is initialised (e.g. under ``torchrun``; only rank 0 writes).

The loss is pluggable: ``loss_fn(model, x, y) -> (loss, parts)`` where ``parts`` is a dict of
floats shown on the progress bar (distillation passes its KD loss this way).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vggc.artifacts import atomic_path, safe_torch_load
from vggc.data import Preprocess, Split, augment_batch
from vggc.errors import InputError, StaleCheckpointError
from vggc.progress import Progress, no_progress

# a training checkpoint is also written within an epoch after this many minutes (see fit)
CHECKPOINT_MINUTES = 10.0

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("onecycle", "cosine", "constant")
ARCHS = {"vgg16_bn": True, "vgg16": False}  # trainable from scratch by train_baseline: name -> batch_norm


@dataclass
class TrainConfig:
    """Hyper-parameters; recorded verbatim in checkpoints and manifests."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "onecycle"
    warmup_frac: float = 0.15
    precision: str = "auto"
    augment: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.epochs < 1:
            raise InputError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r} not in {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule {self.schedule!r} not in {', '.join(SCHEDULES)}")
        if not self.lr > 0:
            raise InputError(f"learning rate must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    """What :func:`fit` returns: per-epoch history (every epoch, including those a resumed run
    loaded from its checkpoint) and totals. ``epochs_run`` and ``seconds`` count this process only;
    ``total_seconds`` / ``total_cpu_seconds`` sum the history, i.e. the whole training across
    resumes."""

    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    resumed_from: int = 0
    stopped_early: str | None = None  # why ``stop_check`` ended training before cfg.epochs
    fp32_layers: list = field(default_factory=list)  # layers run in fp32 inside bf16 autocast (fp32_islands)

    @property
    def total_seconds(self) -> float:
        return round(sum(float(h.get("seconds", 0.0)) for h in self.history), 2)

    @property
    def total_cpu_seconds(self) -> float:
        return round(sum(float(h.get("cpu_seconds", 0.0)) for h in self.history), 2)

    def to_dict(self) -> dict:
        """Return the fields plus ``total_seconds`` and ``total_cpu_seconds``."""
        return {**asdict(self), "total_seconds": self.total_seconds,
                "total_cpu_seconds": self.total_cpu_seconds}


def resolve_device(device: str) -> torch.device:
    """Return ``cuda`` when asked or (for ``auto``) available, else ``cpu``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Return the precision to train in: ``auto`` -> fp16 AMP on CUDA, bf16 on CPUs with native
    bf16 (AMX/AVX512-BF16), fp32 elsewhere (emulated bf16 is several times slower than fp32)."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise InputError("fp16 training needs CUDA; use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda":
        return "fp16"
    from vggc.cpu import has_native_bf16

    return "bf16" if has_native_bf16() else "fp32"


def keeps_fp32_under_bf16(module: nn.Module) -> bool:
    """True for a layer that :func:`fit` runs in fp32 inside CPU bf16 autocast: a depthwise
    (grouped) convolution with a stride above 1.

    With torch 2.14's oneDNN kernels such a layer's bf16 backward pass is 4-30x slower than its fp32
    one on the AMX machine (a 576-channel 8x8 stride-2 depthwise conv, batch 128: 90 ms bf16 vs 2.8 ms
    fp32 forward + backward; 144 channels at 32x32: 124 vs 31 ms), while stride-1 depthwise and dense
    convolutions gain from bf16. In a CIFAR MobileNetV2 training step these three layers took about a
    fifth of the time; with them in fp32 its KD step runs 1.29x faster (``scripts/train_speed.py``
    measures the whole step both ways, docs/budget-amx). fp32 is also the more
    precise of the two, so the rule can only help accuracy."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
            and max(module.stride) > 1)


@contextlib.contextmanager
def fp32_islands(model: nn.Module, autocast_dtype: torch.dtype | None, device: torch.device):
    """Within the block, every layer of ``model`` that :func:`keeps_fp32_under_bf16` runs in fp32
    (autocast off, input cast to float32) when training autocasts to bf16 on a CPU; otherwise
    nothing changes. Yields the names of the layers so run. The layers' parameters, names and
    state_dict are untouched (only their instance ``forward`` is wrapped, and restored after)."""
    if autocast_dtype is not torch.bfloat16 or device.type != "cpu":
        yield []
        return
    patched = [(name, m) for name, m in model.named_modules() if keeps_fp32_under_bf16(m)]

    def fp32_forward(module: nn.Module):
        cls_forward = type(module).forward

        def forward(x):
            with torch.autocast("cpu", enabled=False):
                return cls_forward(module, x.float())
        return forward

    for _, m in patched:
        m.forward = fp32_forward(m)
    try:
        yield [name for name, _ in patched]
    finally:
        for _, m in patched:
            m.__dict__.pop("forward", None)


def cross_entropy_loss(label_smoothing: float = 0.1) -> LossFn:
    """Return the default loss: cross-entropy with label smoothing; parts ``{"ce": ...}``."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        return loss, {"ce": loss.detach()}

    return loss_fn


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Return this rank's sample order for ``epoch``: a seeded permutation, padded to split evenly."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    if world > 1:
        per = math.ceil(n / world)
        order = torch.cat([order, order[: per * world - n]])
        order = order[rank::world]
    return order


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=cfg.warmup_frac, div_factor=10,
                                                   final_div_factor=100)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _frozen_bn_modules(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose parameters are all frozen stay in eval mode while training."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]


def load_checkpoint(path: Path) -> dict:
    """Return a training checkpoint written by :func:`fit` (loaded with ``weights_only=True``)."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise InputError(f"{path}: not a vggc training checkpoint")
    return ckpt


def check_same_run(ckpt: dict, cfg: TrainConfig, model: nn.Module, path: Path, run_key: str | None = None) -> None:
    """Raise :class:`StaleCheckpointError` unless ``ckpt`` was written by a run with the same
    training settings (``device`` may differ), the same ``run_key`` and a model of the same shapes."""
    import json

    saved, now = ckpt.get("config") or {}, asdict(cfg)
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731
    diff = [k for k in now if k != "device" and k in saved and not same(saved[k], now[k])]
    if diff:
        changes = ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in diff)
        raise StaleCheckpointError(f"--resume: {path} was written with other training settings ({changes}); "
                                   "rerun with the same options or without --resume")
    if ckpt.get("run_key") != run_key:
        raise StaleCheckpointError(f"--resume: {path} was written by a run with other settings; "
                                   "rerun with the same options or without --resume")
    state, own = ckpt["model"], model.state_dict()
    if set(state) != set(own) or any(tuple(state[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise StaleCheckpointError(f"--resume: {path} holds a model of other layers or widths; "
                                   "rerun with the same options or without --resume")


def fit(model: nn.Module, train: Split, preprocess: Preprocess, cfg: TrainConfig, *,
        loss_fn: LossFn | None = None, checkpoint: str | Path | None = None, resume: bool = False,
        progress: Progress = no_progress, on_epoch: Callable[[dict], None] | None = None,
        run_key: str | None = None, checkpoint_minutes: float | None = CHECKPOINT_MINUTES,
        stop_check: Callable[[dict], str | None] | None = None,
        evaluate_epoch: Callable[[nn.Module], dict] | None = None) -> TrainResult:
    """Train ``model`` in place on ``train``; return a :class:`TrainResult`.

    ``checkpoint``: path written atomically after every epoch (rank 0 only), and also within an
    epoch once ``checkpoint_minutes`` have passed since the last write (single process only; an
    epoch over 50,000 images takes 20-30 minutes on a 2-core CPU, and a kill now loses at most
    ``checkpoint_minutes`` of it; ``None``: epoch ends only). With ``resume=True`` training continues from it,
    mid-epoch too (same seed -> the same weights as an uninterrupted run). ``run_key``: what
    the caller's settings hash to beyond ``cfg`` (e.g. a pruning plan, a loss); stored in the
    checkpoint, and a checkpoint with another key is refused on resume.
    ``on_epoch(record)`` is called after each epoch with ``{"epoch", "loss", "lr", "seconds", ...}``.
    ``stop_check(record)``: called after each epoch (after its checkpoint); a returned reason ends
    training there (``TrainResult.stopped_early``; the record gets ``stopped_early``). A run
    resumed from an epoch-end checkpoint asks it again about that epoch first, so a kill between
    the decision and the caller's output gives the same decision.
    ``evaluate_epoch(model) -> dict`` (e.g. ``{"top1": ..., "n_eval": ...}``): called after each epoch
    with the model in eval mode, before its checkpoint; its items join the epoch's record (the learning
    curve). It must not draw from torch's global RNG (evaluation does not), so the weights are the
    same with or without it.
    Returns with ``model`` on CPU in eval mode.
    """
    if len(train) < cfg.batch_size:
        raise InputError(f"training set has {len(train)} images, fewer than one batch of {cfg.batch_size}")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    rank, world = _dist()
    torch.manual_seed(cfg.seed + rank)
    model = model.to(device, memory_format=torch.channels_last)
    opt = _make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train) / world) // cfg.batch_size
    sched = _make_scheduler(opt, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    ckpt_path = Path(checkpoint) if checkpoint else None
    loop = _Loop(model=model, net=model, train=train, preprocess=preprocess, cfg=cfg,
                 loss_fn=loss_fn or cross_entropy_loss(cfg.label_smoothing), opt=opt, sched=sched, scaler=scaler,
                 device=device, autocast_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision),
                 rank=rank, world=world, steps_per_epoch=steps_per_epoch, progress=progress, ckpt_path=ckpt_path,
                 run_key=run_key,
                 # mid-epoch checkpoints: single process only (each rank's augmentation RNG would need saving)
                 every_s=(checkpoint_minutes * 60.0 if (checkpoint_minutes is not None and world == 1
                                                        and ckpt_path is not None) else None))
    start_epoch, partial = 0, None
    if resume:
        start_epoch, partial = _restore(loop, precision)
    if world > 1:
        loop.net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                       else None)
    loop.frozen_bn = _frozen_bn_modules(model)
    t_start = time.perf_counter()
    stopped = None
    if stop_check is not None and loop.history and partial is None and start_epoch < cfg.epochs:
        stopped = stop_check(loop.history[-1])
        if stopped:
            model.eval()

    with fp32_islands(model, loop.autocast_dtype, device) as fp32_layers:
        for epoch in range(start_epoch, cfg.epochs if not stopped else start_epoch):
            stopped = _epoch_and_after(loop, epoch, partial if epoch == start_epoch else None, on_epoch,
                                       stop_check, evaluate_epoch)
            if stopped:
                break
    model.to("cpu").eval()
    return TrainResult(epochs_run=len(loop.history) - start_epoch, history=loop.history,
                       seconds=round(time.perf_counter() - t_start, 2), device=str(device),
                       precision=precision, resumed_from=start_epoch, stopped_early=stopped,
                       fp32_layers=fp32_layers)


def _epoch_and_after(loop: "_Loop", epoch: int, partial: dict | None, on_epoch, stop_check,
                     evaluate_epoch) -> str | None:
    """Train one epoch, evaluate it (``evaluate_epoch``), checkpoint, report it and ask ``stop_check``;
    return the reason to stop, else ``None``."""
    record = _run_epoch(loop, epoch, partial)
    if evaluate_epoch is not None:
        loop.model.eval()
        t0 = time.perf_counter()
        record.update(evaluate_epoch(loop.model))
        record["eval_seconds"] = round(time.perf_counter() - t0, 2)
    loop.history.append(record)
    if loop.ckpt_path is not None and loop.rank == 0:
        loop.save(epoch + 1)
    if on_epoch:
        on_epoch(record)
    if stop_check is not None and epoch + 1 < loop.cfg.epochs:
        stopped = stop_check(record)
        if stopped:
            record["stopped_early"] = stopped
            return stopped
    return None


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Return SGD (Nesterov when momentum > 0) over the trainable parameters, no weight decay on
    biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("nothing to train: every parameter is frozen")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


@dataclass
class _Loop:
    """The state of one :func:`fit`: what an epoch and a checkpoint need."""

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper
    train: Split
    preprocess: Preprocess
    cfg: TrainConfig
    loss_fn: LossFn
    opt: torch.optim.Optimizer
    sched: object
    scaler: object
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int
    world: int
    steps_per_epoch: int
    progress: Progress
    ckpt_path: Path | None
    run_key: str | None
    every_s: float | None
    frozen_bn: list = field(default_factory=list)
    history: list = field(default_factory=list)

    def save(self, epochs_done: int, part: dict | None = None) -> None:
        """Write the checkpoint atomically (``part``: an epoch's progress so far)."""
        with atomic_path(self.ckpt_path) as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                        "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                        "epoch": epochs_done, "rng": torch.get_rng_state(), "history": self.history,
                        "config": asdict(self.cfg), "run_key": self.run_key, "partial": part}, tmp)


def _restore(loop: _Loop, precision: str) -> tuple[int, dict | None]:
    """Load the checkpoint of the same run into the loop; return ``(epochs done, the partial
    epoch's progress or None)``."""
    ckpt_path = loop.ckpt_path
    if ckpt_path is None or not ckpt_path.is_file():
        raise InputError(f"--resume: no checkpoint at {ckpt_path}")
    ckpt = load_checkpoint(ckpt_path)
    check_same_run(ckpt, loop.cfg, loop.model, ckpt_path, loop.run_key)
    loop.model.load_state_dict(ckpt["model"])
    loop.opt.load_state_dict(ckpt["optimizer"])
    loop.sched.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt and precision == "fp16":
        loop.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"])
    loop.history = list(ckpt.get("history", []))
    return int(ckpt["epoch"]), ckpt.get("partial")  # partial: written within an epoch, its progress so far


def _run_epoch(loop: _Loop, epoch: int, partial: dict | None) -> dict:
    """Train one epoch (from ``partial``'s step when resuming inside it); return its record."""
    cfg, steps_per_epoch, device = loop.cfg, loop.steps_per_epoch, loop.device
    t0, c0 = time.perf_counter(), time.process_time()
    loop.net.train()
    for m in loop.frozen_bn:
        m.eval()
    order = epoch_order(len(loop.train), cfg.seed, epoch, loop.rank, loop.world)[: steps_per_epoch * cfg.batch_size]
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + loop.rank)
    sums: dict[str, float] = {}
    first, spent, spent_cpu = 0, 0.0, 0.0
    if partial is not None:  # resume inside this epoch
        first, sums = int(partial["step"]), dict(partial["sums"])
        spent, spent_cpu = float(partial["seconds"]), float(partial["cpu_seconds"])
        aug_gen.set_state(partial["aug_rng"])
    batches = order.view(steps_per_epoch, cfg.batch_size)
    bar = loop.progress(batches[first:], total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                        **({"initial": first} if first else {}))
    last_save = time.perf_counter()
    for step, idx in enumerate(bar, start=first):
        images = loop.train.images[idx]
        if cfg.augment:
            images = augment_batch(images, aug_gen)
        x = loop.preprocess(images).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = loop.train.labels[idx].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=loop.autocast_dtype or torch.float32,
                            enabled=loop.autocast_dtype is not None):
            loss, parts = loop.loss_fn(loop.net, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1} step {step}; "
                                     "lower --lr")
        loop.opt.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.opt)
        loop.scaler.update()
        loop.sched.step()
        for k, v in {"loss": loss.detach(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if hasattr(bar, "set_postfix") and (step % 10 == 0 or step == steps_per_epoch - 1):
            bar.set_postfix({k: f"{v / (step + 1):.3f}" for k, v in sums.items()}, refresh=False)
        if (loop.every_s is not None and step < steps_per_epoch - 1
                and time.perf_counter() - last_save >= loop.every_s):
            loop.save(epoch, {"step": step + 1, "sums": sums, "aug_rng": aug_gen.get_state(),
                              "seconds": spent + time.perf_counter() - t0,
                              "cpu_seconds": spent_cpu + time.process_time() - c0})
            last_save = time.perf_counter()
    seconds = spent + time.perf_counter() - t0
    return {"epoch": epoch + 1, "lr": loop.opt.param_groups[0]["lr"],
            "seconds": round(seconds, 2), "cpu_seconds": round(spent_cpu + time.process_time() - c0, 2),
            "images_per_s": round(steps_per_epoch * cfg.batch_size * loop.world / seconds, 1),
            **{k: round(v / steps_per_epoch, 5) for k, v in sums.items()}}


def freeze(model: nn.Module, what: str) -> nn.Module:
    """Freeze parameters: ``"features"`` (all but the classifier) or ``"none"``; return ``model``."""
    if what not in ("features", "none"):
        raise InputError(f"--freeze {what!r}: use features or none")
    for name, p in model.named_parameters():
        p.requires_grad = not (what == "features" and not name.startswith("classifier"))
    return model


def init_from_pretrained(path: str | Path, num_classes: int) -> nn.Module:
    """Return a VGG initialised from a (torchvision ImageNet) VGG state_dict with a new last layer.

    Every tensor is kept except the final Linear, which is re-initialised for ``num_classes``.
    """
    from vggc.models import build_vgg, unwrap_state_dict
    from vggc.models.vgg import vgg_config_from_state_dict

    sd = unwrap_state_dict(safe_torch_load(path))
    cfg = vgg_config_from_state_dict(sd)
    last = f"classifier.{cfg.classifier_indices[-1]}"
    cfg.classifier = [*cfg.classifier[:-1], num_classes]
    model = build_vgg(cfg)
    keep = {k: v for k, v in sd.items() if not k.startswith(last + ".")}
    model.load_state_dict(keep, strict=False)
    return model


def train_baseline(data: str, out: str, cfg: TrainConfig, *, arch: str = "vgg16_bn", init: str | None = None,
                   freeze_what: str = "none", limit: int | None = None, mean=None, std=None,
                   input_size: int | None = None, resume: bool = False, eval_limit: int | None = None,
                   do_eval: bool = True, download: bool = False, progress: Progress = no_progress,
                   on_epoch=None) -> dict:
    """Train and save a state_dict at ``out`` (+ ``out.json`` manifest, ``out.ckpt`` checkpoint).

    Returns the manifest's metrics: training history, test top-1 (when ``do_eval``), timings.
    """
    from vggc.artifacts import save_state_dict, write_manifest
    from vggc.data import limit_split, load_split, resolve_preprocess
    from vggc.evaluate import evaluate
    from vggc.models import VGGConfig, build_vgg, count_macs, count_params

    pre = resolve_preprocess({}, mean, std, input_size)
    train = limit_split(load_split(data, "train", download=download, progress=progress), limit, cfg.seed)
    classes = len(train.classes)
    if init:
        model = init_from_pretrained(init, classes)
    else:
        torch.manual_seed(cfg.seed)
        pool = 1 if pre.input_size == 32 else 7
        head = [512, 512, 512, classes] if pool == 1 else [512 * 49, 4096, 4096, classes]
        model = build_vgg(VGGConfig(batch_norm=ARCHS[arch], classifier=head, pool_size=pool))
    freeze(model, freeze_what)
    ckpt = Path(out).with_name(Path(out).name + ".ckpt")
    result = fit(model, train, pre, cfg, checkpoint=ckpt, resume=resume, progress=progress, on_epoch=on_epoch)
    metrics = {"train": result.to_dict(), "train_images": len(train)}
    if do_eval:
        test = limit_split(load_split(data, "test", progress=progress), eval_limit, cfg.seed)
        with torch.inference_mode():
            res = evaluate(lambda x: model(x), test, pre, progress=progress)
        metrics.update(top1=res.top1, n=res.n)
    save_state_dict(model.state_dict(), out)
    inputs = {"init": init} if init else {}
    write_manifest(out, kind="state_dict", inputs=inputs,
                   settings={"train": asdict(cfg), "arch": arch, "freeze": freeze_what, "limit": limit,
                             "data": str(data)},
                   metrics=metrics,
                   extra={"preprocess": pre.to_dict(), "params": count_params(model),
                          "macs": count_macs(model, pre.input_size), "precision": "fp32"})
    ckpt.unlink(missing_ok=True)
    return metrics
