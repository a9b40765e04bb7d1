"""Rebuild commands that run in any checkout (``vggc.bench.rebuild``): paths inside the run's
``--out`` written ``$OUT/...`` with ``OUT=`` said once; the commands a pipeline step recorded in
its marker found from the artifact's manifest chain."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from vggc.artifacts import sha256_file, write_json, write_manifest
from vggc.bench.answer import answer, markdown_section, screen_lines
from vggc.bench.rebuild import (
    NOT_RECORDED,
    expand_out,
    infer_out_dir,
    machine_paths,
    manifest_commands,
    out_line,
    relative_command,
    uses_out,
)


def shell_words(line: str, out: str) -> list[str]:
    """Return the words a POSIX shell makes of ``line`` after ``OUT=<out>``: what the command gets."""
    script = f'{out_line(out)}\nset -- {line}\nfor w in "$@"; do printf "%s\\0" "$w"; done'
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.split("\0")[:-1]


@pytest.mark.parametrize("out", ["/work/runs/full6", "runs/full6", "runs/full6/", "./runs/full6"])
def test_paths_inside_the_out_dir_become_dollar_out(out):
    cmd = ("vggc prune ../shared/models/v.pt --data ../shared/data/cifar10-jpeg --sensitivity "
           f"{out.rstrip('/')}/prune_scan/s.csv.json --target-macs 0.25 --out {out.rstrip('/')}/v_pruned25.pt")
    got = relative_command(cmd, out)
    assert got == ("vggc prune ../shared/models/v.pt --data ../shared/data/cifar10-jpeg --sensitivity "
                   "$OUT/prune_scan/s.csv.json --target-macs 0.25 --out $OUT/v_pruned25.pt")
    assert uses_out([got]) and not uses_out([cmd])
    # what the shell hands the command once OUT is set: the original paths, in another checkout too
    assert shell_words(got.removeprefix("vggc "), "elsewhere/run") == [
        "prune", "../shared/models/v.pt", "--data", "../shared/data/cifar10-jpeg", "--sensitivity",
        "elsewhere/run/prune_scan/s.csv.json", "--target-macs", "0.25", "--out", "elsewhere/run/v_pruned25.pt"]


def test_relative_command_edges(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # spelled absolute in the command, relative as given (and the other way round): the same directory
    assert relative_command(f"vggc export a.pt --out {tmp_path}/run/a.onnx", "run") == "vggc export a.pt --out $OUT/a.onnx"
    assert relative_command("vggc export a.pt --out run/a.onnx", str(tmp_path / "run")) == \
        "vggc export a.pt --out $OUT/a.onnx"
    assert relative_command("vggc bench a.pt --out=run/bench", "run") == "vggc bench a.pt --out=$OUT/bench"
    assert relative_command("vggc scan a.pt --out run", "run") == "vggc scan a.pt --out $OUT"
    # outside the directory, or only a name sharing its prefix: left as given (the same string)
    same = "vggc export run2/a.pt --data /data/x --out runner/a.onnx"
    assert relative_command(same, "run") is same
    assert relative_command(same, None) is same
    # a name that needs quoting, and an OUT that does: still one word each, expanded by the shell
    got = relative_command("vggc export a.pt --out 'run/my model.onnx'", "run")
    assert got == "vggc export a.pt --out \"$OUT\"/'my model.onnx'"
    assert shell_words(got.removeprefix("vggc "), "x y")[-1] == "x y/my model.onnx"
    got = relative_command("vggc export a.pt --out 'my runs/a.onnx'", "my runs")
    assert got == 'vggc export a.pt --out "$OUT"/a.onnx'
    assert shell_words(got.removeprefix("vggc "), "my runs")[-1] == "my runs/a.onnx"
    # already relative ($OUT, ${OUT}, or quoted by a writer that should not have): written $OUT/...
    assert relative_command("vggc export a.pt --out '$OUT/a.onnx'", "run") == "vggc export a.pt --out $OUT/a.onnx"
    assert relative_command("vggc export a.pt --out ${OUT}/a.onnx", None) == "vggc export a.pt --out $OUT/a.onnx"
    assert relative_command("vggc export 'a.pt --out x", "x") == "vggc export 'a.pt --out x"  # not shell words
    assert expand_out("vggc export a.pt --out $OUT/a.onnx", "my runs") == "vggc export a.pt --out 'my runs/a.onnx'"


def test_machine_paths_and_inferred_out_dir():
    cmds = ["vggc export /home/u/v.pt --data=/data/c --out $OUT/a.onnx", "vggc quantize $OUT/a.onnx --data /data/c"]
    assert machine_paths(cmds) == ["/home/u/v.pt", "/data/c"]
    assert machine_paths(["vggc export ../shared/v.pt --out $OUT/a.onnx"]) == []
    row = {"path": "runs/full6/sub/a.onnx", "rebuild": ["vggc export v.pt --out $OUT/x.onnx",
                                                          "vggc quantize $OUT/x.onnx --out $OUT/sub/a.onnx"]}
    assert infer_out_dir(row) == "runs/full6"
    assert infer_out_dir({**row, "path": "/abs/run/sub/a.onnx"}) == "/abs/run"
    assert infer_out_dir({**row, "path": "sub/a.onnx"}) == "."
    assert infer_out_dir({**row, "path": "elsewhere/b.onnx"}) is None
    assert infer_out_dir({"path": "a.onnx", "rebuild": ["vggc export v.pt --out /x/a.onnx"]}) is None


def _rows(run: Path, rebuild_int8: list[str]) -> list[dict]:
    def row(path, backend, top1, thr, p50, **kw):
        return {"model": Path(path).name, "path": str(path), "backend": backend, "precision": "int8", "status": "ok",
                "top1": top1, "throughput": thr, "latency_p50_ms": p50, "delta_pt": round(100 * (top1 - 0.88), 4),
                "speedup": thr / 100, "timing_stable": True, "batch": 64, "size_mb": 1.0, "delta_se_pt": 0.1,
                "is_baseline": False, **kw}

    return [row("../shared/models/v.pt", "torch-fp32", 0.88, 100.0, 10.0, is_baseline=True),
            row(run / "v_int8.onnx", "onnxruntime-cpu", 0.879, 400.0, 1.0, rebuild=rebuild_int8)]


def test_answer_writes_old_absolute_commands_relative_and_says_out_once():
    old = ["vggc export ../shared/models/v.pt --data /work/shared/data/c --out /work/runs/full6/v.onnx",
           "vggc quantize /work/runs/full6/v.onnx --out /work/runs/full6/v_int8.onnx"]
    rows = _rows(Path("/work/runs/full6"), old)
    doc = answer(rows, out_dir="/work/runs/full6")
    s = doc["targets"]["cpu-throughput"]
    assert doc["out_dir"] == "/work/runs/full6"
    assert s["rebuild"] == ["vggc export ../shared/models/v.pt --data /work/shared/data/c --out $OUT/v.onnx",
                            "vggc quantize $OUT/v.onnx --out $OUT/v_int8.onnx"]
    assert s["rebuild_machine_paths"] == ["/work/shared/data/c"]  # outside the run: as given, but named
    assert s["path"] == "/work/runs/full6/v_int8.onnx"  # the row's file is data: as recorded
    lines = screen_lines(doc)
    assert [ln for ln in lines if "OUT=" in ln] == ["  $ OUT=/work/runs/full6   # the run's --out: the $OUT of the "
                                                    "commands below"]
    assert lines.index("  $ OUT=/work/runs/full6   # the run's --out: the $OUT of the commands below") == 1
    assert "      $ vggc quantize $OUT/v.onnx --out $OUT/v_int8.onnx" in lines
    assert "      (absolute paths of one machine: /work/shared/data/c)" in lines
    md = "\n".join(markdown_section(doc))
    block = md.split("```sh\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert block == ["OUT=/work/runs/full6", *s["rebuild"]]
    assert "(The commands name absolute paths of one machine: /work/shared/data/c.)" in md
    # without the directory: as recorded, nothing to set, the absolute paths named
    bare = answer(rows)
    assert bare["out_dir"] is None and bare["targets"]["cpu-throughput"]["rebuild"] == old
    assert not any("OUT" in ln for ln in screen_lines(bare)) and "OUT=" not in "\n".join(markdown_section(bare))


def test_answer_reads_the_out_dir_off_dollar_out_commands():
    new = ["vggc export ../shared/models/v.pt --data ../shared/data/c --out $OUT/v.onnx",
           "vggc quantize $OUT/v.onnx --out $OUT/v_int8.onnx"]
    doc = answer(_rows(Path("runs/q"), new))
    assert doc["out_dir"] == "runs/q"
    s = doc["targets"]["cpu-throughput"]
    assert s["rebuild"] == new and s["rebuild_machine_paths"] == []
    assert screen_lines(doc)[1].startswith("  $ OUT=runs/q ")
    assert "```sh\nOUT=runs/q\nvggc export" in "\n".join(markdown_section(doc))
    # $OUT commands but no way to tell the directory: the block says to set it
    rows = _rows(Path("runs/q"), new)
    rows[1]["path"] = "elsewhere.onnx"
    md = "\n".join(markdown_section(answer(rows)))
    assert "```sh\n# set OUT to the run's --out (not recorded)\nvggc export" in md
    assert screen_lines(answer(rows))[1] == "  (set OUT to the run's --out before the commands below: it is not recorded)"


def _marker(run: Path, step: str, outputs: list[str], command: str | None, digest: str | None = None) -> None:
    write_json(run / ".steps" / f"{step}.json", {
        "key": "k", "step": step, "outputs": {o: digest or sha256_file(run / o) for o in outputs},
        "metrics": {"command": command} if command else {}})


def test_manifest_chain_reads_the_commands_pipeline_steps_recorded(tmp_path):
    src = tmp_path / "v.pt"
    src.write_bytes(b"trained")
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    a, b, c = run / "v.onnx", run / "sub" / "v_int8.onnx", run / "v_int8.engine"
    for f, made_from in ((a, src), (b, a), (c, b)):
        f.write_bytes(f.name.encode())
        write_manifest(f, kind="x", inputs={"source" if f is not c else "onnx": made_from}, settings={})
    _marker(run, "onnx_fp32", [a.relative_to(run).as_posix()], f"vggc export {src} --out $OUT/v.onnx")
    _marker(run, "int8", ["sub/v_int8.onnx"], "vggc quantize $OUT/v.onnx --out $OUT/sub/v_int8.onnx")
    _marker(run, "engine", ["v_int8.engine"], "vggc engine $OUT/sub/v_int8.onnx --out $OUT/v_int8.engine",
            digest="0" * 64)  # stale: it wrote another file than this one
    cmds, note = manifest_commands(b)
    assert cmds == [f"vggc export {src} --out {run}/v.onnx", f"vggc quantize {run}/v.onnx --out {run}/sub/v_int8.onnx"]
    assert note is None
    cmds, note = manifest_commands(c)
    assert len(cmds) == 2 and note == "incomplete: no command recorded for v_int8.engine"
    # a manifest's own command field comes first
    write_manifest(c, kind="x", inputs={"onnx": b}, settings={}, extra={"command": "vggc engine x --out y"})
    assert manifest_commands(c)[0][-1] == "vggc engine x --out y"
    (run / ".steps" / "int8.json").unlink()
    assert manifest_commands(b) == ([f"vggc export {src} --out {run}/v.onnx"],
                                    "incomplete: no command recorded for v_int8.onnx")
    (run / ".steps" / "onnx_fp32.json").write_text("{not json")  # an unreadable marker is no command
    assert manifest_commands(a) == ([], NOT_RECORDED)
    # the answer writes them back relative to the run
    rows = _rows(run, [])
    rows[1].pop("rebuild")
    rows[1]["path"] = str(c)
    _marker(run, "int8", ["sub/v_int8.onnx"], "vggc quantize $OUT/v.onnx --out $OUT/sub/v_int8.onnx")
    _marker(run, "onnx_fp32", ["v.onnx"], f"vggc export {src} --out $OUT/v.onnx")
    doc = answer(rows, out_dir=str(run))
    assert doc["targets"]["cpu-throughput"]["rebuild"] == [
        f"vggc export {src} --out $OUT/v.onnx", "vggc quantize $OUT/v.onnx --out $OUT/sub/v_int8.onnx",
        "vggc engine x --out y"]
    assert doc["targets"]["cpu-throughput"]["rebuild_from"] == "manifests"


def test_a_real_pipeline_step_marker_feeds_the_manifest_chain_and_the_answer_rebuilds_its_file(tmp_path, monkeypatch):
    import torch
    from conftest import run_cli
    from test_pipeline import run_tiny_onnx_pipeline

    import vggc.bench.answer

    # a tiny quick bench rarely settles a timing: let the exported file's rows be the answer
    monkeypatch.setattr(vggc.bench.answer, "qualifies", lambda r, *_: r["model"] == "tiny.onnx")
    res, out = run_tiny_onnx_pipeline(tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    onnx = out / "tiny.onnx"
    marker = json.loads((out / ".steps" / "onnx_fp32.json").read_text())
    cmds, note = manifest_commands(onnx)  # the chain: the ONNX file's manifest -> its step's marker
    assert note is None and cmds == [expand_out(marker["metrics"]["command"], out.as_posix())]
    assert shlex.split(cmds[0])[:2] == ["vggc", "export"]
    # the screen: OUT once, the command relative to it
    tail = res.output.split("\nreport: ", 1)[1].strip().splitlines()
    assert f"  $ {out_line(str(out))}   # the run's --out: the $OUT of the commands below" in tail
    rebuild = [ln.strip().removeprefix("$ ") for ln in tail if ln.strip().startswith("$ vggc export")]
    assert rebuild and all("$OUT/tiny.onnx" in c for c in rebuild)
    # answer.json and report.md, written by the pipeline's bench in <run>/bench: the same OUT
    doc = json.loads((out / "bench" / "answer.json").read_text())
    assert doc["out_dir"] == str(out)
    assert doc["targets"]["cpu-throughput"]["rebuild"] == rebuild[:1]
    assert f"```sh\n{out_line(str(out))}\n{rebuild[0]}\n```" in (out / "bench" / "report.md").read_text()
    # pasted elsewhere with OUT set: the same file again
    other = tmp_path / "other"
    args = shell_words(rebuild[0].removeprefix("vggc "), str(other))
    before = torch.get_num_threads()
    try:
        again = run_cli(*args)
    finally:
        torch.set_num_threads(before)
    assert again.exit_code == 0, again.output
    assert (other / "tiny.onnx").is_file()
    assert sha256_file(other / "tiny.onnx") == sha256_file(onnx)


def test_bench_outputs_take_the_run_directory_as_out(tmp_path):
    from vggc.bench.report import ctx_out_dir, write_outputs
    from vggc.bench.rows import BenchRows

    run = tmp_path / "run"
    cmds = [f"vggc export v.pt --out {run}/v.onnx", f"vggc quantize {run}/v.onnx --out {run}/v_int8.onnx"]

    def written(out: Path, ctx: dict) -> dict:
        rows = BenchRows(_rows(run, cmds))
        rows.context = {"batch": 64, "max_drop_default": True, **ctx}
        write_outputs(rows, out, plot=False)
        return json.loads((out / "answer.json").read_text())

    assert written(tmp_path / "plain", {})["out_dir"] is None  # a plain bench: nothing to say
    (run / ".steps").mkdir(parents=True)  # a pipeline's run directory: its bench writes to <run>/bench
    doc = written(run / "bench", {})
    assert doc["out_dir"] == str(run)
    assert doc["targets"]["cpu-throughput"]["rebuild"] == ["vggc export v.pt --out $OUT/v.onnx",
                                                           "vggc quantize $OUT/v.onnx --out $OUT/v_int8.onnx"]
    assert "```sh\n" + out_line(str(run)) + "\nvggc export" in (run / "bench" / "report.md").read_text()
    assert ctx_out_dir({"run_out": "runs/x"}, run / "bench") == "runs/x"  # recorded by the run: it wins
    assert ctx_out_dir({}, tmp_path / "plain") is None
