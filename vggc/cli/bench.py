"""``vggc bench``: top-1, latency, throughput, size and cost of every model file on every backend."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from vggc.cli.common import data_option, emit_json, threads_option
from vggc.errors import VggcError, first_line


def backend_help_rows() -> list[tuple[str, str]]:
    """(key, what it runs / needs / whether it can run here) for every registered backend."""
    from vggc import runtime

    rows = []
    for b in runtime.backends():
        try:
            reason = b.available()
        except Exception as err:  # noqa: BLE001 - help must always render
            reason = first_line(err)
        note = b.note() if callable(getattr(b, "note", None)) else None
        text = f"{'/'.join(b.formats)} files on {b.device}"
        text += "; default" if b.default else "; not in the default set"
        text += f"; unavailable here: {reason}" if reason else "; available here"
        if note:
            text += f" ({note})"
        rows.append((b.key, text))
    return rows


def max_drop_option(f):
    """``--max-drop PT``: the top-1 budget of the recommended variant (shared with ``vggc pipeline``)."""
    return click.option("--max-drop", "max_drop", type=click.FloatRange(0.0, 100.0), default=None, metavar="PT",
                        help="Top-1 budget in percentage points: the recommended variant is the fastest row with "
                             "a settled timing that loses at most PT against the baseline (results.json: "
                             "within_budget). Default: 1% of the baseline's top-1.")(f)


class BenchCommand(click.Command):
    """Appends the backend registry (keys, formats, device, availability) to ``--help``."""

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        try:
            rows = backend_help_rows()
        except Exception as err:  # noqa: BLE001
            rows = [("?", f"could not list backends: {err}")]
        with formatter.section("Backends (keys for --backends)"):
            formatter.write_dl(rows)


@click.command("bench", cls=BenchCommand)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@data_option()
@click.option("--batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Batch size for the accuracy pass and the throughput measurement (latency is at batch 1).")
@click.option("--backends", default=None, metavar="KEY[,KEY...]|all",
              help="Backends to run, comma-separated keys (listed below) or 'all'. Default: every backend "
                   "in the default set that runs each file's format; ones that cannot run here still get a "
                   "row saying why.")
@click.option("--baseline", default=None, metavar="FILE[:BACKEND]",
              help="Row that delta_pt (top-1 difference in percentage points) and speedup are relative to; "
                   "FILE is added to the run if it is not among MODELS. Default: the first model's first row "
                   "that ran.")
@click.option("--quick", is_flag=True,
              help="Top-1 on a class-balanced subset of 2,000 test images (seed 0) and shorter timing; every "
                   "output is labelled as quick.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Top-1 on a class-balanced subset of this many test images (overrides --quick's 2,000).")
@threads_option
@click.option("--out", "out", default="artifacts/bench", show_default=True,
              type=click.Path(file_okay=False, path_type=str),
              help="Directory for results.json, results.csv, report.md, pareto.png, learning_curves.png and "
                   "accuracy-cache.json.")
@click.option("--no-plot", is_flag=True, help="Do not draw pareto.png or learning_curves.png.")
@click.option("--no-cache", is_flag=True,
              help="Ignore and do not update accuracy-cache.json (top-1 of a file on a backend is deterministic, "
                   "so by default a rerun reuses it and only re-times).")
@click.option("--timing", "timing_mode", type=click.Choice(["interleaved", "sequential"]), default="interleaved",
              show_default=True,
              help="interleaved: after all accuracy passes, time every row together in rounds (each round times "
                   "each row once), so speedups between rows come from the same minutes of a noisy machine; all "
                   "models stay loaded meanwhile. sequential: time each row alone right after its accuracy pass "
                   "(one model in memory at a time).")
@click.option("--rounds", type=click.IntRange(1, 100), default=None,
              help="Interleaved timing rounds. Default: 7, or 3 with --quick.")
@max_drop_option
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list instead of the table.")
def command(models, data, batch, backends, baseline, quick, limit, threads, out, no_plot, no_cache, timing_mode,
            rounds, max_drop, as_json):
    """Measure every MODEL file on every backend that can run its format.

    Per (model, backend) row: top-1 on the CIFAR-10 test split, delta_pt against the baseline row,
    latency p50/p90 at batch 1 (ms), throughput at --batch (img/s), speedup, size on disk, params,
    MACs and compile/first-call time. A row that cannot run here (no CUDA, missing library, failing
    file) says why and the others still run. Writes results.json, results.csv, report.md,
    pareto.png and, when a pruned or distilled file's manifest records top-1 per epoch,
    learning_curves.png into --out. Timings are medians of repeated calls after warm-up with a fixed thread
    count, by default taken in interleaved rounds over all rows (see --timing); other load on the
    machine still makes absolute numbers noisy.
    """
    from vggc.artifacts import read_manifest
    from vggc.bench import run_bench, screen_table
    from vggc.bench.answer import answer, screen_lines
    from vggc.bench.report import ctx_budget, ctx_out_dir, subset_label
    from vggc.bench.timing import timing_policy
    from vggc.cli.common import set_threads
    from vggc.progress import tqdm_progress

    for m in models:  # an existing but unreadable manifest/sidecar is bad input (exit 2), as in eval/quantize
        read_manifest(m)
    policy = timing_policy(timing_mode, quick, rounds)
    n_threads = set_threads(threads)
    cmdline = " ".join(shlex.quote(a) for a in ["vggc", *sys.argv[1:]])
    rows = run_bench(models, data, batch=batch, backends=backends, baseline=baseline, quick=quick,
                     threads=n_threads, limit=limit, progress=tqdm_progress, out=out, use_cache=not no_cache,
                     plot=not no_plot, command=cmdline, timing=policy, log=lambda msg: click.echo(msg, err=True),
                     max_drop_pt=max_drop)
    ctx = rows.context
    if as_json:
        emit_json(list(rows))
    else:
        click.echo(subset_label(ctx) + f"; batch {batch}; {n_threads} threads")
        click.echo(screen_table(rows, ctx))
        base = ctx.get("baseline")
        if base:
            click.echo(f"baseline: {base['model']} on {base['backend']}")
        if ctx.get("not_run_by_default"):
            click.echo("not run by default here: " + "; ".join(f"{k} ({v})" for k, v in
                                                                ctx["not_run_by_default"].items())
                       + " -- name them in --backends or use --backends all")
        click.echo(f"wrote {', '.join(ctx.get('outputs', {}).values())}")
        click.echo("")
        click.echo("\n".join(screen_lines(answer(list(rows), ctx_budget(ctx), ctx_out_dir(ctx, Path(out))))))
    if not any(r["status"] == "ok" for r in rows):
        raise VggcError("no (model, backend) row could run here; see the reasons above and in results.json")
