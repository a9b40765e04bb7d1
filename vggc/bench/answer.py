"""The answer: per deployment target, *the* recommended variant of a bench run and the commands
that rebuild it from the source state_dict (``answer.json``, the end of report.md and of the screen).

Targets: ``cpu-throughput`` (highest img/s at the bench batch), ``cpu-latency`` (lowest batch-1
p50) over CPU backends and, when a GPU row ran, ``gpu-throughput`` / ``gpu-latency`` over GPU
backends (:func:`is_gpu_row`). A target's variant is the best row on its metric among those that
:func:`vggc.bench.baseline.qualifies` (ran, settled timing, top-1 drop within the budget: the run's
``--max-drop``, default 1 % of the baseline's top-1); the same is answered at the wider 98 % line
(a drop of at most :data:`WIDE_FRACTION` of the baseline's top-1). No qualifying row: ``None`` and
the reason.

Rebuild commands (:func:`rebuild_commands`): the row's own ``rebuild`` list (the pipeline fills
it), else the ``command`` strings recorded in the manifests up the chain from the file to the
source (:func:`vggc.bench.lineage.ancestors`), else :data:`NOT_RECORDED`; never invented.
"""

from __future__ import annotations

from pathlib import Path

from vggc.artifacts import read_manifest
from vggc.bench.baseline import budget_pt, marginal, qualifies, ran_ok, same_file
from vggc.bench.lineage import ancestors
from vggc.errors import VggcError, first_line

ANSWER_NAME = "answer.json"
WIDE_FRACTION = 0.02  # the 98 % line: a variant may lose at most 2 % of the baseline's top-1
NOT_RECORDED = "rebuild commands not recorded"
# input roles that name what an artifact was made from: quantize/export/prune ("source"), a TensorRT
# engine ("onnx"), a Triton model ("model"), a distilled student ("teacher")
REBUILD_ROLES = ("source", "onnx", "model", "teacher")
MAX_REBUILD_LINKS = 8

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
    ok = [r for r in ran if r.get(metric) is not None and qualifies(r, base, budget)]
    if ok:
        pick = max(ok, key=lambda r: r[metric]) if higher else min(ok, key=lambda r: r[metric])
        return pick, None
    within = [r for r in ran if _drop(r, base) <= budget + 1e-9]
    unsettled = [r for r in within if r.get("timing_stable") is not True]
    untimed = [r for r in within if r.get("timing_stable") is True and r.get(metric) is None]
    parts = [f"{len(ran) - len(within)} lose more than {budget:.2f} pt of top-1"] if len(within) < len(ran) else []
    if unsettled:
        parts.append(f"{len(unsettled)} within it have an unsettled timing")
    if untimed:
        parts.append(f"{len(untimed)} within it have no {'batch-1 latency' if metric != 'throughput' else 'throughput'}")
    return None, f"none of the {len(ran)} {kind} rows that ran qualifies: " + "; ".join(parts)


def manifest_commands(path: Path) -> tuple[list[str], str | None]:
    """Return ``(commands, note)``: the ``command`` strings recorded in the manifests from ``path``
    up its chain of inputs (:data:`REBUILD_ROLES`) to the source (the first file recorded as made
    from nothing, e.g. the trained state_dict), source first; ``note`` says what is missing (no
    commands at all: :data:`NOT_RECORDED`; some: the files without one, a chain that could not be
    followed)."""
    chain: list[tuple[Path, dict]] = []
    problems: list[str] = []
    try:
        chain.append((path, read_manifest(path)))
        chain += ancestors(chain[0][1], REBUILD_ROLES, MAX_REBUILD_LINKS)
    except VggcError as err:
        problems.append(first_line(err))

    def made_from(meta: dict) -> str | None:
        return next((v.get("path") for k, v in (meta.get("inputs") or {}).items()
                     if k in REBUILD_ROLES and isinstance(v, dict) and v.get("path")), None)

    last_path, last_meta = chain[-1] if chain else (path, {})
    if chain and not problems and made_from(last_meta):
        problems.append(f"the chain stops at {last_path.name}: its input {made_from(last_meta)} could not be followed")
    derived = [(p, m) for p, m in chain if made_from(m) is not None]
    commands = [m["command"].strip() for _, m in reversed(derived)
                if isinstance(m.get("command"), str) and m["command"].strip()]
    missing = [p.name for p, m in derived if not (isinstance(m.get("command"), str) and m["command"].strip())]
    if not commands:
        return [], NOT_RECORDED + (f" ({'; '.join(problems)})" if problems else "")
    if missing:
        problems.insert(0, f"incomplete: no command recorded for {', '.join(reversed(missing))}")
    return commands, "; ".join(problems) or None


def rebuild_commands(row: dict, base: dict | None = None) -> tuple[list[str], str | None, str | None]:
    """Return ``(commands, source, note)`` that rebuild ``row``'s file from the source state_dict:
    the row's own ``rebuild`` list (``source`` ``"row"``), else the manifest chain
    (:func:`manifest_commands`, ``"manifests"``); ``source`` ``None`` when there are none, and
    ``note`` says why (the baseline file itself, with none recorded, needs no rebuild)."""
    given = row.get("rebuild")
    if given:
        if isinstance(given, list) and all(isinstance(c, str) and c.strip() for c in given):
            return [c.strip() for c in given], "row", None
        return [], None, f"{NOT_RECORDED} (the row's rebuild is not a list of command strings)"
    if not row.get("path"):
        return [], None, NOT_RECORDED
    path = Path(row["path"])
    commands, note = manifest_commands(path)
    if not commands and base is not None and base.get("path") and same_file(path, Path(base["path"])):
        return [], None, "the baseline file itself: nothing to rebuild"
    return commands, ("manifests" if commands else None), note


def summarize(row: dict, base: dict, budget: float, rebuild: tuple[list[str], str | None, str | None]) -> dict:
    """Return ``answer.json``'s summary of a chosen row: its file, backend, top-1, Δ, speed-ups
    (``speedup``: throughput ratio; ``latency_speedup``: the baseline's batch-1 p50 over the row's),
    size, whether its verdict rests on less than one SE, and its rebuild commands."""
    out = {k: row.get(k) for k in SUMMARY_KEYS}
    b1, r1 = base.get("latency_p50_ms"), row.get("latency_p50_ms")
    out["latency_speedup"] = round(b1 / r1, 3) if b1 and r1 else None
    out["budget_marginal"] = marginal(row, base, budget)
    out["rebuild"], out["rebuild_from"], out["rebuild_note"] = rebuild
    return out


def _answers(rows: list[dict], targets: list[str], base: dict | None, budget: float | None, rebuilds: dict) -> dict:
    got: dict = {"max_drop_pt": round(budget, 4) if budget is not None else None, "targets": {}, "reasons": {}}
    for t in targets:
        row, why = choose(rows, t, base, budget)
        if row is not None and id(row) not in rebuilds:
            rebuilds[id(row)] = rebuild_commands(row, base)
        got["targets"][t] = summarize(row, base, budget, rebuilds[id(row)]) if row is not None else None
        if why:
            got["reasons"][t] = why
    return got


def answer(rows: list[dict], max_drop_pt: float | None = None) -> dict:
    """Return the answer (``answer.json``): ``targets`` (target -> row summary or ``None``) and
    ``reasons`` (target -> why ``None``) within the budget ``max_drop_pt`` (default 1 % of the
    baseline's top-1; ``budget_rule`` says which), the same at the 98 % line under ``at_98pct``,
    the ``baseline``, the bench ``batch`` and ``gpu_note`` when GPU rows were asked for but none ran."""
    base = next((r for r in rows if r.get("is_baseline") and ran_ok(r)), None)
    budget = budget_pt(base, max_drop_pt)
    gpu_ran = any(ran_ok(r) and is_gpu_row(r) for r in rows)
    targets = [t for t, (gpu, *_rest) in TARGETS.items() if not gpu or gpu_ran]
    rebuilds: dict = {}
    doc = {"baseline": ({k: base.get(k) for k in ("model", "path", "backend", "top1", "throughput", "latency_p50_ms")}
                        if base else None),
           "batch": next((r.get("batch") for r in rows if r.get("batch")), None),
           "budget_rule": "--max-drop" if max_drop_pt is not None else "1% of the baseline's top-1",
           **_answers(rows, targets, base, budget, rebuilds),
           "at_98pct": _answers(rows, targets, base, 100.0 * WIDE_FRACTION * base["top1"] if base else None, rebuilds)}
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


def screen_lines(doc: dict) -> list[str]:
    """Return the compact answer printed at the end of ``vggc bench`` and ``vggc pipeline``: per
    target the chosen row, its rebuild commands (``$ ...``) and the 98 % line."""
    if doc.get("baseline") is None:
        return ["the answer: none (no baseline row ran, so there is no top-1 budget)"]
    lines = [f"the answer ({_budget_text(doc)}):"]
    wide = doc["at_98pct"]
    for t, s in doc["targets"].items():
        lines.append(f"  {t}: " + (headline(s, t, doc) if s else f"none: {doc['reasons'][t]}"))
        if s:
            lines += [f"      ({s['rebuild_note']})"] if s.get("rebuild_note") else []
            lines += [f"      $ {c}" for c in s["rebuild"]]
        w = wide["targets"].get(t)
        lines.append("    at ≥ 98 %: " + ("the same" if same_row(s, w) else
                                          headline(w, t, doc) + " (rebuild: report.md, answer.json)" if w
                                          else f"none: {wide['reasons'][t]}"))
    if doc.get("gpu_note"):
        lines.append(f"  gpu: {doc['gpu_note']}")
    return lines


def _md_rebuild(s: dict) -> list[str]:
    if not s["rebuild"]:
        return ["", f"Rebuild: {s.get('rebuild_note') or NOT_RECORDED}."]
    lead = ("Recorded commands" + (f" ({s['rebuild_note']})" if s.get("rebuild_note") else "")
            if s.get("rebuild_note") else "Rebuild from the source state_dict")
    return ["", f"{lead}:", "", "```sh", *s["rebuild"], "```"]


def markdown_section(doc: dict) -> list[str]:
    """Return the lines of report.md's closing section "## The answer": the budget, then per target
    the chosen row (file, backend, top-1, Δ, speed-up, size), its rebuild commands in a ``sh``
    block, and the 98 % line."""
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
            out += _md_rebuild(s)
        w = wide["targets"].get(t)
        out += ["", f"At ≥ 98 % (top-1 drop ≤ {wide['max_drop_pt']:.2f} pt): "
                + ("the same variant." if same_row(s, w) else
                   f"`{w.get('path') or w['model']}` — {headline(w, t, doc)}." if w else f"none: {wide['reasons'][t]}.")]
        if w is not None and not same_row(s, w):
            out += _md_rebuild(w)
        out.append("")
    if doc.get("gpu_note"):
        out.append(f"GPU targets: {doc['gpu_note']}.")
    return out
