"""``vggc export``: write a deployable model file (ONNX FP32/FP16) checked against PyTorch."""

from __future__ import annotations

import click

from vggc.cli.common import data_option, emit_json, preprocess_options, set_threads, threads_option
from vggc.export.job import FORMATS, export_file


@click.command("export")
@click.argument("weights", type=click.Path(dir_okay=False, path_type=str))
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="onnx", show_default=True,
              help="Output format. onnx: one self-contained .onnx file with a dynamic batch "
                   "dimension, input 'input' (normalised float32 N x 3 x S x S), output 'logits'.")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Output file (.onnx). Written atomically with a manifest <out>.json beside it. May be left "
                   "out with --triton DIR: the ONNX then goes only into the repository, as model <WEIGHTS stem>.")
@click.option("--opset", type=int, default=18, show_default=True,
              help="ONNX opset version (18..23, what the exporter implements).")
@click.option("--fp16", is_flag=True,
              help="Store weights and compute in FP16; the input and output stay float32 (a Cast at "
                   "each end). Parity bar 99.5% top-1 agreement instead of 99.9%.")
@data_option(required=False)
@click.option("--no-parity", "no_parity", is_flag=True,
              help="Skip the ONNX Runtime vs PyTorch check. The check is on by default and the export is "
                   "refused below the agreement bar; without --data it runs on a fixed-seed batch of "
                   "synthetic images (real test images give the stronger check).")
@click.option("--parity-limit", type=click.IntRange(1), default=None,
              help="Check parity on a class-balanced subset of this many test images "
                   "(default: all 10,000); without --data, the number of synthetic images (default 512).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the --parity-limit subset.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Images per forward pass in the parity check.")
@preprocess_options
@threads_option
@click.option("--triton", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Also write a Triton model repository into DIR: DIR/<out stem>/config.pbtxt (platform "
                   "onnxruntime_onnx, dynamic batching, instance group) + DIR/<out stem>/1/model.onnx. Without "
                   "--out the model is named after WEIGHTS' stem.")
@click.option("--triton-engine", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Add this `vggc engine` .engine/.plan as a second model <out stem>_trt (platform tensorrt_plan, "
                   "1/model.plan). It must be built with the TensorRT version of the Triton server.")
@click.option("--triton-max-batch", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="Triton max_batch_size (for the engine model capped at its profile's max batch).")
@click.option("--triton-instance", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Triton instance_group kind of the ONNX model: KIND_GPU or KIND_CPU (count 1). The "
                   "--triton-engine model is always KIND_GPU (Triton runs TensorRT plans on GPUs only).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (path, precision, opset, size_bytes, params, macs, parity "
                   "with kind (real/synthetic), max_abs_logit_diff, top1_agreement, torch_top1, onnx_top1 (null on "
                   "synthetic images); triton when written).")
def command(weights, fmt, out, opset, fp16, data, no_parity, parity_limit, seed, batch_size, mean, std,
            input_size, threads, triton, triton_engine, triton_max_batch, triton_instance, as_json):
    """Export WEIGHTS (a state_dict .pt) to a deployable model file and check it.

    The exported file is run with ONNX Runtime on the CPU next to PyTorch on real test images
    (--data), else on a fixed-seed batch of synthetic images at the model's input size; the command
    prints the largest logit difference, the top-1 agreement (and both accuracies on real images),
    and fails (writing nothing) if agreement is below 99.9% (FP32) / 99.5% (FP16).

    Example: vggc export model.pt --format onnx --fp16 --out model-fp16.onnx --data cifar10/
    """
    from vggc.progress import tqdm_progress

    n_threads = set_threads(threads)
    facts = export_file(weights, out, fmt=fmt, data=data, opset=opset, fp16=fp16, parity=not no_parity,
                        parity_limit=parity_limit, seed=seed, batch_size=batch_size, mean=mean, std=std,
                        input_size=input_size, threads=n_threads, progress=tqdm_progress, triton=triton,
                        triton_engine=triton_engine, triton_max_batch=triton_max_batch,
                        triton_instance=triton_instance)
    if as_json:
        emit_json(facts)
        return
    s = facts["input_size"]
    click.echo(f"wrote {facts['path']} ({facts['format']}, {facts['precision'].upper()}, opset {facts['opset']}, "
               f"{facts['size_bytes'] / 1e6:.2f} MB, dynamic batch, input {s}x{s})")
    for m in (facts.get("triton") or {}).get("models", []):
        click.echo(f"triton: {m['config']} ({m['platform']}, max_batch_size {m['max_batch_size']})")
    p = facts["parity"]
    if p is None:
        click.echo("parity check skipped (--no-parity)")
        return
    synthetic = p.get("kind") == "synthetic"
    what = f"{p['n']} synthetic images (fixed seed {seed})" if synthetic else f"{p['n']} test images"
    click.echo(f"parity, ONNX Runtime CPU vs PyTorch on {what}:")
    click.echo(f"  max |dlogit|      {p['max_abs_logit_diff']:.3g}  (mean {p['mean_abs_logit_diff']:.3g})")
    click.echo(f"  top-1 agreement   {100 * p['top1_agreement']:.2f}%  ({p['agreements']}/{p['n']}, "
               f"bar {100 * p['min_agreement']:.1f}%)")
    if synthetic:
        click.echo("  no test images given: real images (--data DIR) give the stronger check")
        return
    click.echo(f"  PyTorch top-1     {100 * p['torch_top1']:.2f}%")
    click.echo(f"  ONNX top-1        {100 * p['onnx_top1']:.2f}%")
