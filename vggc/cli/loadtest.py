"""``vggc loadtest``: a bounded gRPC load test (or served top-1) of a Triton server on 127.0.0.1."""

from __future__ import annotations

import click

from vggc.cli.common import data_option, emit_json, preprocess_options


def _concurrency(ctx, param, value):
    try:
        vals = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,4,16") from None
    if not vals or any(v < 1 or v > 256 for v in vals):
        raise click.BadParameter("each concurrency must be 1..256")
    return vals


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(res: dict) -> None:
    click.echo(f"{res['label']}  ({res['server']}, model {res['model']}, {res['cpu']})")
    click.echo(f"gRPC {res['url']}, {res['settings']['batch']} image(s)/request, at most "
               f"{res['settings']['requests']} requests or {res['settings']['deadline_s']:g} s per level")
    click.echo(f"{'conc':>5} {'requests':>9} {'req/s':>9} {'img/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
               f"{'execs':>7} {'mean batch':>10} {'req/exec':>8}")
    for r in res["levels"]:
        s = r["server_stats"]
        click.echo(f"{r['concurrency']:>5} {r['requests']:>9} {_fmt(r['throughput_rps'], '.1f'):>9} "
                   f"{_fmt(r['throughput_ips'], '.1f'):>9} {_fmt(r['latency_p50_ms'], '.3f'):>8} "
                   f"{_fmt(r['latency_p95_ms'], '.3f'):>8} {_fmt(r['latency_p99_ms'], '.3f'):>8} "
                   f"{s['execution_count']:>7} {_fmt(s['mean_batch'], '.2f'):>10} "
                   f"{_fmt(s['mean_requests_per_execution'], '.2f'):>8}" + ("  (deadline hit)" if r["hit_deadline"]
                                                                           else ""))
    ref = res.get("reference")
    if ref:
        click.echo(f"{ref['label']}: {ref['throughput_ips']:.1f} img/s (before {ref['before']['throughput_ips']:.1f}, "
                   f"after {ref['after']['throughput_ips']:.1f}); served/in-process at concurrency "
                   + ", ".join(f"{r['concurrency']}: {r['served_vs_inprocess']:.2f}" for r in res["levels"]))


@click.command("loadtest")
@click.argument("url")
@click.argument("model")
@click.option("--concurrency", default="1,4,16", show_default=True, callback=_concurrency,
              help="Comma-separated client counts, one level each (one thread + gRPC client per client).")
@click.option("--requests", type=click.IntRange(1, 10_000_000), default=2000, show_default=True,
              help="Requests per level (the level also ends at --deadline).")
@click.option("--deadline", type=click.FloatRange(0, 3600, min_open=True), default=None,
              help="Seconds per level at most [default: 60]; with --data for the whole split [default: 900].")
@click.option("--timeout", type=click.FloatRange(0, 600, min_open=True), default=10.0, show_default=True,
              help="Per-request client timeout in seconds.")
@click.option("--batch", type=click.IntRange(1, 65536), default=None,
              help="Images per request [default: 1; with --data 64]; the dynamic batcher merges requests into "
                   "larger batches.")
@click.option("--warmup", type=click.IntRange(0, 100_000), default=20, show_default=True,
              help="Uncounted requests before the first level.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic input / --limit subset.")
@data_option(required=False)
@click.option("--limit", type=click.IntRange(1), default=None,
              help="With --data: a class-balanced subset of this many test images (default all).")
@preprocess_options
@click.option("--reference", type=click.Path(dir_okay=False, exists=True, path_type=str), default=None,
              help="The served file (.xml / .onnx): also time it in-process (vggc's openvino-cpu / onnxruntime-cpu "
                   "runner, batch 64) just before and after the levels, and report served / in-process throughput.")
@click.option("--reference-threads", type=click.IntRange(1, 512), default=None,
              help="Threads of the in-process reference (default: all cores).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the result JSON here (atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object instead of the table.")
def command(url, model, concurrency, requests, deadline, timeout, batch, warmup, seed, data, limit, mean, std,
            input_size, reference, reference_threads, out, as_json):
    """Load-test MODEL on the Triton server at URL (gRPC HOST:PORT, loopback only, e.g. the gRPC URL
    `vggc serve` prints): at each --concurrency C, C client threads send a fixed-seed input until
    --requests requests are done or --deadline passes, each with a --timeout. Reports throughput, latency
    p50/p95/p99 and the server's own statistics for the model (ModelStatistics = /v2/models/M/stats:
    executions, mean batch = inferences per execution, requests per execution). The first failed request
    (e.g. the server went away) stops the test with one line.

    With --data DIR: instead, send DIR's test split (or --limit images) through the server in --batch-image
    requests from max(--concurrency) threads and report the served top-1.

    A python-backend model's rows are labelled "Triton + python backend + OpenVINO CPU" (or ORT CPU).
    """
    from vggc.artifacts import write_json

    if data:
        from vggc.progress import tqdm_progress
        from vggc.serve.accuracy import served_top1

        res = served_top1(url, model, data, limit=limit, seed=seed, batch=batch or 64, concurrency=max(concurrency),
                          timeout_s=timeout, deadline_s=deadline or 900.0, mean=mean, std=std, input_size=input_size,
                          progress=tqdm_progress)
    else:
        from vggc.serve.loadtest import run_loadtest

        res = run_loadtest(url, model, concurrency=concurrency, requests=requests, deadline_s=deadline or 60.0,
                           timeout_s=timeout, batch=batch or 1, warmup=warmup, seed=seed, reference=reference,
                           reference_threads=reference_threads)
    if out:
        write_json(out, res)
    if as_json:
        emit_json(res)
    elif data:
        click.echo(f"served top-1 {100 * res['top1']:.2f}% ({res['correct']}/{res['n']} {res['split']} images), "
                   f"{res['label']} ({res['server']}, model {model})")
    else:
        _table(res)
