"""Dump the public surface of the installed TensorRT Python bindings as JSON (run in a subprocess
by tests/test_trt_api.py, one per TensorRT release, each with its own bindings on sys.path).

For every module-level name: its kind (class / enum / function / other); for classes, each
member's kind (method with its pybind11 signatures, property with ``writable``, enum member);
for enums, their member names. Signatures are read from pybind11's docstrings (first line
``name(self: T, a: T, b: T = default) -> R``, or the numbered lines after "Overloaded function.").
"""

from __future__ import annotations

import importlib
import json
import re
import sys


def split_top(text: str) -> list[str]:
    """Split ``text`` at commas outside brackets, quotes and angle-bracketed default reprs."""
    out, depth, cur, quote = [], 0, [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def signatures(name: str, doc: str | None) -> list[list[dict]]:
    """The parameter lists (name, has_default) of ``name`` from its pybind11 docstring."""
    if not doc:
        return []
    lines = [ln.strip() for ln in doc.splitlines()]
    if len(lines) > 1 and "Overloaded function." in doc:
        cands = [re.sub(r"^\d+\.\s*", "", ln) for ln in lines if re.match(rf"^\d+\.\s*{re.escape(name)}\(", ln)]
    else:
        cands = [lines[0]]
    sigs = []
    for c in cands:
        m = re.match(rf"^{re.escape(name)}\((.*)\)(\s*->.*)?$", c)
        if not m:
            continue
        params = []
        for p in split_top(m.group(1)):
            pname = re.split(r"[:=]", p, maxsplit=1)[0].strip()
            if pname in ("self", "/", "*"):
                continue
            params.append({"name": pname, "default": "=" in p})
        sigs.append(params)
    return sigs


def is_enum(obj) -> bool:
    return isinstance(obj, type) and isinstance(getattr(obj, "__members__", None), dict)


def describe_class(cls) -> dict:
    members = {}
    for mname in dir(cls):
        if mname.startswith("__") and mname not in ("__init__", "__enter__", "__exit__"):
            continue
        try:
            raw = getattr(cls, mname)
        except Exception:  # noqa: BLE001
            continue
        static = cls.__dict__.get(mname, raw) if mname in cls.__dict__ else raw
        if isinstance(static, property):
            members[mname] = {"kind": "property", "writable": static.fset is not None}
        elif is_enum(raw):
            members[mname] = {"kind": "enum", "enum_members": sorted(raw.__members__)}
        elif is_enum(cls) and mname in cls.__members__:
            members[mname] = {"kind": "member"}
        elif isinstance(raw, type):
            members[mname] = {"kind": "class", **describe_class(raw)}
        elif callable(raw):
            members[mname] = {"kind": "method", "signatures": signatures(mname, getattr(raw, "__doc__", None))}
        else:
            members[mname] = {"kind": "attribute"}
    return {"members": members}


def main(module_name: str) -> dict:
    mod = importlib.import_module(module_name)
    names = {}
    for name in dir(mod):
        if name.startswith("_") and name != "__version__":
            continue
        obj = getattr(mod, name)
        if is_enum(obj):
            names[name] = {"kind": "enum", "enum_members": sorted(obj.__members__), **describe_class(obj)}
        elif isinstance(obj, type):
            names[name] = {"kind": "class", **describe_class(obj)}
        elif callable(obj):
            names[name] = {"kind": "function", "signatures": signatures(name, obj.__doc__)}
        else:
            names[name] = {"kind": "attribute", "value": str(obj)[:80]}
    return {"version": str(mod.__version__), "names": names}


if __name__ == "__main__":
    json.dump(main(sys.argv[1] if len(sys.argv) > 1 else "tensorrt_bindings"), sys.stdout)
