"""The committed docs run in any checkout: no text file under docs/ names an absolute path of one
machine (a run directory, a home, a temp dir), every JSON file there parses, and the committed
answer is what the answer code makes of the committed results (its commands relative: ``$OUT/...``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vggc.bench.rebuild import machine_paths_in_text as machine_paths

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = (".md", ".json", ".csv", ".txt", ".sh", ".log")


@pytest.mark.parametrize("text", [
    "/work/runs/full6/x.onnx", "in `/root/a/b`", "--out=/tmp/x/y", "'/home/u/v.pt'", '"/Users/me/x"',
    "(/opt/cuda/lib)", "cd /work/main && make", "file:///home/u/x.pt", r"C:\Users\me\x.pt", "=/mnt/data/cifar",
    "Command: `vggc bench /data/x.pt`",
])
def test_the_regex_finds_machine_paths(text):
    assert machine_paths(text), text


@pytest.mark.parametrize("text", [
    "../shared/models/v.pt", "runs/full6/x.onnx", "$OUT/a/b", "${OUT}/a/b", "https://example.com/a/b",
    "http://localhost:8000/v2/health/ready", "GET `/v2/health/ready`", "min/opt/max", "<out>/.steps/x.json",
    "CUDA_HOME='/usr/local'", "a // b/c", "img/s", "/steps", "~/x/y", "50/50/50 split", "./scripts/x.sh",
    "s3://bucket/a/b", "p50/p90/p99",
])
def test_the_regex_leaves_relative_paths_urls_and_routes(text):
    assert machine_paths(text) == [], text


def _text_files() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def test_no_doc_names_a_path_of_one_machine():
    files = _text_files()
    assert len(files) > 30  # the committed runs are there (and read as text)
    found = {}
    for p in files:
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            hits = machine_paths(line)
            if hits:
                found.setdefault(str(p.relative_to(ROOT)), []).append((n, hits[0]))
    assert not found, "absolute paths of one machine (write them as the user gives them, or $OUT/...): " + "; ".join(
        f"{f}:{n}: {h}" for f, hits in found.items() for n, h in hits[:3])


def test_doc_json_parses():
    for p in _text_files():
        if p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("run, out_dir", [("frontier-amx", "runs/full6"), ("frontier-amx/complete", "runs/full6"),
                                          ("budget-amx", "runs/full7"), ("full-amx", "runs/full11")])
def test_the_committed_answer_is_the_answer_of_the_committed_results(run, out_dir):
    from vggc.bench.answer import answer, markdown_section

    d = DOCS / run
    rows = json.loads((d / "results.json").read_text())
    doc = json.loads((d / "answer.json").read_text())
    assert doc["budget_rule"] == "1% of the baseline's top-1"
    made = json.loads(json.dumps(answer(rows), default=str))  # the run directory read off the $OUT commands
    assert made == doc
    assert doc["out_dir"] == out_dir
    for s in doc["targets"].values():
        assert s["rebuild"] and all("$OUT/" in c for c in s["rebuild"]) and s["rebuild_machine_paths"] == []
        assert s["rebuild"][-1].endswith(f"--out $OUT/{s['model']}")
    section = (d / "report.md").read_text().split("\n## The answer\n", 1)[1]
    assert "## The answer\n" + section == "\n".join(markdown_section(doc) + [""])
    assert f"```sh\nOUT={out_dir}\nvggc " in section


@pytest.mark.parametrize("run, pick", [("bench2", "vgg16_bn_cifar10_pruned12_5_int8_ov_static.xml"),
                                       ("bench3", "vgg16_bn_cifar10_pruned12_5_int8_torch_static.pt2"),
                                       ("bench4", "vgg16_bn_cifar10_pruned12_5_int8_ov_static.xml"),
                                       ("bench5", "vgg16_bn_cifar10_pruned12_5_int8_ov_static.xml")])
def test_the_retimed_bench_answer_is_the_answer_of_its_results_and_its_commands_name_the_run(run, pick):
    """docs/full-amx/bench2, bench3: standalone `vggc bench` runs of runs/full11's files (no pipeline, so the
    rebuild commands come from the model manifests with the run's paths written out, not $OUT). The rows of
    bench2-4 predate timing_stable_batch/_b1, so today's code answers them from timing_stable, as the code that
    ran did; bench5 ran today's rule."""
    from vggc.bench.answer import answer

    d = DOCS / "full-amx" / run
    rows = json.loads((d / "results.json").read_text())
    doc = json.loads((d / "answer.json").read_text())
    made = json.loads(json.dumps(answer(rows), default=str))

    def picks(a):
        return {k: {n: {f: v for f, v in t.items() if not f.startswith("rebuild")} for n, t in a["targets"].items()}
                for k, a in (("1%", a), ("98%", a["at_98pct"]))}

    assert picks(made) == picks(doc)
    assert doc["targets"]["cpu-throughput"]["model"] == pick
    for t in doc["targets"].values():
        assert t["rebuild_from"] == "manifests" and t["rebuild_machine_paths"] == []
        assert t["rebuild"][-1].endswith(f"--out {t['path']}") and t["path"].startswith("runs/full11/")
