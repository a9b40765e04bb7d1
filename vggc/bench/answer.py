"""The answer: per deployment target, *the* recommended variant of a bench run and the commands
that rebuild it from the source state_dict (``answer.json``, the end of report.md and of the screen).

Targets: ``cpu-throughput`` (highest img/s at the bench batch), ``cpu-latency`` (lowest batch-1
p50) over CPU backends and, when a GPU row ran, ``gpu-throughput`` / ``gpu-latency`` over GPU
backends (:func:`is_gpu_row`). A target's variant is the best row on its metric among those that
:func:`vggc.bench.baseline.qualifies` (ran, the timing of the target's own metric settled: batch N for
throughput, batch 1 for latency; top-1 drop within the budget: the run's
``--max-drop``, default 1 % of the baseline's top-1); the same is answered at the wider 98 % line
(a drop of at most :data:`WIDE_FRACTION` of the baseline's top-1). No qualifying row: ``None`` and
the reason.

Rebuild commands (:mod:`vggc.bench.rebuild`): the row's own ``rebuild`` list (the pipeline fills
it), else the commands recorded up the chain of manifests from the file to the source, else
:data:`NOT_RECORDED`; never invented. They are written relative to the run's output directory
(``out_dir``: its ``--out`` as given): paths inside it read ``$OUT/...``, and ``answer.json``'s
``out_dir``, report.md's ``sh`` blocks (first line ``OUT=...``) and the screen say once what ``OUT`` is.
"""

from __future__ import annotations

from vggc.bench.baseline import budget_pt, marginal, qualifies, ran_ok, settled
from vggc.bench.rebuild import (  # noqa: F401 - re-exported: the answer's rebuild commands
    MAX_REBUILD_LINKS,
    NOT_RECORDED,
    REBUILD_ROLES,
    infer_out_dir,
    machine_paths,
    manifest_commands,
    out_line,
    rebuild_commands,
    relative_command,
    uses_out,
)
from vggc.errors import first_line

ANSWER_NAME = "answer.json"
WIDE_FRACTION = 0.02  # the 98 % line: a variant may lose at most 2 % of the baseline's top-1

# target -> (GPU target?, metric, higher is better, what it optimises)
TARGETS = {
    "cpu-throughput": (False, "throughput", True, "highest img/s at the bench batch on a CPU backend"),
    "cpu-latency": (False, "latency_p50_ms", False, "lowest batch-1 p50 latency on a CPU backend"),
    "gpu-throughput": (True, "throughput", True, "highest img/s at the bench batch on a GPU backend"),
    "gpu-latency": (True, "latency_p50_ms", False, "lowest batch-1 p50 latency on a GPU backend"),
}
SUMMARY_KEYS = ("model", "path", "backend", "precision", "top1", "delta_pt", "delta_se_pt", "speedup", "throughput",
                "latency_p50_ms", "size_mb", "timing_stable")


def is_gpu_row(row: dict) -> bool:
    """Return whether ``row``'s backend runs on a GPU: its name contains ``cuda`` or ``tensorrt``."""
    backend = str(row.get("backend") or "")
    return "cuda" in backend or "tensorrt" in backend


def _drop(row: dict, base: dict) -> float:
    return 100.0 * (base["top1"] - row["top1"])


def choose(rows: list[dict], target: str, base: dict | None, budget: float | None) -> tuple[dict | None, str | None]:
    """Return ``(row, None)``: the row of ``target`` (a key of :data:`TARGETS`) within ``budget``
    percentage points of ``base``'s top-1, or ``(None, why)`` when no row qualifies."""
    gpu, metric, higher, _ = TARGETS[target]
    kind = "GPU" if gpu else "CPU"
    if base is None or budget is None:
        return None, "no baseline row ran, so there is no top-1 budget"
    ran = [r for r in rows if ran_ok(r) and is_gpu_row(r) == gpu]
    if not ran:
        return None, f"no {kind} row ran"
    ok = [r for r in ran if r.get(metric) is not None and qualifies(r, base, budget, metric)]
    if ok:
        pick = max(ok, key=lambda r: r[metric]) if higher else min(ok, key=lambda r: r[metric])
        return pick, None
    within = [r for r in ran if _drop(r, base) <= budget + 1e-9]
    unsettled = [r for r in within if not settled(r, metric)]
    untimed = [r for r in within if settled(r, metric) and r.get(metric) is None]
    parts = [f"{len(ran) - len(within)} lose more than {budget:.2f} pt of top-1"] if len(within) < len(ran) else []
    if unsettled:
        parts.append(f"{len(unsettled)} within it have an unsettled timing")
    if untimed:
        parts.append(f"{len(untimed)} within it have no {'batch-1 latency' if metric != 'throughput' else 'throughput'}")
    return None, f"none of the {len(ran)} {kind} rows that ran qualifies: " + "; ".join(parts)


def relative_rebuild(row: dict, base: dict | None, out_dir: str | None) -> tuple[list[str], str | None, str | None]:
    """Return :func:`rebuild_commands` of ``row`` with every path inside ``out_dir`` written
    ``$OUT/...`` (:func:`relative_command`)."""
    commands, source, note = rebuild_commands(row, base)
    return [relative_command(c, out_dir) for c in commands], source, note


def summarize(row: dict, base: dict, budget: float, rebuild: tuple[list[str], str | None, str | None]) -> dict:
    """Return ``answer.json``'s summary of a chosen row: its file, backend, top-1, Δ, speed-ups
    (``speedup``: throughput ratio; ``latency_speedup``: the baseline's batch-1 p50 over the row's),
    size, whether its verdict rests on less than one SE, its rebuild commands and
    ``rebuild_machine_paths``: the absolute paths they still name (outside the run's directory)."""
    out = {k: row.get(k) for k in SUMMARY_KEYS}
    b1, r1 = base.get("latency_p50_ms"), row.get("latency_p50_ms")
    out["latency_speedup"] = round(b1 / r1, 3) if b1 and r1 else None
    out["budget_marginal"] = marginal(row, base, budget)
    out["rebuild"], out["rebuild_from"], out["rebuild_note"] = rebuild
    out["rebuild_machine_paths"] = machine_paths(rebuild[0])
    return out


def _answers(rows: list[dict], targets: list[str], base: dict | None, budget: float | None, rebuilds: dict,
             out_dir: str | None = None) -> dict:
    got: dict = {"max_drop_pt": round(budget, 4) if budget is not None else None, "targets": {}, "reasons": {}}
    for t in targets:
        row, why = choose(rows, t, base, budget)
        if row is not None and id(row) not in rebuilds:
            rebuilds[id(row)] = relative_rebuild(row, base, out_dir)
        got["targets"][t] = summarize(row, base, budget, rebuilds[id(row)]) if row is not None else None
        if why:
            got["reasons"][t] = why
    return got


def answer(rows: list[dict], max_drop_pt: float | None = None, out_dir: str | None = None) -> dict:
    """Return the answer (``answer.json``): ``targets`` (target -> row summary or ``None``) and
    ``reasons`` (target -> why ``None``) within the budget ``max_drop_pt`` (default 1 % of the
    baseline's top-1; ``budget_rule`` says which), the same at the 98 % line under ``at_98pct``,
    the ``baseline``, the bench ``batch``, ``gpu_note`` when GPU rows were asked for but none ran,
    and ``out_dir``: the run's output directory as the user gave it (``out_dir``, else read off a
    row whose recorded commands say ``$OUT``, :func:`infer_out_dir`; ``None`` when unknown), the
    ``$OUT`` of the rebuild commands, in which the paths inside it are written ``$OUT/...``."""
    if out_dir is None:
        out_dir = next((d for d in map(infer_out_dir, rows) if d is not None), None)
    out_dir = str(out_dir) if out_dir is not None else None
    base = next((r for r in rows if r.get("is_baseline") and ran_ok(r)), None)
    budget = budget_pt(base, max_drop_pt)
    gpu_ran = any(ran_ok(r) and is_gpu_row(r) for r in rows)
    targets = [t for t, (gpu, *_rest) in TARGETS.items() if not gpu or gpu_ran]
    rebuilds: dict = {}
    doc = {"baseline": ({k: base.get(k) for k in ("model", "path", "backend", "top1", "throughput", "latency_p50_ms")}
                        if base else None),
           "batch": next((r.get("batch") for r in rows if r.get("batch")), None),
           "budget_rule": "--max-drop" if max_drop_pt is not None else "1% of the baseline's top-1",
           "out_dir": out_dir,
           **_answers(rows, targets, base, budget, rebuilds, out_dir),
           "at_98pct": _answers(rows, targets, base, 100.0 * WIDE_FRACTION * base["top1"] if base else None, rebuilds,
                                out_dir)}
    failed: dict[str, list[str]] = {}  # why -> the GPU backends that did not run for it
    for r in rows:
        if is_gpu_row(r) and not ran_ok(r):
            keys = failed.setdefault(first_line(str(r.get("status")), 80), [])
            keys += [r["backend"]] if r["backend"] not in keys else []
    doc["gpu_note"] = (None if gpu_ran or not failed else
                       "no GPU row ran: " + "; ".join(f"{', '.join(ks)} ({why})" for why, ks in failed.items()))
    return doc


def same_row(a: dict | None, b: dict | None) -> bool:
    """Return whether two summaries name the same (file, backend)."""
    return a is not None and b is not None and row_key(a) == row_key(b)


def row_key(s: dict) -> tuple:
    """Return what identifies a row or its summary: ``(path, model, backend)``."""
    return s.get("path"), s.get("model"), s.get("backend")


def marks(doc: dict) -> list[tuple[tuple, str, bool]]:
    """Return what the Pareto plot marks: ``(key, label, within the budget)`` per distinct
    recommended row (``key``: :func:`row_key` of it), ``label`` naming its targets
    ("recommended (cpu-throughput, cpu-latency)"), then the 98 % line's rows that differ from every recommended one ("at ≥ 98 % (...)")."""
    out: list[tuple[tuple, str, bool]] = []
    for part, lead, main in ((doc, "recommended", True), (doc.get("at_98pct") or {}, "at ≥ 98 %", False)):
        groups: dict[tuple, list[str]] = {}
        for t, s in (part.get("targets") or {}).items():
            if s is None or (not main and any(same_row(s, m) for m in doc["targets"].values())):
                continue
            groups.setdefault(row_key(s), []).append(t)
        out += [(k, f"{lead} ({', '.join(ts)})", main) for k, ts in groups.items()]
    return out


# ----------------------------------------------------------------------------- text

def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def where(s: dict) -> str:
    """Return "file on backend (precision)" of a chosen row's summary."""
    return f"{s['model']} on {s['backend']} ({s.get('precision') or '-'})"


def numbers(s: dict, target: str, doc: dict) -> str:
    """Return a chosen row's top-1, Δ (± SE), the speed-up on ``target``'s metric against the
    baseline, and size, as one phrase."""
    se = f" ± {s['delta_se_pt']:.2f}" if s.get("delta_se_pt") is not None else ""
    if TARGETS[target][1] == "throughput":
        speed = f"{_num(s.get('throughput'), '.1f')} img/s = {_num(s.get('speedup'), '.2f')}x the baseline's"
    else:
        ls = s.get("latency_speedup")
        rel = ("" if ls is None else f" = {ls:.2f}x faster than" if ls >= 1 else f" = {1 / ls:.2f}x slower than")
        speed = (f"batch-1 p50 {_num(s.get('latency_p50_ms'), '.2f')} ms{rel or ' vs'} the baseline's "
                 f"{_num((doc.get('baseline') or {}).get('latency_p50_ms'), '.2f')} ms")
    top1 = _num(100 * s["top1"] if s.get("top1") is not None else None, ".2f")
    line = f"top-1 {top1}% (Δ {_num(s.get('delta_pt'), '+.2f')}{se} pt), {speed}, {_num(s.get('size_mb'), '.2f')} MB"
    return line + (" [within the budget by less than one SE]" if s.get("budget_marginal") else "")


def headline(s: dict, target: str, doc: dict) -> str:
    """Return one line on a chosen row: :func:`where`: :func:`numbers`."""
    return f"{where(s)}: {numbers(s, target, doc)}"


def _budget_text(doc: dict) -> str:
    rule = " = 1% of the baseline's top-1" if doc.get("budget_rule") != "--max-drop" else " (--max-drop)"
    wide = doc["at_98pct"]["max_drop_pt"]
    return (f"top-1 drop ≤ {doc['max_drop_pt']:.2f} pt{rule}; the 98 % line: ≤ {wide:.2f} pt "
            f"= {100 * WIDE_FRACTION:.0f}% of the baseline's top-1")


def _out_text(doc: dict) -> str | None:
    """Return the line that sets ``OUT`` for the commands the screen prints (the targets'; ``None``
    when none names ``$OUT``); a shell comment when the run's directory is not known."""
    if not any(uses_out(s["rebuild"]) for s in doc["targets"].values() if s):
        return None
    return out_line(doc["out_dir"]) if doc.get("out_dir") else "# set OUT to the run's --out (not recorded)"


def _machine_note(s: dict) -> str | None:
    paths = s.get("rebuild_machine_paths") or []
    return f"absolute paths of one machine: {', '.join(paths)}" if paths else None


def screen_lines(doc: dict) -> list[str]:
    """Return the compact answer printed at the end of ``vggc bench`` and ``vggc pipeline``: the
    ``OUT=...`` line of the rebuild commands once, then per target the chosen row, its rebuild
    commands (``$ ...``) and the 98 % line."""
    if doc.get("baseline") is None:
        return ["the answer: none (no baseline row ran, so there is no top-1 budget)"]
    lines = [f"the answer ({_budget_text(doc)}):"]
    out = _out_text(doc)
    if out:
        lines.append(f"  $ {out}   # the run's --out: the $OUT of the commands below" if doc.get("out_dir")
                     else "  (set OUT to the run's --out before the commands below: it is not recorded)")
    wide = doc["at_98pct"]
    for t, s in doc["targets"].items():
        lines.append(f"  {t}: " + (headline(s, t, doc) if s else f"none: {doc['reasons'][t]}"))
        if s:
            lines += [f"      ({s['rebuild_note']})"] if s.get("rebuild_note") else []
            lines += [f"      $ {c}" for c in s["rebuild"]]
            lines += [f"      ({_machine_note(s)})"] if _machine_note(s) else []
        w = wide["targets"].get(t)
        lines.append("    at ≥ 98 %: " + ("the same" if same_row(s, w) else
                                          headline(w, t, doc) + " (rebuild: report.md, answer.json)" if w
                                          else f"none: {wide['reasons'][t]}"))
    if doc.get("gpu_note"):
        lines.append(f"  gpu: {doc['gpu_note']}")
    return lines


def _md_rebuild(s: dict, doc: dict) -> list[str]:
    if not s["rebuild"]:
        return ["", f"Rebuild: {s.get('rebuild_note') or NOT_RECORDED}."]
    lead = ("Recorded commands" + (f" ({s['rebuild_note']})" if s.get("rebuild_note") else "")
            if s.get("rebuild_note") else "Rebuild from the source state_dict")
    first = [out_line(doc["out_dir"]) if doc.get("out_dir") else "# set OUT to the run's --out (not recorded)"
             ] if uses_out(s["rebuild"]) else []
    note = _machine_note(s)
    return ["", f"{lead}:", "", "```sh", *first, *s["rebuild"], "```"] + (["", f"(The commands name {note}.)"]
                                                                         if note else [])


def markdown_section(doc: dict) -> list[str]:
    """Return the lines of report.md's closing section "## The answer": the budget, then per target
    the chosen row (file, backend, top-1, Δ, speed-up, size), its rebuild commands in a ``sh``
    block (first line ``OUT=<the run's --out>`` when they name ``$OUT``), and the 98 % line."""
    out = ["## The answer", ""]
    if doc.get("baseline") is None:
        return out + ["None: no baseline row ran, so there is no top-1 budget."]
    b = doc["baseline"]
    out += [f"Per deployment target, the recommended variant: the best row on that target among those whose timing "
            f"settled and whose {_budget_text(doc)}. Against **{b['model']} on {b['backend']}** "
            f"(top-1 {100 * b['top1']:.2f}%). Machine-readable: `{ANSWER_NAME}`.", ""]
    wide = doc["at_98pct"]
    for t, s in doc["targets"].items():
        out += [f"### {t}: {TARGETS[t][3]}", ""]
        if s is None:
            out.append(f"None: {doc['reasons'][t]}.")
        else:
            out += [f"- File: `{s.get('path') or s['model']}`, backend `{s['backend']}` ({s.get('precision') or '-'})",
                    f"- {numbers(s, t, doc)[0].upper()}{numbers(s, t, doc)[1:]}"]
            out += _md_rebuild(s, doc)
        w = wide["targets"].get(t)
        out += ["", f"At ≥ 98 % (top-1 drop ≤ {wide['max_drop_pt']:.2f} pt): "
                + ("the same variant." if same_row(s, w) else
                   f"`{w.get('path') or w['model']}` — {headline(w, t, doc)}." if w else f"none: {wide['reasons'][t]}.")]
        if w is not None and not same_row(s, w):
            out += _md_rebuild(w, doc)
        out.append("")
    if doc.get("gpu_note"):
        out.append(f"GPU targets: {doc['gpu_note']}.")
    return out
