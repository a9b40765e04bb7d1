"""The main job: one state_dict in, every variant built and measured, one comparison table out.

``run_pipeline(weights, data, preset=...)`` chains the stages (export, quantize, prune, distill,
engines, bench) as cached :class:`~vggc.pipeline.steps.Step`\\ s under ``out_dir``. Each stage is
the same library function its command calls; the pipeline only wires files between them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from vggc.errors import InputError
from vggc.pipeline.build import build_steps, family  # noqa: E402,F401 - re-exported
from vggc.pipeline.presets import PRESETS, Preset  # noqa: E402,F401 - re-exported
from vggc.pipeline.steps import Step, StepContext, StepResult, claim_out_dir, run_steps
from vggc.progress import Progress, no_progress


def _expand_families(only: list[str], steps: list[Step], log: Callable[[str], None]) -> list[str]:
    """Return ``only`` with each single-target step name (``prune``, ``pruned_onnx``, ...; before
    the frontier the pipeline had one pruned model) replaced by that step of every target."""
    names = {s.name for s in steps}
    out: list[str] = []
    for n in only:
        fam = [s.name for s in steps if s.name != n and family(s.name) == n]
        if n not in names and fam:
            log(f"-- --only {n}: deprecated name; it now means {', '.join(fam)}")
            out.extend(fam)
        else:
            out.append(n)
    return out


def _rebuild_commands(steps: list[Step], results: list[StepResult]) -> dict[str, list[str]]:
    """Return ``{model file name: [vggc commands that rebuild it from the source state_dict]}``
    from the commands the steps recorded (cached steps keep theirs in their marker)."""
    from vggc.pipeline.commands import rebuild_chain

    deps = {s.name: list(s.deps) for s in steps}
    commands = {r.name: r.metrics.get("command") for r in results if r.ok and isinstance(r.metrics.get("command"), str)}
    return {Path(s.outputs[0]).name: rebuild_chain(s.name, deps, commands)
            for s, r in zip(steps, results) if r.ok and s.model and commands.get(s.name)}


def _unavailable_row(step: Step, result: StepResult, batch: int) -> dict:
    """A bench row for a variant whose step did not produce a file (Ultralytics-style); its format and
    backend come from the format table (:meth:`vggc.formats.Format.unavailable_row`)."""
    from vggc import formats

    fmt = formats.by_suffix(Path(step.outputs[0]).suffix)
    known = fmt.unavailable_row() if fmt else {"format": None, "backend": "-"}
    return {"model": Path(step.outputs[0]).name, "path": "", "format": known["format"], "backend": known["backend"],
            "precision": step.settings.get("precision") or ("int8" if "int8" in step.name else "-"),
            "status": result.status.removeprefix("unavailable: "), "top1": None, "delta_pt": None, "latency_p50_ms": None,
            "latency_p90_ms": None, "throughput": None, "speedup": None, "batch": batch, "size_mb": None,
            "params": None, "macs": None, "note": f"pipeline step {step.name}"}


def run_pipeline(weights: str | os.PathLike, data: str | os.PathLike, *, preset: str = "quick",
                 out_dir: str | os.PathLike | None = None, seed: int = 0, force: bool = False,
                 only: list[str] | None = None, threads: int | None = None, progress: Progress = no_progress,
                 log: Callable[[str], None] = lambda _m: None, max_drop_pt: float | None = None,
                 prune_targets: tuple[float, ...] | None = None, time_budget: str | float | None = "preset") -> dict:
    """Run every stage on ``weights`` and bench the results; return a summary dict.

    ``weights``, ``data`` and ``out_dir`` as the user gave them: the recorded rebuild commands name
    the inputs so and every file under ``out_dir`` as ``$OUT/<file>`` (``out_as_given`` in the summary
    and in ``pipeline.json`` is what ``OUT`` stands for).
    ``threads`` (default: all cores) is the CPU thread count of every step, the bench included;
    it keys the bench's timings (another count re-times the bench, nothing else reruns).
    The summary holds ``steps`` (name, status, seconds, ``spent`` (what its output cost to make, across
    killed runs and cached reuse), ``why`` it ran or was reused, the
    ``key_inputs`` it was keyed on and the ``work`` it did: FP32 exports, FP32 evaluations of a
    source), ``work`` (the run's total), ``rows`` (the bench rows, including a row for each variant
    that could not be built), ``report`` (path of report.md), ``threads`` and timings.
    ``max_drop_pt``: the top-1 budget (``vggc bench --max-drop``; default 1 % of the baseline's) of the
    bench's answer, the accuracy-aware INT8 steps and the early stop of pruned targets.
    ``prune_targets``: the frontier's MAC targets (fractions), replacing the preset's.
    ``time_budget``: the training budget (``"6h"``, ``"90m"``, seconds; ``None``/``"off"``: none, every
    variant trains its preset's epochs) that :mod:`vggc.pipeline.allocate` spends; ``"preset"``: the
    preset's (6 h for ``full``, none for ``quick``). With a budget the summary's ``time_budget`` has
    ``seconds`` (the budget), ``step_seconds`` (this run's), ``spent_seconds`` (every step's ``spent``:
    the preset's whole cost when it was made over several runs) and ``within`` (``spent_seconds`` fits).
    """
    import torch

    from vggc.data import detect_layout
    from vggc.models import load_weights

    if preset not in PRESETS:
        raise InputError(f"--preset {preset}: use one of {', '.join(PRESETS)}")
    given = (os.fspath(weights), os.fspath(data))
    weights, data = Path(weights), Path(data)
    detect_layout(data)
    load_weights(weights)  # fail fast, one line, on a bad weights file
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    n_threads = int(threads or os.cpu_count() or 1)
    p = PRESETS[preset]
    if prune_targets:
        if any(not 0.0 < float(t) < 1.0 for t in prune_targets):
            raise InputError(f"--prune-targets {prune_targets}: each must be a fraction between 0 and 1")
        p = replace(p, prune_targets=tuple(float(t) for t in prune_targets))
    from vggc.pipeline.allocate import parse_duration, time_shares

    try:
        if time_budget != "preset":
            p = replace(p, time_budget_s=parse_duration(time_budget))
        if p.time_budget_s is not None:
            time_shares(p.time_budget_s, list(p.targets()), "distill")  # refuses a budget the reserve eats
    except ValueError as err:
        raise InputError(f"--time-budget: {err}") from None
    out_given = os.fspath(out_dir) if out_dir else str(Path("artifacts") / f"{weights.stem}-{preset}")
    out = Path(out_given)
    steps = build_steps(given[0], given[1], p, seed=seed, threads=n_threads, progress=progress,
                        max_drop_pt=max_drop_pt, time_budget_s=p.time_budget_s)
    steps, skipped = _select(steps, only, p, log)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        return _run(weights, data, p, preset, out, steps, skipped, seed=seed, force=force, threads=n_threads,
                    progress=progress, log=log, max_drop_pt=max_drop_pt, given=(*given, out_given))
    finally:
        torch.set_num_threads(prev_threads)


def _select(steps: list[Step], only: list[str] | None, p: Preset,
            log: Callable[[str], None]) -> tuple[list[Step], list[Step]]:
    """Return ``(steps to run, steps the preset skips)``: ``only`` (with their dependencies) when
    given, without the preset's ``skip`` unless ``only`` names them."""
    if only:
        only = _expand_families(only, steps, log)
        unknown = sorted(set(only) - {s.name for s in steps})
        if unknown:
            raise InputError(f"--only {', '.join(unknown)}: unknown step; steps are "
                             f"{', '.join(s.name for s in steps)}")
        keep = set(only)
        changed = True
        while changed:  # pull in dependencies
            changed = False
            for s in steps:
                if s.name in keep and not set(s.deps) <= keep:
                    keep |= set(s.deps)
                    changed = True
        steps = [s for s in steps if s.name in keep]
    skipped = [s for s in steps if (s.name in p.skip or family(s.name) in p.skip) and not (only and s.name in only)]
    return [s for s in steps if s not in skipped], skipped


def _bench_step(weights: Path, data: Path, p: Preset, out: Path, steps: list[Step], results: list[StepResult], *,
                threads: int, progress: Progress, log: Callable[[str], None], max_drop_pt: float | None,
                command: str, produced: dict) -> Step:
    """The bench as a step: keyed by every model file it measures, its settings, the test split
    and the timing environment (CPU, kernel flags, threads, libraries): another machine or thread
    count re-times it (the bench's own accuracy cache keeps the accuracies that still hold). A row
    for each variant whose step did not produce a file and each file's rebuild commands go into the
    bench's outputs (written once); the rows it wrote are left in ``produced["rows"]``."""
    from vggc import provenance
    from vggc.bench.core import run_bench
    from vggc.bench.timing import timing_policy

    models = [weights] + [out / s.outputs[0] for s, r in zip(steps, results) if r.ok and s.model]
    settings = {"quick": p.bench_quick, "limit": p.bench_limit, "batch": p.bench_batch,
                "timing": timing_policy(quick=p.bench_quick).to_dict(), "models": [m.name for m in models],
                "failed": {s.name: r.status for s, r in zip(steps, results) if not r.ok},
                **({"max_drop_pt": max_drop_pt} if max_drop_pt is not None else {})}

    def run(ctx: StepContext) -> dict:
        extra = [_unavailable_row(s, r, p.bench_batch) for s, r in zip(steps, results) if not r.ok and s.model]
        rebuild = {name: {"rebuild": cmds} for name, cmds in _rebuild_commands(steps, results).items()}
        rows = run_bench(models, data, batch=p.bench_batch, quick=p.bench_quick, limit=p.bench_limit,
                         baseline=weights, threads=threads, out=ctx.output().parent, progress=progress, log=log,
                         max_drop_pt=max_drop_pt, command=command, extra_rows=extra, row_fields=rebuild)
        produced["rows"] = rows
        return {"rows": len(rows), "ok": sum(r.get("status") == "ok" for r in rows)}

    return Step("bench", ["bench/results.json", "bench/report.md", "bench/answer.json"], run, inputs=models,
                settings=settings, label=f"bench {len(models)} model files", data=data, splits=("test",),
                environment=lambda: provenance.timing_environment(threads))


def _log_decisions(r: StepResult, log: Callable[[str], None]) -> None:
    """Log what a finished (or cached) step decided, right after its own lines: an INT8 step that could not
    keep to the accuracy budget says so (its row shows the drop); a trained step of a run with a time budget
    says how many epochs it got and why (``metrics["allocation"]``, :mod:`vggc.pipeline.allocate`)."""
    if not r.ok:
        return
    if r.metrics.get("budget_note"):
        log(f"-- {r.name}: {r.metrics['budget_note']}")
    a = r.metrics.get("allocation")
    if a:
        pilot = f"after a {a['pilot_epochs']}-epoch pilot: " if a["extended"] else ""
        log(f"-- {r.name}: {a['epochs']} epoch(s) ({pilot}{a['why']})")


def _run(weights: Path, data: Path, p: Preset, preset: str, out: Path, steps: list[Step], skipped: list[Step], *,
         seed: int, force: bool, threads: int, progress: Progress, log: Callable[[str], None],
         max_drop_pt: float | None = None, given: tuple[str, str, str] | None = None) -> dict:
    """Run the steps and the bench under ``out`` (see :func:`run_pipeline`); return the summary.
    ``given``: ``(weights, data, out)`` as the user gave them."""
    from vggc import work
    from vggc.artifacts import sha256_file, write_json
    from vggc.bench.report import ordered

    w_arg, d_arg, out_arg = given or (str(weights), str(data), str(out))
    with claim_out_dir(out) as stale:
        if stale:
            log(f"-- removed {len(stale)} temporary file(s) left by an interrupted run")
        t0 = time.perf_counter()
        results = run_steps(steps, out, force=force, log=log, after=lambda r: _log_decisions(r, log))
        for s in skipped:
            steps.append(s)
            results.append(StepResult(s.name, f"skipped: not in the {p.name} preset (use --preset full or --only)"))
        produced: dict = {}
        bench_step = _bench_step(weights, data, p, out, steps, results, threads=threads, progress=progress, log=log,
                                 max_drop_pt=max_drop_pt, produced=produced,
                                 command=f"vggc pipeline {w_arg} --data {d_arg} --preset {preset} --threads {threads}")
        bench_result = run_steps([bench_step], out, force=force, log=log)[0]
        results.append(bench_result)
        if "rows" in produced:  # measured now: the rows as results.json holds them (JSON values)
            rows = json.loads(json.dumps([ordered(r) for r in produced["rows"]], default=str))
        else:  # reused: the rows are the bench's output of the run that made it
            rows = json.loads((out / "bench" / "results.json").read_text()) if bench_result.ok else []
        total = work.total([r.work for r in results])
        summary = {
            "weights": str(weights), "weights_sha256": sha256_file(weights), "data": str(data),
            "preset": asdict(p), "seed": seed, "threads": threads, "out": str(out), "out_as_given": out_arg,
            "steps": [r.to_dict() for r in results],
            "step_seconds": round(sum(r.seconds for r in results), 2),
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "work": total,
            "report": str(out / "bench" / "report.md"), "rows": rows,
        }
        if p.time_budget_s:
            spent = round(sum(r.spent for r in results), 2)
            summary["time_budget"] = {"seconds": p.time_budget_s, "step_seconds": summary["step_seconds"],
                                      "spent_seconds": spent, "within": spent <= p.time_budget_s}
            log(f"-- time budget {p.time_budget_s / 3600:.2f} h: the steps cost {spent / 3600:.2f} h in all "
                f"({'within' if spent <= p.time_budget_s else 'OVER'} it; cached steps at what they cost when made, "
                f"training a killed run did included), {summary['step_seconds'] / 3600:.2f} h of it in this run")
        write_json(out / "pipeline.json", {k: v for k, v in summary.items() if k != "rows"})
        if any(total.get(k) for k in ("fp32_exports", "fp32_source_evals")):
            log(f"-- work: {work.describe(total)}")
        return summary


__all__ = ["PRESETS", "Preset", "build_steps", "run_pipeline"]
