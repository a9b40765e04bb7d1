"""Copy a finished `vggc pipeline` run into docs/ as a committed result, with no machine path in it.

    python scripts/publish_run.py RUN DEST --data-as ../shared/data/cifar10-jpeg [--log RUN.log] [--extra F ...]

RUN is the run's --out (given relative, as the pipeline's rebuild commands are written against it).
DEST gets the files a reader needs, and nothing a model file would add:
- pipeline.json;
- the bench's report.md, results.json/.csv, answer.json, pareto.png and learning_curves.png, with the
  bench's manifest saved as results.json.manifest.json;
- the scan's sensitivity.csv/.png;
- every model manifest and source_eval.json, under manifests/;
- the step lines of the log (`==`, `--`, `!!`), when --log names it;
- any --extra file, e.g. peer_openvino.json.

With --bench DIR (a later `vggc bench` of the run's own files, e.g. a re-timing on a quieter host), the
bench files come from DIR instead of RUN/bench, and only pipeline.json, those and the --extra files are
copied: the manifests and the scan are the run's, already in its first publish.

Each absolute path of the data directory is written as --data-as, and the absolute path of RUN as RUN
as given. The copy is refused, with a list of what was found, if any other absolute path is left in
a text file (:func:`vggc.bench.rebuild.machine_paths_in_text`, the rule tests/test_docs_paths.py
checks). The script writes no README: the CPU label and what the numbers mean are for a person to
write there.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from vggc.bench.rebuild import machine_paths_in_text

BENCH_FILES = ("report.md", "results.json", "results.csv", "answer.json", "pareto.png", "learning_curves.png")
SCAN_FILES = ("sensitivity.csv", "sensitivity.png")
TEXT = (".json", ".md", ".csv", ".txt", ".log")
STEP_LINE = re.compile(r"^(==|--|!!) ")


def _data_dirs(run: Path) -> set[str]:
    """Return the absolute data directories the run's steps name (their key inputs' ``data.dir``)."""
    doc = json.loads((run / "pipeline.json").read_text())
    return {s["key_inputs"]["data"]["dir"] for s in doc.get("steps", [])
            if isinstance(s.get("key_inputs"), dict) and (s["key_inputs"].get("data") or {}).get("dir")}


def publish(run: Path, dest: Path, *, data_as: str, log: Path | None = None, extra: tuple[Path, ...] = (),
            bench: Path | None = None) -> list[Path]:
    """Copy ``run``'s publishable files into ``dest`` (created; must be empty or absent), rewriting
    absolute paths; return the files written. With ``bench``, the bench files come from that directory
    and the run's manifests and scan are left out. Raises ``ValueError`` naming the file, line and path
    of any absolute path left (nothing is left in ``dest`` then)."""
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest}: exists and is not empty")
    if not (run / "pipeline.json").is_file():
        raise ValueError(f"{run}: no pipeline.json (not a finished pipeline run)")
    src_bench = run / "bench" if bench is None else bench
    if bench is not None and not (src_bench / "results.json").is_file():
        raise ValueError(f"{src_bench}: no results.json (not a finished bench)")
    pairs = [(run / "pipeline.json", dest / "pipeline.json")]
    pairs += [(src_bench / f, dest / f) for f in BENCH_FILES if (src_bench / f).is_file()]
    if (src_bench / "results.json.json").is_file():
        pairs.append((src_bench / "results.json.json", dest / "results.json.manifest.json"))
    if bench is None:
        pairs += [(run / "prune_scan" / f, dest / f) for f in SCAN_FILES if (run / "prune_scan" / f).is_file()]
        pairs += [(m, dest / "manifests" / m.name) for m in sorted(run.glob("*.json")) if m.name != "pipeline.json"]
    pairs += [(e, dest / e.name) for e in extra]
    dirs = _data_dirs(run)
    if len(dirs) > 1:
        raise ValueError(f"{run}: its steps read {len(dirs)} data directories; --data-as names one")
    swaps = [(d, data_as) for d in dirs] + [(str(b.resolve()), str(b)) for b in (bench,) if b is not None]
    swaps.append((str(run.resolve()), str(run)))  # after the bench's: it may be a prefix of it
    written, left = [], []
    dest.mkdir(parents=True, exist_ok=True)
    try:
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix not in TEXT:
                shutil.copyfile(src, dst)
            else:
                dst.write_text(_rewrite(src.read_text(encoding="utf-8"), swaps), encoding="utf-8")
            written.append(dst)
        if log is not None:
            lines = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").splitlines()
            text = "\n".join(ln for ln in lines if STEP_LINE.match(ln)) + "\n"
            (dest / "pipeline.log").write_text(_rewrite(text, swaps), encoding="utf-8")
            written.append(dest / "pipeline.log")
        for f in written:
            if f.suffix in TEXT:
                for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                    left += [f"{f.relative_to(dest)}:{n}: {p}" for p in machine_paths_in_text(line)]
        if left:
            raise ValueError("absolute paths left: " + "; ".join(left[:5]) + (" ..." if len(left) > 5 else ""))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return written


def _rewrite(text: str, swaps: list[tuple[str, str]]) -> str:
    for old, new in swaps:
        text = text.replace(old, new)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the run's --out, relative as it was given")
    ap.add_argument("dest", type=Path, help="a new folder under docs/")
    ap.add_argument("--data-as", required=True, help="how the data directory is written (e.g. ../shared/data/cifar10-jpeg)")
    ap.add_argument("--log", type=Path, help="the pipeline's console log; its step lines become pipeline.log")
    ap.add_argument("--extra", type=Path, nargs="*", default=(), help="more files to copy (peer_openvino.json, ...)")
    ap.add_argument("--bench", type=Path, help="a later `vggc bench` of the run's files (relative, as given): "
                    "publish its files with pipeline.json instead of RUN/bench, without manifests and scan")
    a = ap.parse_args(argv)
    try:
        files = publish(a.run, a.dest, data_as=a.data_as, log=a.log, extra=tuple(a.extra), bench=a.bench)
    except (ValueError, OSError) as err:
        print(f"publish_run: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files under {a.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
