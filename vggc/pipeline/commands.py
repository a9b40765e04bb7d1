"""The ``vggc`` command lines equivalent to pipeline steps: what the report prints as "rebuild it".

Each function returns one shell command (a string, arguments quoted with :func:`shlex.quote`)
that calls the same library function with the same settings as the step, so a user can rebuild a
recommended variant from the source state_dict without the pipeline. Files under the run's
``--out`` are written ``$OUT/<file>`` (:func:`under_out`) and the source weights and data as the
user gave them, so the commands run in any checkout once ``OUT=<a directory>`` is set
(``pipeline.json`` records the ``--out`` of the run as ``out_as_given``). ``tests/test_pipeline_frontier``
parses every command a pipeline writes with the real Click commands, so an option renamed in the
CLI and not here fails a test. :func:`rebuild_chain` orders a file's commands from the source on.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Iterable

OUT_VAR = "OUT"  # the run directory in a recorded command: ``$OUT/<file>``, set once by whoever pastes them
_OUT_PREFIX = f"${OUT_VAR}/"


def under_out(rel: str | Path) -> str:
    """Return ``$OUT/<rel>``: a file under the run directory as a rebuild command names it."""
    return _OUT_PREFIX + Path(rel).as_posix()


def _quote(part) -> str:
    """Quote one argument for a POSIX shell; ``$OUT/...`` stays expandable (``"$OUT/x.pt"``)."""
    text = str(part)
    if not text.startswith(_OUT_PREFIX):
        return shlex.quote(text)
    rest = text[len(_OUT_PREFIX):]
    if rest and shlex.quote(rest) == rest:  # nothing to quote in the file name
        return f'"{_OUT_PREFIX}{rest}"'
    return f'"${OUT_VAR}"/{shlex.quote(rest)}'


def _cmd(*parts) -> str:
    return " ".join(_quote(p) for p in parts if p is not None and p is not False)


def _opt(flag: str, value) -> tuple:
    """``(flag, value)``, or nothing when ``value`` is None (the option's default applies)."""
    return () if value is None else (flag, value)


def export_cmd(src: Path, out: Path, data: Path, *, fp16: bool, parity_limit: int | None, seed: int) -> str:
    return _cmd("vggc", "export", src, "--format", "onnx", "--data", data, *_opt("--parity-limit", parity_limit),
                "--seed", seed, "--fp16" if fp16 else None, "--out", out)


def quantize_cmd(src: Path, out: Path, data: Path, *, mode: str, backend: str, calib_size: int, seed: int,
                 reduce_range: bool, max_drop: float | None = None, max_fp32_layers: int | None = None,
                 eval_limit: int | None = None, fp32_onnx: str | Path | None = None) -> str:
    static = mode == "static"
    return _cmd("vggc", "quantize", src, "--mode", mode, "--backend", backend, *_opt("--fp32-onnx", fp32_onnx),
                *(("--data", data, "--calib-size", calib_size) if static else ()), "--seed", seed,
                "--reduce-range" if reduce_range else "--full-range",
                *(("--max-drop", f"{max_drop:.4f}", *_opt("--max-fp32-layers", max_fp32_layers),
                   *_opt("--eval-limit", eval_limit)) if max_drop is not None else ("--no-eval",)),
                "--out", out)


def scan_cmd(src: Path, out_dir: Path, data: Path, *, scan_limit: int, seed: int) -> str:
    return _cmd("vggc", "prune", src, "--data", data, "--scan", "--scan-limit", scan_limit, "--seed", seed,
                "--out", out_dir)


def prune_cmd(src: Path, out: Path, data: Path, *, strategy: str, target: float, scan: Path | None, epochs: int,
              lr: float, batch: int, limit: int | None, eval_limit: int | None, seed: int, kd_alpha: float,
              kd_temperature: float, teacher_model: Path | None, teacher_backend: str | None,
              stop_drop: float | None, stop_after: int, bn_recalib: int, curve: bool = False) -> str:
    return _cmd("vggc", "prune", src, "--data", data, "--strategy", strategy, *_opt("--sensitivity", scan),
                "--target-macs", target, "--finetune-epochs", epochs, "--lr", lr, "--batch-size", batch,
                *_opt("--limit", limit), *_opt("--eval-limit", eval_limit), "--seed", seed,
                "--bn-recalib", bn_recalib,
                *(("--kd-alpha", kd_alpha, "--kd-temperature", kd_temperature) if kd_alpha > 0 else ()),
                *_opt("--teacher-model", teacher_model), *_opt("--teacher-backend", teacher_backend),
                *(("--stop-drop", f"{stop_drop:.4f}", "--stop-after", stop_after) if stop_drop is not None else ()),
                "--curve" if curve else None, "--out", out)


def distill_cmd(src: Path, out: Path, data: Path, *, epochs: int, lr: float, batch: int, limit: int | None,
                eval_limit: int | None, width: float, temperature: float, alpha: float, seed: int,
                teacher_model: Path | None, teacher_backend: str | None, curve: bool = False) -> str:
    return _cmd("vggc", "distill", src, "--data", data, "--epochs", epochs, "--lr", lr, "--batch-size", batch,
                *_opt("--limit", limit), *_opt("--eval-limit", eval_limit), "--width-mult", width,
                "--temperature", temperature, "--alpha", alpha, "--seed", seed,
                *_opt("--teacher-model", teacher_model), *_opt("--teacher-backend", teacher_backend),
                "--curve" if curve else None, "--out", out)


def rebuild_chain(name: str, deps: dict[str, list[str]], commands: dict[str, str]) -> list[str]:
    """Return the commands that rebuild step ``name``'s output: its dependencies' first (each
    once, in dependency order), then its own. Steps without a recorded command are left out."""
    seen: list[str] = []

    def visit(n: str) -> None:
        for d in deps.get(n, []):
            visit(d)
        if n not in seen:
            seen.append(n)

    visit(name)
    return [commands[n] for n in seen if commands.get(n)]


def command_args(command: str, out: str | Path | None = None) -> list[str]:
    """Return the arguments after ``vggc <command>`` of one rebuild command (for checks), with
    ``$OUT`` replaced by ``out`` when given (as the shell would with ``OUT=<out>``)."""
    parts = shlex.split(command)
    if parts[:1] != ["vggc"] or len(parts) < 2:
        raise ValueError(f"not a vggc command: {command}")
    if out is not None:
        parts = [f"{out}/{p[len(_OUT_PREFIX):]}" if p.startswith(_OUT_PREFIX) else p for p in parts]
    return parts[2:]


def names(commands: Iterable[str]) -> list[str]:
    """Return the subcommand of each command (``export``, ``quantize``, ...)."""
    return [shlex.split(c)[1] for c in commands]
