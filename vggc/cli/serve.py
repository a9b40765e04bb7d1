"""``vggc serve``: run the bundled tritonserver on 127.0.0.1 for a model repository until Ctrl-C/SIGTERM."""

from __future__ import annotations

import signal
import time

import click

from vggc.cli.common import emit_json

NO_BACKEND_HINT = ("the bundled tritonserver has only the python backend: `vggc triton-add REPO FILE` serves an "
                   ".onnx/.xml on ORT/OpenVINO inside it, or pass --backends DIR with the missing backend")


def _echo_states(server) -> None:
    asked = {*server.load, *server.skipped}
    hint = False
    for m in (m for m in server.model_states() if m["name"] in asked):
        reason = f"  ({m['reason']})" if m.get("reason") else ""
        click.echo(f"  {m['name']:<32} {m['state']}{reason}")
        hint = hint or "unable to find backend library" in (m.get("reason") or "")
    if hint:
        click.echo(f"note: {NO_BACKEND_HINT}", err=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@click.command("serve")
@click.argument("repo", type=click.Path(file_okay=False, exists=True, path_type=str))
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Load only this model (repeatable). Default: every model directory of REPO, except those "
                   "that need a GPU (tensorrt_plan, KIND_GPU) when none is visible: listed as skipped.")
@click.option("--backends", type=click.Path(file_okay=False, exists=True, path_type=str), default=None,
              help="A directory of extra Triton backend directories (e.g. onnxruntime/ from a full Triton "
                   "install) copied beside the bundled python backend. The bundled server has only the python "
                   "backend: an onnxruntime_onnx model fails to load without one (its reason is shown).")
@click.option("--ready-timeout", type=click.FloatRange(1, 3600), default=120.0, show_default=True,
              help="Seconds to wait for /v2/health/ready.")
@click.option("--duration", type=click.FloatRange(0, None, min_open=True), default=None,
              help="Stop after this many seconds (default: until Ctrl-C or SIGTERM).")
@click.option("--json", "as_json", is_flag=True, help="Print the server facts and model states as one JSON object "
                                                        "when ready.")
def command(repo, models, backends, ready_timeout, duration, as_json):
    """Serve REPO (a Triton model repository from `vggc export --triton` / `vggc triton-add`) with the
    tritonserver bundled by the serve extra (pip install -e '.[serve]'; it needs the system's libpython3.X:
    apt-get install -y libpython3.11), bound to 127.0.0.1 only, on free ports, metrics off.

    Models are loaded explicitly (--model-control-mode explicit); a model that fails to load is listed with
    Triton's reason while the others serve. Prints the HTTP and gRPC URLs and each model's state, then serves
    until Ctrl-C or SIGTERM (or --duration), and stops the server and its python-backend processes.

    The CPU answer of `vggc pipeline` is served through `vggc triton-add REPO answer.json` (OpenVINO/ORT inside
    Triton's python backend): its timings are "Triton + python backend + OpenVINO CPU", not Triton's C++
    backends. Measure it with `vggc loadtest 127.0.0.1:PORT MODEL`.
    """
    from vggc.errors import VggcError
    from vggc.serve.server import TritonServer

    server = TritonServer(repo, models=list(models) or None, backends=backends, ready_timeout=ready_timeout)
    for name, reason in server.skipped.items():
        click.echo(f"{name}: {reason}", err=True)
    # Ctrl-C stops it even when the shell or parent that started it ignores SIGINT (a background job, a
    # test runner): Python installs no KeyboardInterrupt handler when SIGINT is inherited as ignored
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if as_json:
            emit_json({**server.facts(), "models": server.model_states()})
        else:
            f = server.facts()
            click.echo(f"{f['server']} on 127.0.0.1 (metrics off), pid {f['pid']}")
            click.echo(f"  HTTP  {server.http_url}")
            click.echo(f"  gRPC  {server.grpc_url}")
            _echo_states(server)
            click.echo("serving; Ctrl-C or SIGTERM stops it", err=True)
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            if not server.running():
                raise VggcError(f"tritonserver exited with code {server.proc.returncode}: {server.log_error()}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        code = server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"stopped (tritonserver exit code {code})", err=True)
