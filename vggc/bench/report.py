"""Bench outputs: results.json / results.csv (one row per (model, backend)), answer.json (the
recommended variant per target, :mod:`vggc.bench.answer`), report.md, the screen table.

Every file is written atomically (:mod:`vggc.artifacts`); ``results.json`` gets a manifest.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vggc.artifacts import atomic_path, write_json, write_manifest
from vggc.bench.answer import ANSWER_NAME, answer, markdown_section, marks
from vggc.bench.baseline import best_variant, budget_pt, marginal, ran_ok, settled, settled_flag
from vggc.bench.curves import CURVES_PNG, learning_curves
from vggc.bench.curves import markdown_section as curves_section
from vggc.bench.machine import describe_flags
from vggc.bench.rebuild import STEPS_DIR

# JSON/CSV columns, in order. The first 13 are the contract later stages rely on.
CONTRACT = ("model", "backend", "precision", "status", "top1", "delta_pt", "latency_p50_ms", "latency_p90_ms",
            "throughput", "batch", "size_mb", "params", "macs")
COLUMNS = CONTRACT + ("speedup", "format", "device", "note", "n_images", "quick", "threads", "compile_s", "load_s",
                      "accuracy_cached", "timing_reps_batch", "timing_reps_b1", "timing_stable", "timing_spread",
                      "is_baseline", "path", "delta_se_pt", "baseline_agreement", "within_budget",
                      "budget_marginal", "timing_stable_batch", "timing_stable_b1")


def load_note(start, end, cores) -> str:
    """Return a warning when the 1-minute load average was above the core count (other processes
    competed with the bench, inflating its timings), else an empty string."""
    loads = [float(x[0]) for x in (start, end) if x]
    if not cores or not loads or max(loads) <= cores + 0.5:
        return ""
    return f" (1-min load above the {cores} cores: other processes were competing and timings are inflated)"


def ordered(row: dict) -> dict:
    """Return ``row`` with the known columns first, in :data:`COLUMNS` order."""
    out = {k: row.get(k) for k in COLUMNS}
    out.update({k: v for k, v in row.items() if k not in out})
    return out


# ----------------------------------------------------------------------------- formatting

def _f(v, fmt: str, empty: str = "-") -> str:
    return empty if v is None else format(v, fmt)


def _millions(v) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def _delta(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def subset_label(ctx: dict) -> str:
    """The line that says which images the accuracy is over (every output carries it)."""
    n, total = ctx.get("n_images"), ctx.get("split_size")
    if n is None or total is None:
        return "top-1 on the test split"
    if ctx.get("quick"):
        what = (f"a class-balanced subset of {n:,} of the {total:,} test images (seed {ctx.get('subset_seed')})"
                if n < total else f"all {n:,} test images (the split has no more)")
        return f"QUICK run: top-1 on {what}, shorter timing; not comparable to full-test-set numbers"
    if n < total:
        return f"top-1 on a class-balanced subset of {n:,} of the {total:,} test images (seed {ctx.get('subset_seed')})"
    return f"top-1 on all {n:,} test images"


UNSTABLE = ("~ = a timing that did not settle (its interleaved rounds disagreed, or it hit the time cap); "
            "treat as rough; the row cannot be the recommended variant on that metric (throughput: batch N, "
            "latency: batch 1)")
MARGINAL = ("? = the top-1 drop is within one standard error (± pt, paired over the same images) of the budget: "
            "whether it is within the budget rests on less than one SE")


def _se(r: dict) -> str:
    se = r.get("delta_se_pt")
    return "-" if se is None else f"{se:.2f}" + ("?" if r.get("budget_marginal") else "")


def _cells(r: dict) -> list[str]:
    t1 = "~" if settled_flag(r, "latency_p50_ms") is False else ""  # each column marked by its own timing
    tn = "~" if settled_flag(r, "throughput") is False else ""
    return [_f(100 * r["top1"] if r["top1"] is not None else None, ".2f"), _delta(r["delta_pt"]), _se(r),
            t1 + _f(r["latency_p50_ms"], ".2f"), t1 + _f(r["latency_p90_ms"], ".2f"), tn + _f(r["throughput"], ".1f"),
            _f(r["speedup"], ".2f") + ("x" if r["speedup"] is not None else ""),
            _f(r["size_mb"], ".2f"), _millions(r["params"]), _millions(r["macs"]), _f(r["compile_s"], ".2f")]


HEAD = ["top-1 %", "Δ pt", "± pt", "p50 ms", "p90 ms", "img/s", "speedup", "MB", "params M", "MACs M", "compile s"]


def _notes(rows: list[dict]) -> dict[str, int]:
    notes: dict[str, int] = {}
    for r in rows:
        if r.get("note") and r["note"] not in notes:
            notes[r["note"]] = len(notes) + 1
    return notes


def screen_table(rows: list[dict], ctx: dict | None = None, width: int = 34) -> str:
    """Return the fixed-width table printed by ``vggc bench`` (rows that cannot run show the reason)."""
    ctx = ctx or {}
    notes = _notes(rows)
    batch = ctx.get("batch") or (rows[0]["batch"] if rows else "N")
    head = ["model", "backend", "prec"] + HEAD
    head[8] = f"img/s@{batch}"
    wm = max([5] + [min(width, len(r["model"])) for r in rows])
    wb = max([7] + [len(r["backend"]) + (4 if r.get("note") else 0) for r in rows])
    widths = [wm, wb, 5, 7, 7, 6, 8, 8, 9, 7, 7, 8, 8, 9]
    lines = []

    def fmt(cells):
        parts = [f"{c:<{w}}" if i < 3 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    lines.append(fmt(head))
    lines.append("-" * len(lines[0]))
    for r in rows:
        name = r["model"] if len(r["model"]) <= wm else r["model"][: wm - 1] + "…"
        be = r["backend"] + (f" [{notes[r['note']]}]" if r.get("note") else "")
        base = [name, be, r["precision"] or "-"]
        if r["status"] == "ok":
            lines.append(fmt(base + _cells(r)) + ("  <- baseline" if r.get("is_baseline") else ""))
        else:
            lead = "  ".join(f"{c:<{w}}" for c, w in zip(base, widths[:3], strict=True))
            lines.append(f"{lead}  unavailable: {r['status']}")
    for text, i in notes.items():
        lines.append(f"[{i}] {text}")
    if any(r.get("timing_stable") is False and r["status"] == "ok" for r in rows):
        lines.append(UNSTABLE)
    if any(r.get("budget_marginal") for r in rows):
        lines.append(MARGINAL)
    summary = summary_lines(rows, ctx_budget(ctx))
    if summary:
        lines += ["", "each model on its best backend:", *(f"  {x}" for x in summary)]
    return "\n".join(lines)


def best_per_model(rows: list[dict]) -> list[dict]:
    """Return, for each model (files with the same stem, e.g. ``m.pt`` and its export ``m.onnx``,
    are one model) with a row that ran, its best backend: the highest throughput at the bench batch
    (``file``, ``backend``, ``throughput``, ``speedup``, ``top1``, ``delta_pt``) and the lowest
    batch-1 p50 (``p50_file``, ``p50_backend``, ``latency_p50_ms``), in the rows' order."""
    best: dict[str, dict] = {}
    for r in rows:
        if r.get("status") != "ok" or r.get("throughput") is None:
            continue
        stem = Path(r["model"]).stem
        b = best.setdefault(stem, {"model": stem, "throughput": -1.0, "latency_p50_ms": None})
        if r["throughput"] > b["throughput"]:
            b.update(file=r["model"], backend=r["backend"], throughput=r["throughput"], speedup=r.get("speedup"),
                     top1=r.get("top1"), delta_pt=r.get("delta_pt"), precision=r.get("precision"))
        p50 = r.get("latency_p50_ms")
        if p50 is not None and (b["latency_p50_ms"] is None or p50 < b["latency_p50_ms"]):
            b.update(p50_file=r["model"], p50_backend=r["backend"], latency_p50_ms=p50)
    return list(best.values())


def ctx_budget(ctx: dict) -> float | None:
    """Return the ``max_drop_pt`` a run asked for (``None``: the default, 1 % of the baseline's top-1)."""
    return None if ctx.get("max_drop_default") else ctx.get("max_drop_pt")


def ctx_out_dir(ctx: dict, out: Path | None = None) -> str | None:
    """Return the run's output directory as the user gave it, the ``$OUT`` of the answer's rebuild
    commands: ``ctx["run_out"]`` (a pipeline's ``--out``) when recorded, else the directory above
    ``out`` (the bench's own) when that holds a pipeline's step markers (``.steps/``: the bench of a
    pipeline run writes to ``<run>/bench``); ``None`` otherwise (a plain bench:
    :func:`vggc.bench.answer.answer` reads it off the rows' ``$OUT`` commands, if any)."""
    if ctx.get("run_out"):
        return str(ctx["run_out"])
    if out is not None and (Path(out).parent / STEPS_DIR).is_dir():
        return str(Path(out).parent)
    return None


def recommendation(rows: list[dict], max_drop_pt: float | None = None, details: bool = True) -> list[str]:
    """Return the line that names the fastest variant within the top-1 budget (the rule of
    :func:`vggc.bench.baseline.qualifies`) with what that verdict rests on (its paired standard
    error; whether it is within one SE of the budget); with ``details``, then one line per faster
    row that was left out, saying why. Empty without a baseline row."""
    base = next((r for r in rows if r.get("is_baseline") and ran_ok(r)), None)
    budget = budget_pt(base, max_drop_pt)
    if base is None or budget is None:
        return []
    what = f"top-1 drop ≤ {budget:.2f} pt" + (" = 1% of the baseline's top-1" if max_drop_pt is None else "")
    v = best_variant(rows, max_drop_pt=budget)
    if v is None:
        return [f"no variant within the budget ({what}) has a settled timing"]
    se = v.get("delta_se_pt")
    line = (f"fastest variant within the budget ({what}): {v['model']} on {v['backend']} — "
            f"{v['throughput']:.1f} img/s, {_f(v.get('speedup'), '.2f')}x the baseline, top-1 {100 * v['top1']:.2f}% "
            f"(Δ {v['delta_pt']:+.2f}" + (f" ± {se:.2f} pt SE, paired over {v.get('n_images')} images)" if se is not None
                                          else " pt)"))
    if marginal(v, base, budget):
        line += (f"; its qualification rests on less than one SE (|drop − budget| = "
                 f"{abs(-v['delta_pt'] - budget):.2f} pt < {se:.2f} pt)")
    lines = [line]
    for r in rows if details else []:
        if r is v or not ran_ok(r) or r.get("throughput") is None or r["throughput"] <= v["throughput"]:
            continue
        drop = -r["delta_pt"] if r.get("delta_pt") is not None else float("nan")
        why = ("its batch-N timing did not settle" if not settled(r, "throughput")
               else f"top-1 drop {drop:.2f} pt > {budget:.2f} pt" + (" by less than one SE: not settled by these images"
                                                                     if marginal(r, base, budget) else ""))
        lines.append(f"faster but left out: {r['model']} on {r['backend']} ({r['throughput']:.1f} img/s): {why}")
    return lines


def summary_lines(rows: list[dict], max_drop_pt: float | None = None) -> list[str]:
    """Return the summary printed under the table: each model on its best backend, and the fastest
    variant within the top-1 budget (:func:`recommendation`)."""
    lines = []
    for b in best_per_model(rows):
        speed = f" ({b['speedup']:.2f}x)" if b.get("speedup") is not None else ""
        acc = f"{100 * b['top1']:.2f}%" if b.get("top1") is not None else "-"
        lines.append(f"{b['model']}: {acc}; {b['throughput']:.1f} img/s{speed} ({Path(b['file']).suffix} on "
                     f"{b['backend']}); batch-1 p50 {b['latency_p50_ms']:.2f} ms ({Path(b['p50_file']).suffix} on "
                     f"{b['p50_backend']})")
    return lines + recommendation(rows, max_drop_pt, details=False)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], batch) -> str:
    notes = _notes(rows)
    head = ["model", "backend", "precision", "status"] + HEAD
    head[9] = f"img/s (batch {batch})"
    head[7] = "p50 ms (batch 1)"
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(HEAD)) + "|"]
    for r in rows:
        be = r["backend"] + (f" [{notes[r['note']]}]" if r.get("note") else "")
        status = "ok" + (" (baseline)" if r.get("is_baseline") else "") if r["status"] == "ok" else r["status"]
        cells = _cells(r) if r["status"] == "ok" else ["-"] * len(HEAD)
        out.append("| " + " | ".join(_md_escape(c) for c in [r["model"], be, r["precision"] or "-", status, *cells])
                   + " |")
    for text, i in notes.items():
        out.append(f"\n[{i}] {_md_escape(text)}")
    if any(r.get("timing_stable") is False and r["status"] == "ok" for r in rows):
        out.append(f"\n{UNSTABLE}")
    if any(r.get("budget_marginal") for r in rows):
        out.append(f"\n{MARGINAL}")
    return "\n".join(out)


def timing_method(pol: dict) -> str:
    """Return the report's one-paragraph description of a timing policy (``ctx["timing"]``)."""
    if pol.get("mode") == "interleaved":
        return (f"- Timing: after every accuracy pass, all rows that ran are timed together in {pol.get('rounds')} "
                f"interleaved rounds ({pol.get('warmup')} warm-up calls each first); a round times every row at "
                "batch N and then at batch 1, in reverse order every other round, so the ratios between rows "
                "come from the same minutes of the machine. Medians and p90 are over all calls of all rounds; "
                f"`timing_spread` is the interquartile range of a row's per-round batch-N medians over their "
                f"median; `timing_stable_batch: false` (~ on img/s) when it exceeds "
                f"{100 * (pol.get('spread_tol') or 0):.0f}%, `timing_stable_b1: false` (~ on the latencies) when "
                "batch 1's does, and `timing_stable` is true when both settled.")
    return (f"- Timing: each row alone, right after its accuracy pass: {pol.get('warmup')} warm-up calls, then at "
            f"least {pol.get('min_reps')} calls and {pol.get('min_time_s')} s, until the median moves < "
            f"{100 * (pol.get('rel_tol') or 0):.0f}% when the last quarter of samples is added; capped at "
            f"{pol.get('max_time_s')} s (`timing_stable_batch` / `timing_stable_b1: false` in results.json when "
            "the cap stopped the batch-N / batch-1 timing, `timing_stable: false` when either).")


def markdown_report(rows: list[dict], ctx: dict, answer_doc: dict | None = None,
                    curves: list[str] = ()) -> str:
    """Return report.md: what was measured, the table, how, on which machine, the learning curves
    (``curves``: the lines of :func:`vggc.bench.curves.markdown_section`) and last "The answer"
    (``answer_doc``, default :func:`vggc.bench.answer.answer` of ``rows``)."""
    m = ctx.get("machine", {})
    pol = ctx.get("timing", {})
    base = ctx.get("baseline")
    lines = [f"# vggc bench ({m.get('date', '')})", ""]
    lines.append(f"> **{subset_label(ctx)}.**" if ctx.get("quick") else f"> {subset_label(ctx)}.")
    lines += ["", f"Command: `{ctx.get('command') or 'run_bench(...)'}`", ""]
    lines += [markdown_table(rows, ctx.get("batch")), ""]
    if base:
        lines.append(f"Baseline (Δ pt and speedup): **{base['model']} on {base['backend']}** "
                     f"(top-1 {100 * base['top1']:.2f}%, {base['throughput']} img/s)"
                     + (f", requested as `{ctx['baseline_requested']}`" if ctx.get("baseline_requested") else "")
                     + ".")
    else:
        lines.append("Baseline: none of the requested baseline rows ran, so Δ pt and speedup are empty.")
    best = best_per_model(rows)
    if best:
        lines += ["", "## Each model on its best backend", "",
                  f"| model | top-1 % | Δ pt | best img/s (batch {ctx.get('batch')}) | speedup | file, backend | "
                  "best p50 ms (batch 1) | file, backend |", "|---|---:|---:|---:|---:|---|---:|---|"]
        for b in best:
            lines.append(f"| {_md_escape(b['model'])} | {_f(100 * b['top1'] if b.get('top1') is not None else None, '.2f')}"
                         f" | {_delta(b.get('delta_pt'))} | {b['throughput']:.1f} | {_f(b.get('speedup'), '.2f')}x | "
                         f"{_md_escape(b['file'])}, {b['backend']} | {_f(b['latency_p50_ms'], '.2f')} | "
                         f"{_md_escape(b['p50_file'])}, {b['p50_backend']} |")
        rec = recommendation(rows, ctx_budget(ctx))
        if rec:
            lines += ["", "## Recommendation", "", f"- {_md_escape(rec[0][0].upper() + rec[0][1:])}."]
            lines += [f"  - {_md_escape(x[0].upper() + x[1:])}." for x in rec[1:]]
    if ctx.get("not_run_by_default"):
        lines += ["", "Not run (not in the default backend set here; name them in `--backends` or use `all`):"]
        lines += [f"- `{k}`: {_md_escape(v)}" for k, v in ctx["not_run_by_default"].items()]
    lines += ["", "## Method", "",
              f"- Accuracy: {subset_label(ctx)}; batch {ctx.get('batch')}, a short last batch padded to "
              f"{ctx.get('batch')} (extra outputs dropped). Cached per (model files SHA-256, backend and "
              "precision, the evaluated images, preprocessing, batch, threads, vggc source, library versions, "
              f"CPU ISA flags) in `{ctx.get('accuracy_cache') or 'nowhere (--no-cache)'}`; "
              "`accuracy_cached` in results.json says which rows came from it. Timings are never cached.",
              "- Budget: a variant is within budget when its timing settled and it loses at most "
              f"{_f(ctx.get('max_drop_pt'), '.2f')} pt of top-1 against the baseline"
              + (" (1% of the baseline's top-1; `--max-drop` sets it)" if ctx.get("max_drop_default", True) else "")
              + ". `± pt` (`delta_se_pt`) is the standard error of Δ pt paired over the same images "
              "(SD of correct_row − correct_baseline per image / √n); `?` marks a verdict closer to the budget "
              "than one SE. `baseline_agreement`: fraction of images with the baseline's predicted class.",
              f"- Latency: p50/p90 of single calls at batch 1 (ms). Throughput: batch {ctx.get('batch')} / "
              "median call time (img/s); a call includes the host->device copy and the logits back on the CPU.",
              timing_method(pol),
              "- compile s: the runner's own build time plus how much longer the first call at batch N and "
              "at batch 1 took than the steady median (torch.compile, engine builds).",
              f"- Threads: {ctx.get('threads')} (torch.set_num_threads and ONNX Runtime intra-op threads).",
              "- Size: all files the model needs, on disk (MB = 10^6 bytes). MACs: one image at its input size.",
              "", "## Machine", ""]
    gpus = m.get("gpus") or []
    lines += [f"- CPU: {m.get('cpu')} — {m.get('logical_cores')} logical cores"
              + (f", {m.get('physical_cores')} physical" if m.get("physical_cores") else "")
              + f"; torch CPU capability {m.get('cpu_capability')}",
              f"- CPU flags: {describe_flags(m.get('cpu_flags') or [])}; native bf16: "
              f"{'yes' if m.get('native_bf16') else 'no (emulated)'}",
              f"- Threads used: {m.get('threads')}; load average (1, 5, 15 min) at the start "
              f"{ctx.get('load_average_start')}, at the end {m.get('load_average')}"
              + load_note(ctx.get("load_average_start"), m.get("load_average"), m.get("logical_cores")),
              "- GPU: " + (", ".join(f"{g['name']} ({g['memory_gb']} GB, sm {g['capability']})" for g in gpus)
                           if gpus else "none (torch.cuda.is_available() is False)"),
              "- Libraries: " + ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items()),
              f"- ONNX Runtime providers: {', '.join(m.get('onnxruntime_providers') or []) or '-'}",
              f"- Python {m.get('python')} on {m.get('platform')}",
              f"- Quick: {'yes' if ctx.get('quick') else 'no'}",
              ""]
    if ctx.get("plot"):
        lines += ["![top-1 vs throughput](pareto.png)", ""]
    lines += list(curves)
    doc = answer_doc if answer_doc is not None else answer(rows, ctx_budget(ctx), ctx_out_dir(ctx))
    lines += markdown_section(doc) + [""]
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def write_outputs(rows, out: Path, plot: bool = True) -> dict[str, Path]:
    """Write results.json (+ manifest, whose ``learning_curves`` holds
    :func:`vggc.bench.curves.learning_curves` of the rows' files), results.csv, answer.json,
    report.md, pareto.png and learning_curves.png (when a trained variant has a per-epoch top-1)
    into ``out``; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = getattr(rows, "context", {}) or {}
    data = [ordered(r) for r in rows]
    paths = {"json": out / "results.json", "csv": out / "results.csv", "answer": out / ANSWER_NAME,
             "report": out / "report.md"}
    write_json(paths["json"], data)
    inputs = {}
    for r in data:
        p = Path(r["path"])
        if p.is_file() and all(Path(v) != p for v in inputs.values()):
            inputs[f"model{len(inputs)}"] = p
    curves = learning_curves(dict.fromkeys(r.get("path") for r in data))
    settings = {k: v for k, v in ctx.items() if k not in ("machine", "outputs")}
    write_manifest(paths["json"], kind="bench", inputs=inputs, settings=settings,
                   metrics={"rows": len(data), "ok": sum(r["status"] == "ok" for r in data)},
                   extra={"machine": ctx.get("machine", {}), "learning_curves": curves})
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(csv_text(data))
    doc = answer(data, ctx_budget(ctx), ctx_out_dir(ctx, out))
    write_json(paths["answer"], doc)
    draw_curves, why_not = _curves_plan(curves, plot)
    with atomic_path(paths["report"]) as tmp:
        tmp.write_text(markdown_report(data, ctx, doc, curves_section(curves, CURVES_PNG if draw_curves else None,
                                                                      why_not)))
    paths.update(_write_plots(data, doc, curves, out, ctx, plot=plot, draw_curves=draw_curves))
    return paths


def _curves_plan(curves: list[dict], plot: bool) -> tuple[bool, str | None]:
    """Return ``(draw learning_curves.png?, why not)``: drawn when plots are on and a curve has a
    per-epoch top-1."""
    from vggc.bench.curves_plot import drawable

    if not plot:
        return False, "plots are off (--no-plot)"
    if not drawable(curves):
        return False, "no trained variant's manifest records a per-epoch top-1"
    return True, None


def _write_plots(data: list[dict], doc: dict, curves: list[dict], out: Path, ctx: dict, *, plot: bool,
                 draw_curves: bool) -> dict[str, Path]:
    """Write pareto.png (with ``plot``) and learning_curves.png (with ``draw_curves``) into ``out``,
    removing the earlier run's copy of one not drawn (it would not match these results); return
    ``{"plot": ..., "curves": ...}`` of those written."""
    from vggc.bench.plot import budget_lines

    written = {}
    png, curves_png = out / "pareto.png", out / CURVES_PNG
    if plot:
        from vggc.bench.plot import plot_pareto

        plot_pareto(data, png, title=subset_label(ctx) if ctx else "", marks=marks(doc), lines=budget_lines(doc))
        written["plot"] = png
    else:
        png.unlink(missing_ok=True)
    if draw_curves:
        from vggc.bench.curves_plot import plot_curves

        plot_curves(curves, curves_png, lines=budget_lines(doc),
                    title="top-1 per epoch on each run's evaluation images; floor: the bench baseline's "
                          "top-1 minus the budget")
        written["curves"] = curves_png
    else:
        curves_png.unlink(missing_ok=True)
    return written
