"""``vggc triton-add``: add an OpenVINO IR / ONNX file to a Triton repository as a python-backend CPU model."""

from __future__ import annotations

import click

from vggc.cli.common import emit_json


@click.command("triton-add")
@click.argument("repo", type=click.Path(file_okay=False, path_type=str))
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=str))
@click.option("--target", default="cpu-throughput", show_default=True,
              help="When FILE is a pipeline answer.json: the target whose model is served.")
@click.option("--name", default=None, help="Model name in REPO (default: <file stem>_py).")
@click.option("--runtime", type=click.Choice(["openvino", "onnxruntime"]), default=None,
              help="What runs the file inside Triton's python backend (default: openvino for .xml, onnxruntime "
                   "for .onnx).")
@click.option("--instances", type=click.IntRange(1, 256), default=None,
              help="instance_group count (KIND_CPU). Default: 2 from 4 physical cores up, else 1 (the cores of "
                   "the machine running triton-add: run it where the model is served, or set both options).")
@click.option("--threads", type=click.IntRange(1, 512), default=None,
              help="Runtime threads per instance. Default: the physical cores split between the instances.")
@click.option("--max-batch", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="max_batch_size (the dynamic batcher's largest merged batch).")
@click.option("--opt-batch", type=click.IntRange(1, 65536), default=64, show_default=True,
              help="Preferred batch size besides --max-batch.")
@click.option("--max-queue-delay-us", type=click.IntRange(0, 10_000_000), default=100, show_default=True,
              help="How long the dynamic batcher waits to merge requests.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
def command(repo, file, target, name, runtime, instances, threads, max_batch, opt_batch, max_queue_delay_us,
            as_json):
    """Add FILE (an OpenVINO IR .xml with its .bin, an .onnx, or a `vggc pipeline` answer.json: its --target's
    file) to the Triton model repository REPO as a python-backend model that runs it on OpenVINO / ONNX Runtime
    CPU inside Triton: REPO/<name>/config.pbtxt (backend "python", dynamic_batching, KIND_CPU instances),
    1/model.py, 1/model.xml+.bin or 1/model.onnx. The config's input/output are read from the file and
    checked against it; the model directory is swapped in whole.

    Serve it with `vggc serve REPO`; its timings are "Triton + python backend + OpenVINO CPU" (or ORT CPU).

    Example: vggc triton-add repo/ runs/answer.json && vggc serve repo/
    """
    from vggc.export.triton_python import resolve_served_file, write_python_model

    path = resolve_served_file(file, target)
    res = write_python_model(repo, path, name=name, runtime=runtime, max_batch=max_batch, opt_batch=opt_batch,
                             instances=instances, threads=threads, max_queue_delay_us=max_queue_delay_us)
    if as_json:
        emit_json(res)
        return
    click.echo(f"triton: {res['config']} ({res['label']}, {res['precision']}, {res['instances']} instance(s) x "
               f"{res['threads']} thread(s), max_batch_size {res['max_batch_size']}) from {path}")
