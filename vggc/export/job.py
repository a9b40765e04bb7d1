"""The export job: a weights file in, a deployable file out, checked against PyTorch.

``export_file`` is what ``vggc export`` and the pipeline's export steps call: it validates the
options, rebuilds the model from its state_dict, writes the ONNX file atomically with its
manifest (:func:`vggc.export.onnx.export_with_parity`) and, when asked, a Triton repository.
"""

from __future__ import annotations

from pathlib import Path

from vggc import formats
from vggc.artifacts import check_out_path
from vggc.errors import InputError
from vggc.progress import Progress, no_progress

# --format choice -> output suffixes (from the format table, vggc.formats)
FORMATS = {"onnx": formats.get("onnx").suffixes}


def export_file(weights: str, out: str | None, *, fmt: str = "onnx", data: str | None = None, opset: int = 18,
                fp16: bool = False, parity: bool = True, parity_limit: int | None = None, seed: int = 0,
                batch_size: int = 256, mean=None, std=None, input_size=None, threads: int | None = None,
                progress: Progress = no_progress, triton: str | None = None, triton_engine: str | None = None,
                triton_max_batch: int = 256, triton_instance: str = "gpu") -> dict:
    """Export the state_dict ``weights`` to ``out``; return the facts ``vggc export`` prints.

    With ``parity`` (the default) the export is compared with PyTorch on the CIFAR-10 test split
    under ``data`` (all of it, or a class-balanced ``parity_limit`` subset drawn with ``seed``;
    ``parity.kind`` ``"real"``); without ``data`` on a fixed-seed batch of synthetic images at the
    model's input size (``parity_limit`` of them, default 512; ``parity.kind`` ``"synthetic"``).
    ``triton``: also write a Triton model repository there (:func:`vggc.export.triton.write_triton_repo`).
    ``out=None`` needs ``triton``: the ONNX goes only into the repository, as model ``<weights stem>``
    (exported to a temporary directory first; ``path`` is then the repository's ``1/model.onnx``).
    """
    from vggc.data import limit_split, load_split, resolve_preprocess
    from vggc.export.onnx import SYNTHETIC_PARITY_N, check_opset, export_with_parity, synthetic_split
    from vggc.models import load_weights

    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: unsupported; choose from {', '.join(FORMATS)}")
    if out is None:
        if not triton:
            raise InputError("--out FILE is needed unless --triton DIR is given")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vggc-export-") as d:
            facts = export_file(weights, str(Path(d) / f"{Path(weights).stem}{FORMATS[fmt][0]}"), fmt=fmt,
                                data=data, opset=opset, fp16=fp16, parity=parity, parity_limit=parity_limit,
                                seed=seed, batch_size=batch_size, mean=mean, std=std, input_size=input_size,
                                threads=threads, progress=progress, triton=triton, triton_engine=triton_engine,
                                triton_max_batch=triton_max_batch, triton_instance=triton_instance)
        model = facts["triton"]["models"][0]
        return {**facts, "path": str(Path(model["dir"]) / "1" / "model.onnx"),
                "manifest": str(Path(model["config"]).with_name("config.pbtxt.json")), "repository_only": True}
    check_out_path(out, FORMATS[fmt])
    check_opset(opset)
    if Path(out).resolve() == Path(weights).resolve():
        raise InputError(f"--out {out}: would overwrite the input weights")
    if triton_engine and not triton:
        raise InputError("--triton-engine needs --triton DIR")
    if triton:
        from vggc.export.triton import check_triton_options

        check_triton_options(triton, name=Path(out).stem, engine=triton_engine, max_batch=triton_max_batch,
                             instance_kind=triton_instance)
    lm = load_weights(weights)
    pre = resolve_preprocess(lm.sidecar, mean, std, input_size)
    split = None
    if parity and data:
        split = limit_split(load_split(data, "test", progress=progress), parity_limit, seed)
    elif parity:
        split = synthetic_split(parity_limit or SYNTHETIC_PARITY_N, pre.input_size, seed=seed,
                                channels=getattr(lm.config, "in_channels", 3))
    facts = export_with_parity(lm.model, out, preprocess=pre, split=split, opset=opset, fp16=fp16,
                               batch_size=batch_size, threads=threads, source=weights, arch=lm.name,
                               settings={"parity_limit": parity_limit, "seed": seed, "format": fmt},
                               extra={"config": lm.config.to_dict()}, progress=progress)
    result = {**facts, "format": fmt, "source": str(weights), "input_size": pre.input_size}
    if triton:
        from vggc.export.triton import write_triton_repo

        result["triton"] = write_triton_repo(triton, out, engine=triton_engine, max_batch=triton_max_batch,
                                             instance_kind=triton_instance)
    return result
