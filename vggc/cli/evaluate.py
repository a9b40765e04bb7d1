"""``vggc eval``: top-1 and per-class accuracy of any model file on the CIFAR-10 test split."""

from __future__ import annotations

import click

from vggc import runtime
from vggc.cli.common import data_option, download_option, emit_json, preprocess_options, set_threads, threads_option
from vggc.data import limit_split, load_split, resolve_preprocess
from vggc.evaluate import EvalResult, evaluate
from vggc.progress import Progress, no_progress


def evaluate_file(path: str, data: str, *, backend: str | None = None, batch_size: int = 256,
                  limit: int | None = None, seed: int = 0, mean=None, std=None, input_size=None,
                  download: bool = False, progress: Progress = no_progress) -> tuple[EvalResult, dict]:
    """Evaluate a model file on the test split; return ``(result, facts)`` (facts: model, backend, ...)."""
    mf = runtime.describe(path)
    if mean or std or input_size:
        base = mf.preprocess
        mf.preprocess = resolve_preprocess({}, mean or base.mean, std or base.std, input_size or base.input_size)
    be = runtime.get_backend(backend) if backend else runtime.default_backend(mf.format)
    split = limit_split(load_split(data, "test", download=download, progress=progress), limit, seed)
    runner = runtime.open_model(mf, be)
    try:
        res = evaluate(runner.predict, split, mf.preprocess, batch_size=batch_size, progress=progress)
        used = dict(getattr(runner, "facts", None) or {})
    finally:
        runner.close()
    facts = {"model": mf.path.name, "backend": be.key, "precision": runtime.effective_precision(be, mf),
             "input_size": mf.preprocess.input_size, "limit": limit}
    if used:
        facts["runtime"] = used
    return res, facts


@click.command("eval")
@click.argument("weights", type=click.Path(dir_okay=False, path_type=str))
@data_option()
@click.option("--backend", default=None,
              help="Backend key, e.g. torch-fp32, torch-bf16, onnxruntime-cpu (see `vggc bench --help`). "
                   "Default: the first one that can run this file here.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Images per forward pass.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Evaluate a class-balanced subset of this many test images (default: all 10,000).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the --limit subset.")
@preprocess_options
@download_option
@threads_option
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: top1 (fraction 0-1), n, correct, per_class, model, backend.")
def command(weights, data, backend, batch_size, limit, seed, mean, std, input_size, download, threads, as_json):
    """Measure top-1 accuracy of WEIGHTS on the CIFAR-10 test split.

    WEIGHTS is a state_dict (.pt) or any model file vggc writes (.onnx, ...).
    """
    from vggc.progress import tqdm_progress

    set_threads(threads)
    res, facts = evaluate_file(weights, data, backend=backend, batch_size=batch_size, limit=limit, seed=seed,
                               mean=mean, std=std, input_size=input_size, download=download,
                               progress=tqdm_progress)
    if as_json:
        emit_json({**res.to_dict(), **facts})
        return
    click.echo(f"{facts['model']} on {facts['backend']} ({res.n} test images"
               f"{', class-balanced subset' if limit else ''}, {facts['input_size']}x{facts['input_size']})")
    click.echo(f"  top-1  {100 * res.top1:.2f}%  ({res.correct}/{res.n})")
    for name, acc in res.per_class.items():
        click.echo(f"  {name:<12} {100 * acc:6.2f}%")
