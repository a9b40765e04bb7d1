"""``vggc engine``: build a TensorRT engine (FP16 / INT8) on a GPU machine, checked layer by layer."""

from __future__ import annotations

import click

from vggc.cli.common import emit_json


@click.command("engine")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), required=True,
              help="Engine precision. It must match MODEL: fp16 needs the FP16 ONNX of `vggc export --fp16`, int8 a "
                   "QDQ ONNX from `vggc quantize --backend onnxruntime --mode static` (symmetric int8). TensorRT 11 "
                   "has no FP16/INT8 builder flags: the precision comes from the ONNX graph.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Output engine (.engine or .plan), written atomically with a manifest <out>.json (TensorRT "
                   "version, GPU, compute capability, profile, per-layer precision summary, source SHA-256). "
                   "With --builder torch-tensorrt also .ep (a Torch-TensorRT ExportedProgram).")
@click.option("--min-batch", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="Smallest batch of the optimisation profile (keep 1 for Triton and batch-1 latency).")
@click.option("--opt-batch", type=click.IntRange(1, 65536), default=64, show_default=True,
              help="Batch size TensorRT tunes kernels for.")
@click.option("--max-batch", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="Largest batch the engine accepts (vggc splits bigger batches).")
@click.option("--workspace", "workspace", type=click.FloatRange(0, 1024, min_open=True), default=4.0,
              show_default=True, help="Builder workspace memory pool limit in GiB.")
@click.option("--builder", type=click.Choice(["tensorrt", "torch-tensorrt"]), default="tensorrt", show_default=True,
              help="tensorrt: TensorRT's ONNX parser on MODEL.onnx. torch-tensorrt: torch_tensorrt.compile("
                   "ir='dynamo') on the state_dict MODEL.pt in FP16 with FP32 I/O (explicit typing); fp16 only.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Timing cache file: read when it exists, updated after the build (makes rebuilds on the same "
                   "GPU and TensorRT version much faster).")
@click.option("--allow-mixed", is_flag=True,
              help="Keep an engine where some (not all) convolution/GEMM layers run in another type than "
                   "--precision, or whose layer types the engine inspector cannot tell (flagged in its manifest). "
                   "Default: refuse it and write nothing. An engine with no layer in --precision is never kept.")
@click.option("--device", type=click.IntRange(0), default=0, show_default=True, help="CUDA device index.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (path, precision, builder, tensorrt, gpu, compute_capability, profile, "
                   "build_seconds, precision_check, layer_precision).")
def command(model, precision, out, min_batch, opt_batch, max_batch, workspace, builder, timing_cache, allow_mixed,
            device, as_json):
    """Build a TensorRT engine from MODEL on this machine's GPU.

    MODEL is an ONNX file from `vggc export --fp16` (fp16) or `vggc quantize --backend onnxruntime
    --mode static` (int8) for --builder tensorrt, or a state_dict .pt for --builder torch-tensorrt.
    After the build every convolution/GEMM layer is checked (engine inspector) to run in
    --precision; a silently FP32 engine is refused. Engines only run with the TensorRT version and
    GPU type that built them: build on the serving machine. Needs `pip install 'vggc[gpu]'` and a
    CUDA GPU (exit code 3 otherwise).

    Example: vggc engine model-fp16.onnx --precision fp16 --out model-fp16.engine --timing-cache trt.cache
    """
    from vggc.export.tensorrt import build_engine, build_torch_tensorrt

    build = build_engine if builder == "tensorrt" else build_torch_tensorrt
    facts = build(model, out, precision=precision, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                  workspace_gib=workspace, timing_cache=timing_cache, allow_mixed=allow_mixed, device=device)
    if as_json:
        emit_json(facts)
        return
    p = facts["profile"]
    click.echo(f"wrote {facts['path']} ({facts['precision'].upper()}, {facts['builder']}, "
               f"{facts['size_bytes'] / 1e6:.2f} MB, built in {facts['build_seconds']:.1f} s)")
    click.echo(f"  TensorRT {facts.get('tensorrt', '?')} on {facts.get('gpu', '?')} "
               f"(compute capability {facts.get('compute_capability', '?')})")
    click.echo(f"  batch profile min {p.get('min')} opt {p.get('opt')} max {p.get('max')}")
    if facts.get("timing_cache_rejected"):
        click.echo(f"  timing cache rejected ({facts.get('timing_cache_rejected_why')}): built without it, "
                   "rewritten")
    elif facts.get("timing_cache_written"):
        click.echo("  timing cache updated")
    check = facts.get("precision_check")
    if check:
        click.echo(f"  layer check: {check['message']}")
    elif facts.get("check_vs_eager_fp16"):
        c = facts["check_vs_eager_fp16"]
        click.echo(f"  vs eager FP16 on {c['n']} random inputs: max |dlogit| {c['max_abs_logit_diff']:.3g}, "
                   f"top-1 agreement {100 * c['top1_agreement']:.1f}%")
