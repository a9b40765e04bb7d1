"""Pipeline step keys: everything a step's result depends on, in readable form, and what changed.

A step's *key inputs* are its name, settings (automatic choices already resolved), the SHA-256 of
every input file, the directory and the fingerprint of each data split it reads (:func:`vggc.data.split_fingerprint`)
and its environment (:func:`vggc.provenance.result_environment`; a timing step uses
:func:`vggc.provenance.timing_environment`, which adds the CPU and the thread count). The key is the
SHA-256 of that dict. The dict itself is stored in the step's marker and in ``pipeline.json``, so
:func:`describe_changes` can say why a step reran ("threads 2 -> 1", "train data changed").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from vggc import provenance
from vggc.artifacts import sha256_file, sha256_json

# a value longer than this is shown as "changed" rather than "old -> new"
_SHORT = 40


def key_inputs(name: str, settings: dict, input_files: list[Path], data: dict[str, str],
               environment: dict) -> dict:
    """Return the readable key inputs of one step: ``step``, ``settings``, ``inputs`` (list of
    ``{"file", "sha256"}``), ``data`` (``{"dir": path, split: fingerprint}``) and ``environment``."""
    return {"step": name, "settings": settings,
            "inputs": [{"file": Path(p).name, "sha256": sha256_file(p)} for p in input_files],
            "data": dict(data), "environment": environment}


def key_of(inputs: dict) -> str:
    """Return the cache key (hex SHA-256) of a :func:`key_inputs` dict."""
    return sha256_json(inputs)


def timing_only_keys() -> set[str]:
    """Return the environment keys that change a timing but not an accuracy (CPU, threads)."""
    return set(provenance.timing_environment(None)) - set(provenance.result_environment())


def _show(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def _leaf_changes(prefix: tuple[str, ...], a, b, out: list[tuple[tuple[str, ...], object, object]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            _leaf_changes(prefix + (str(k),), a.get(k), b.get(k), out)
    elif _show(a) != _show(b):
        out.append((prefix, a, b))


def _label(path: tuple[str, ...]) -> str:
    head, rest = path[0], path[1:]
    if head == "environment":
        if rest[:1] == ("libraries",) and len(rest) > 1:
            return rest[1]
        return {"vggc_source": "vggc source"}.get(rest[0], rest[0]) if rest else "environment"
    if head == "data":
        return ("data directory" if rest[0] == "dir" else f"{rest[0]} data") if rest else "data"
    return ".".join(rest) if head == "settings" and rest else ".".join(path)


def changed_inputs(before: dict, now: dict) -> list[tuple[tuple[str, ...], str]]:
    """Return ``(path, text)`` for every key input that differs, e.g.
    ``(("environment", "threads"), "threads 2 -> 1")`` or ``(("inputs",), "input a.pt changed")``."""
    out: list[tuple[tuple[str, ...], str]] = []
    old = {f["file"]: f["sha256"] for f in before.get("inputs", []) if isinstance(f, dict)}
    new = {f["file"]: f["sha256"] for f in now.get("inputs", []) if isinstance(f, dict)}
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append((("inputs",), f"input {name} added"))
        elif name not in new:
            out.append((("inputs",), f"input {name} removed"))
        elif old[name] != new[name]:
            out.append((("inputs",), f"input {name} changed"))
    leaves: list = []
    for part in ("step", "settings", "data", "environment"):
        _leaf_changes((part,), before.get(part), now.get(part), leaves)
    for path, a, b in leaves:
        label = _label(path)
        sa, sb = _show(a), _show(b)
        if a is None or b is None or len(sa) > _SHORT or len(sb) > _SHORT or path[0] == "data":
            text = f"{label} changed" if a is not None and b is not None else f"{label} {'added' if a is None else 'removed'}"
        else:
            text = f"{label} {sa} -> {sb}"
        out.append((path, text))
    return out


def describe_changes(before: dict | None, now: dict, timing_keys: Callable[[], set[str]] = timing_only_keys) -> str:
    """Return why a step with key inputs ``now`` reruns given its previous marker's ``before``:
    ``"first run"``, ``"re-timed (threads 2 -> 1)"`` when only timing inputs changed, else
    ``"rerun (train data changed, torch 2.5.0 -> 2.6.0)"``."""
    if before is None:
        return "first run"
    if not isinstance(before, dict) or not before:
        return "rerun (the previous run recorded no key inputs)"
    changes = changed_inputs(before, now)
    if not changes:
        return "rerun (key inputs unchanged; an output was missing or modified)"
    texts = ", ".join(t for _, t in changes)
    timing = timing_keys()
    if all(p[0] == "environment" and len(p) > 1 and p[1] in timing for p, _ in changes):
        return f"re-timed ({texts})"
    return f"rerun ({texts})"
