"""A cheap knowledge-distillation teacher: the teacher's forward pass from a compiled model file.

Fine-tuning a small pruned network with KD is dominated by the teacher: on this project's 2-core
CPU the VGG16-BN teacher runs its forward pass at ~1,190 img/s in PyTorch bf16 autocast, while a
25 %-MACs student trains (forward + backward) at about that rate, so the teacher costs half the
step. The same teacher as an INT8 OpenVINO IR (``vggc quantize --backend openvino``) runs at
~4,500 img/s, and its top-1 is the FP32 model's within ±0.1 pt.

:func:`open_teacher` opens any model file vggc can run (``.onnx``, an OpenVINO ``.xml``, a
``.pt2``) on one of its backends and returns a :class:`FileTeacher`: ``teacher(x) -> logits`` on
the normalised batch the trainer made (float32, on the batch's device). It refuses a file whose
preprocessing differs from the student's (the logits would be of other pixels) and a backend that
cannot run here (never a silent switch to another). :func:`check_teacher` measures, on the
evaluation images, the file teacher's top-1 and how often it agrees with the reference (PyTorch
FP32) teacher: what the manifest reports as the cost of the cheaper teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vggc.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from vggc.data import Preprocess, Split


class FileTeacher:
    """``teacher(x) -> logits``: a frozen teacher that is a model file on a vggc backend.

    ``facts``: path, sha256, format, backend and the precision it computes at (recorded in the
    manifest and in the resume key of the run that uses it)."""

    def __init__(self, runner, facts: dict):
        self.runner = runner
        self.facts = facts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.runner.predict(x.detach().float().cpu().contiguous())
        return torch.as_tensor(logits).float().to(x.device)

    def close(self) -> None:
        self.runner.close()


def open_teacher(path: str | Path, preprocess: "Preprocess", *, backend: str | None = None,
                 threads: int | None = None) -> FileTeacher:
    """Open ``path`` as a KD teacher on ``backend`` (default: the format's first available one,
    e.g. ``openvino-cpu`` for an IR, ``onnxruntime-cpu`` for ``.onnx``); return a :class:`FileTeacher`.

    Raises :class:`InputError` when the file's preprocessing differs from ``preprocess`` (the
    student's), :class:`~vggc.errors.UnavailableError` when the backend cannot run here."""
    from vggc import runtime
    from vggc.artifacts import sha256_file

    path = Path(path)
    mf = runtime.describe(path)
    be = runtime.get_backend(backend) if backend else runtime.default_backend(mf.format)
    mine, theirs = preprocess.to_dict(), mf.preprocess.to_dict()
    if mine != theirs:
        diff = ", ".join(f"{k} {theirs.get(k)} != {mine.get(k)}" for k in mine if mine.get(k) != theirs.get(k))
        raise InputError(f"--teacher-model {path.name}: its preprocessing differs from the student's ({diff})")
    runner = runtime.open_model(mf, be, {"threads": threads} if threads else {})
    facts = {"path": str(path), "name": path.name, "sha256": sha256_file(path), "format": mf.format,
             "backend": be.key, "precision": runtime.effective_precision(be, mf)}
    return FileTeacher(runner, facts)


def check_teacher(teacher: FileTeacher, reference: torch.nn.Module, split: "Split", preprocess: "Preprocess",
                  reference_predictions: torch.Tensor | None = None) -> dict:
    """Return ``{"top1", "reference_top1", "agreement", "n"}`` of ``teacher`` against ``reference``
    (the PyTorch teacher it stands in for) on ``split``; ``agreement`` is the fraction of images
    where both predict the same class. ``reference_predictions`` (e.g. from the ``source_eval``
    step's :mod:`vggc.reference` record) skips re-running ``reference``."""
    from vggc.evaluate import evaluate

    res = evaluate(teacher.runner.predict, split, preprocess)
    if reference_predictions is None:
        from vggc.reference import evaluate_source

        ref = evaluate_source(reference, split, preprocess)
        reference_predictions, ref_top1 = ref.predictions, ref.top1
    else:
        ref_top1 = float((reference_predictions == split.labels).double().mean())
    return {"top1": res.top1, "reference_top1": ref_top1, "n": res.n,
            "agreement": round(float((res.predictions == reference_predictions).float().mean()), 6)}
