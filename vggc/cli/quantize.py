"""``vggc quantize``: INT8 post-training quantization (static or dynamic) with ONNX Runtime, PyTorch or
OpenVINO/NNCF."""

from __future__ import annotations

import click

from vggc import formats
from vggc.cli.common import data_option, emit_json, preprocess_options, set_threads, threads_option
from vggc.compress.quantize import CALIB_METHODS, MODES
from vggc.compress.quantize.backend_openvino import PRESETS


class _TableChoice(click.Choice):
    """A :class:`click.Choice` whose choices are read from the format table (:mod:`vggc.formats`) each
    time, so a backend registered after this module was imported is offered too."""

    def __init__(self, choices_of, **kw):
        self._choices_of = choices_of
        super().__init__(tuple(choices_of()), **kw)

    @property
    def choices(self):
        return tuple(self._choices_of())

    @choices.setter
    def choices(self, _value) -> None:  # click.Choice.__init__ assigns it
        pass


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} MB"


@click.command("quantize")
@click.argument("weights", type=click.Path(dir_okay=False, path_type=str))
@click.option("--mode", type=click.Choice(MODES), required=True,
              help="static: weights AND activations int8, activation ranges calibrated on training images "
                   "(needs --data); the mode that makes convolutions faster. dynamic: int8 weights, activations "
                   "quantized at run time, Linear layers ONLY (convs stay FP32: on a CIFAR VGG16 size and speed "
                   "barely change).")
@click.option("--backend", type=_TableChoice(formats.quantize_backends), required=True,
              help="onnxruntime: exports ONNX (opset 18, dynamic batch) and writes a QDQ .onnx (static: "
                   "symmetric S8S8, also the input of `vggc engine --precision int8`; runs as QLinearConv). "
                   "torch: torchao PT2E (static, X86InductorQuantizer) or quantize_ (dynamic) saved as a "
                   "torch.export .pt2; run it with backend torch-int8-compiled (oneDNN int8) for speed. "
                   "openvino: NNCF post-training quantization of the FP32 ONNX export, written as OpenVINO IR "
                   "(OUT.xml + OUT.bin; static only); runs on backend openvino-cpu.")
@data_option(required=False)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Output file: .onnx for --backend onnxruntime, .pt2 for --backend torch, .xml for --backend "
                   "openvino (its weights go to the .bin of the same name). Written atomically "
                   "with a manifest OUT.json (source SHA-256, settings, calibration, accuracy).")
@click.option("--calib-size", type=int, default=1000, show_default=True,
              help="Calibration images (static mode): a class-balanced subset of the TRAINING split, never "
                   "test images. 1 .. size of the training split.")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=None,
              help="How activation ranges are chosen from the calibration data. minmax: observed min/max. "
                   "entropy: onnxruntime KL-divergence; torch HistogramObserver (least quantization error). "
                   "percentile: clip at the 99.999th percentile. Default: minmax (onnxruntime), entropy (torch).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Weight scales per output channel (more accurate) or one per tensor. The torch static path "
                   "supports per-channel only (its int8 kernels need it).")
@click.option("--reduce-range/--full-range", "reduce_range", default=None,
              help="7-bit ranges (onnxruntime: weights, torch: activations) to avoid int16 saturation of "
                   "u8*s8 dot products on CPUs without VNNI. Default: on when this CPU lacks VNNI "
                   "(AVX512-VNNI / AVX-VNNI / AMX), off otherwise; recorded in the manifest.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the calibration subset and the --eval-limit subset.")
@click.option("--opset", type=int, default=None,
              help="ONNX opset of the export (onnxruntime backend only; 18..23, default 18).")
@click.option("--fp32-onnx", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="FILE",
              help="--backend onnxruntime/openvino: quantize this FP32 ONNX (written by `vggc export` from the same "
                   "WEIGHTS; checked against its manifest FILE.json: source SHA-256, FP32, preprocessing, opset) "
                   "instead of exporting WEIGHTS again. The manifest records that it was reused.")
@click.option("--eval-limit", type=click.IntRange(1), default=None,
              help="Evaluate on a class-balanced subset of this many test images (default: all 10,000).")
@click.option("--no-eval", is_flag=True,
              help="Skip the test-set evaluation of the INT8 file and the FP32 source (done by default "
                   "when --data is given).")
@click.option("--eval-backend", type=_TableChoice(lambda: ["auto", *formats.quantize_eval_backends()]), default="auto",
              show_default=True,
              help="Backend for the evaluation. auto: onnxruntime-cpu for .onnx; openvino-cpu for .xml; "
                   "torch-int8-compiled for .pt2 "
                   "(torch.compile, ~20-60 s compile) when a C++ compiler exists, else torch-int8-eager "
                   "(simulated int8, slow).")
@click.option("--preset", type=click.Choice(PRESETS), default="performance", show_default=True,
              help="--backend openvino only: NNCF preset. performance: symmetric int8 weights and activations; "
                   "mixed: symmetric weights, asymmetric activations.")
@click.option("--fast-bias-correction/--full-bias-correction", default=True, show_default=True,
              help="--backend openvino only: NNCF's fast bias correction, or its full BiasCorrection algorithm "
                   "(slower, sometimes more accurate).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="Images per forward pass in the evaluation.")
@click.option("--max-drop", type=float, default=None, metavar="PT",
              help="Accuracy budget in percentage points of top-1 (static mode, every backend). When plain INT8 "
                   "loses more than PT on the evaluation images, keep the fewest, most sensitive layers in FP32 "
                   "(ranked by measured output divergence with one layer kept FP32 at a time, on calibration "
                   "images) until it fits; the manifest lists them (ONNX node names; torch module names) and the "
                   "backend the trials ran on: onnxruntime-cpu, openvino-cpu, or for torch the eager INT8 program "
                   "(torch-int8-eager; no compile per trial - the written file is then evaluated as usual). "
                   "A budget plain INT8 meets excludes none.")
@click.option("--max-fp32-layers", type=click.IntRange(1), default=None,
              help="With --max-drop: give up (one-line error) rather than keep more than this many layers FP32.")
@preprocess_options
@threads_option
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: path, size_bytes, fp32_size_bytes, size_ratio, quantized_conv, "
                   "quantized_linear, top1, fp32_top1, delta_pt, retention (fractions 0-1), notes, ...")
def command(weights, mode, backend, data, out, calib_size, calib_method, per_channel, reduce_range, seed, opset,
            fp32_onnx, eval_limit, no_eval, eval_backend, preset, fast_bias_correction, batch_size, max_drop, max_fp32_layers,
            mean, std, input_size, threads, as_json):
    """Quantize WEIGHTS (a state_dict .pt) to INT8 and evaluate it next to the FP32 source.

    \b
    Examples:
      vggc quantize model.pt --mode static --backend onnxruntime --data cifar10/ --out model-int8.onnx
      vggc quantize model.pt --mode static --backend torch --data cifar10/ --out model-int8.pt2
      vggc eval model-int8.pt2 --data cifar10/ --backend torch-int8-compiled
      vggc quantize model.pt --mode static --backend openvino --data cifar10/ --out model-int8.xml
    """
    from vggc.compress.quantize import check_settings, quantize
    from vggc.progress import tqdm_progress

    check_settings(mode=mode, backend=backend, out=out, data=data, calib_size=calib_size, calib_method=calib_method,
                   per_channel=per_channel, opset=opset, weights=weights, preset=preset, fp32_onnx=fp32_onnx)
    n_threads = set_threads(threads)
    eb = None if eval_backend == "auto" else eval_backend
    res = quantize(weights, mode=mode, backend=backend, out=out, data=data, calib_size=calib_size,
                   calib_method=calib_method, per_channel=per_channel, seed=seed, reduce_range=reduce_range,
                   opset=opset, eval_limit=eval_limit, evaluate=not no_eval, eval_batch_size=batch_size,
                   threads=n_threads, mean=mean, std=std, input_size=input_size, eval_backend=eb,
                   preset=preset, fast_bias_correction=fast_bias_correction, max_drop=max_drop,
                   max_fp32_layers=max_fp32_layers, fp32_onnx=fp32_onnx, progress=tqdm_progress)
    if as_json:
        emit_json(res)
        return
    click.echo(f"wrote {res['path']} ({backend}, {mode} INT8, {_mb(res['size_bytes'])} = "
               f"{100 * res['size_ratio']:.1f}% of FP32 {_mb(res['fp32_size_bytes'])})")
    click.echo(f"  quantized layers  {res['quantized_conv']} conv, {res['quantized_linear']} linear")
    if backend == "openvino":
        click.echo(f"  NNCF              preset {preset}, {'fast' if fast_bias_correction else 'full'} bias correction")
    if mode == "static":
        click.echo(f"  calibration       {res['calib_size']} training images, class-balanced, seed {res['seed']}, "
                   f"{res['calib_method']}, {'per-channel' if res['per_channel'] else 'per-tensor'} weights"
                   f"{', reduce-range' if res['reduce_range'] else ''}")
    if res.get("runtime_ops"):
        ops = ", ".join(f"{k} {v}" for k, v in list(res["runtime_ops"].items())[:6])
        click.echo(f"  ORT CPU runs      {ops}")
    if res["top1"] is not None:
        click.echo(f"  top-1 INT8        {100 * res['top1']:.2f}%  ({res['eval_n']} test images, {res['eval_backend']})")
        click.echo(f"  top-1 FP32        {100 * res['fp32_top1']:.2f}%  (delta {res['delta_pt']:+.2f} pt, "
                   f"{100 * res['retention']:.2f}% retained)")
    elif not data:
        click.echo("  accuracy not measured (no --data)")
    if res.get("budget"):
        b = res["budget"]
        kept = ", ".join(res["fp32_layers"]) or "none"
        click.echo(f"  --max-drop {b['max_drop_pt']:g} pt  kept FP32: {kept} "
                   f"({len(b['trials'])} trial(s); budget checked on the evaluation images, "
                   f"{b.get('backend', 'onnxruntime-cpu')})")
    for note in res["notes"]:
        if note.startswith(("dynamic", "--max-drop")):
            click.echo(f"  NOTE: {note}")
    if backend == "torch":  # the one backend whose evaluation backend is chosen
        click.echo(f"  run fast with: vggc eval {res['path']} --backend torch-int8-compiled --data DIR")
