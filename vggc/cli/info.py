"""``vggc info``: layout, parameters, MACs, size on disk and per-layer widths of a model file."""

from __future__ import annotations

import click

from vggc import runtime
from vggc.cli.common import emit_json
from vggc.models import layer_table


def info_report(path: str, input_size: int | None = None) -> dict:
    """Return the facts ``vggc info`` shows, as a JSON-able dict."""
    mf = runtime.describe(path)
    if input_size and mf.format == "state_dict":
        from vggc.models import count_macs

        mf.macs = count_macs(mf.meta["_loaded"].model, input_size)
        mf.preprocess = type(mf.preprocess)(mf.preprocess.mean, mf.preprocess.std, input_size)
    doc = runtime.info_dict(mf)
    loaded = mf.meta.get("_loaded")
    if loaded is not None:
        doc["config"] = loaded.config.to_dict()
        doc["layers"] = layer_table(loaded.model)
    return doc


@click.command("info")
@click.argument("weights", type=click.Path(dir_okay=False, path_type=str))
@click.option("--input-size", type=click.IntRange(32, 512), default=None,
              help="Count MACs at this input side (default: the model's own, usually 32).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys include params, macs).")
def command(weights: str, input_size: int | None, as_json: bool) -> None:
    """Show a model file's architecture, size and cost.

    WEIGHTS is a state_dict (.pt) or any file vggc writes (.onnx, ...).
    """
    doc = info_report(weights, input_size)
    if as_json:
        emit_json(doc)
        return
    size = doc["preprocess"]["input_size"]
    click.echo(f"{doc['model']}: {doc['arch'] or doc['format']} ({doc['format']})")
    if doc["params"] is not None:
        click.echo(f"  params      {doc['params'] / 1e6:.2f} M ({doc['params']:,})")
    if doc["macs"] is not None:
        click.echo(f"  MACs        {doc['macs'] / 1e6:.1f} M at {size}x{size}")
    click.echo(f"  size        {doc['size_mb']:.2f} MB on disk")
    cfg = doc.get("config")
    if cfg and "widths" in cfg:
        click.echo(f"  batch norm  {'yes' if cfg['batch_norm'] else 'no'}")
        click.echo(f"  conv widths {' '.join(str(w) for w in cfg['widths'])}")
        click.echo(f"  classifier  {'-'.join(str(d) for d in cfg['classifier'])}")
    if doc.get("layers"):
        click.echo("  layer                 type    in    out      params")
        for r in doc["layers"]:
            click.echo(f"  {r['name']:<20}  {r['type']:<6} {r['in']:>5} {r['out']:>6} {r['params']:>11,}")
