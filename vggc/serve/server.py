"""Start, watch and stop the bundled ``tritonserver`` on 127.0.0.1 for a vggc model repository.

:class:`TritonServer` (also a context manager) runs the server of :mod:`vggc.serve.bundle` with:

* HTTP and gRPC bound to ``127.0.0.1`` only, on free ports picked at start; metrics off;
* ``--model-control-mode explicit`` and one ``--load-model`` per model :func:`plan_models` chose: every
  model directory of the repository (or the names asked for), except those that need a GPU where none
  is visible (a ``tensorrt_plan`` model, a ``KIND_GPU`` instance group), which are listed as skipped
  with the reason, never dropped silently;
* ``--exit-on-error false`` and ``--strict-readiness false``: a model that fails to load (a corrupt
  file, a missing backend) is reported with Triton's reason while the others serve;
* its own process group and session, so :meth:`TritonServer.stop` can end it and its python-backend
  stubs together: SIGTERM to the group, a bounded wait, then SIGKILL;
* ``PR_SET_PDEATHSIG``: it gets SIGTERM when the thread that started it dies (a killed ``vggc serve`` or
  test run leaves no server behind), so start it from a thread that outlives it.

``wait_ready`` polls ``/v2/health/ready`` until a deadline; :meth:`TritonServer.model_states` is the
server's ``/v2/repository/index`` (state and reason per model). The server's log goes to a file in
the server's temporary directory (``log_path``), removed by :meth:`TritonServer.stop`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from vggc.errors import InputError, VggcError, first_line
from vggc.serve.bundle import assemble_backends, locate

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
PORT_ATTEMPTS = 3  # starts with fresh ports when one was taken in the meantime
GPU_DEVICE = Path("/dev/nvidiactl")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
_TRITON_ERROR = re.compile(r"^E\d{4} ")  # glog error lines: E<mmdd> <time> ...


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def gpu_visible() -> bool:
    """True when an NVIDIA GPU device node is present (what a KIND_GPU / tensorrt_plan model needs)."""
    return GPU_DEVICE.exists()


def repo_models(repo: Path) -> dict[str, dict | str]:
    """Return each model directory of ``repo`` (a visible one with a ``config.pbtxt``) -> its parsed config, or
    the one-line reason it does not parse (Triton will then refuse it with its own reason)."""
    from vggc.export.triton import parse_pbtxt

    out: dict[str, dict | str] = {}
    # hidden directories are a writer's temporary ones (vggc.artifacts.TMP_PREFIX, .old-*), never models
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and (p / "config.pbtxt").is_file()):
        try:
            out[d.name] = parse_pbtxt((d / "config.pbtxt").read_text())
        except ValueError as err:
            out[d.name] = first_line(err)
    return out


def _gpu_need(cfg: dict | str) -> str | None:
    if not isinstance(cfg, dict):
        return None
    if cfg.get("platform") == "tensorrt_plan" or cfg.get("backend") == "tensorrt":
        return "a tensorrt_plan model runs on GPUs only"
    if any(g.get("kind", "KIND_GPU") == "KIND_GPU" for g in cfg.get("instance_group") or [{}]):
        return "its instance_group is KIND_GPU (export with --triton-instance cpu for CPU serving)"
    return None


def plan_models(repo, models: list[str] | None = None, gpu: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """Return ``(names to load, {skipped name: reason})`` for ``repo``: the ``models`` asked for (all model
    directories by default), without those that need a GPU when ``gpu`` (default :func:`gpu_visible`) is
    false. :class:`InputError` for a name that is not in the repository, or when nothing is left to load."""
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"{repo}: not a directory (a Triton model repository from `vggc export --triton`)")
    found = repo_models(repo)
    names = list(models) if models else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise InputError(f"{repo}: no model {', '.join(unknown)} (has: {', '.join(found) or 'none'})")
    gpu = gpu_visible() if gpu is None else gpu
    skipped = {} if gpu else {n: f"skipped, no GPU visible: {r}" for n in names if (r := _gpu_need(found[n]))}
    load = [n for n in names if n not in skipped]
    if not load:
        raise InputError(f"{repo}: nothing to load ({'; '.join(f'{k} {v}' for k, v in skipped.items()) or 'empty'})")
    return load, skipped


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it dies (Linux PR_SET_PDEATHSIG), so a
    killed vggc (or test run) does not leave a tritonserver behind. Best effort: ignored where prctl is absent."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _server_env(bundle) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(bundle.libs), env.get("LD_LIBRARY_PATH")) if p)
    # the python backend stub finds its interpreter (and so this venv's site-packages) as `python3` on PATH
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")))
    return env


class TritonServer:
    """The bundled tritonserver serving ``repo`` on 127.0.0.1 (see the module docstring).

    ``models``: names to load (default all, minus GPU-only ones without a GPU); ``backends``: a directory of
    extra backend directories copied beside the bundled python backend (e.g. a Python-based backend);
    ``ready_timeout``: seconds :meth:`start` waits for ``/v2/health/ready``.
    """

    def __init__(self, repo, *, models: list[str] | None = None, backends=None, ready_timeout: float = READY_TIMEOUT_S,
                 gpu: bool | None = None):
        self.repo = Path(repo).resolve()
        self.load, self.skipped = plan_models(self.repo, models, gpu)
        self.backends = Path(backends) if backends else None
        if self.backends is not None and not self.backends.is_dir():
            raise InputError(f"--backends {backends}: not a directory")
        self.ready_timeout = float(ready_timeout)
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.http_port = self.grpc_port = 0
        self.bundle = None

    # ------------------------------------------------------------------ urls
    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<port>`` (what tritonclient.grpc takes)."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def log_path(self) -> Path | None:
        """The server's log file (inside the temporary directory, removed by :meth:`stop`)."""
        return self.workdir / "tritonserver.log" if self.workdir else None

    def command(self) -> list[str]:
        """The tritonserver command line (after :meth:`start` picked the ports and backend directory)."""
        cmd = [str(self.bundle.binary), "--model-repository", str(self.repo),
               "--backend-directory", str(self.workdir / "backends"), "--model-control-mode", "explicit",
               "--http-address", HOST, "--http-port", str(self.http_port), "--grpc-address", HOST,
               "--grpc-port", str(self.grpc_port), "--allow-metrics", "false", "--exit-on-error", "false",
               "--strict-readiness", "false", "--exit-timeout-secs", "5", "--pinned-memory-pool-byte-size", "0"]
        for name in self.load:
            cmd += ["--load-model", name]
        return cmd

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TritonServer:
        """Start the server and wait until it is ready; return ``self``. :class:`VggcError` (one line, from the
        server's log) when it exits or is not ready in time; it is stopped then."""
        if self.proc is not None:
            raise VggcError("server already started")
        self.bundle = locate()
        self.workdir = Path(tempfile.mkdtemp(prefix="vggc-triton-"))
        try:
            assemble_backends(self.bundle, self.workdir / "backends", self.backends)
            for attempt in range(PORT_ATTEMPTS):
                self._spawn()
                try:
                    self.wait_ready(self.ready_timeout)
                    return self
                except VggcError:
                    # another process took a port between free_port() and the server's bind: new ports
                    if attempt + 1 == PORT_ATTEMPTS or self.running() or "already in use" not in self.log_error():
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=_server_env(self.bundle),
                                         start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float) -> None:
        """Poll ``/v2/health/ready`` until it answers 200, at most ``timeout`` seconds; :class:`VggcError`
        when the server exits first or the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VggcError(f"tritonserver exited with code {self.proc.returncode} at start: {self.log_error()}")
            try:
                with _NO_PROXY.open(f"{self.http_url}/v2/health/ready", timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise VggcError(f"tritonserver not ready after {timeout:g} s: {self.log_error()}")

    def log_error(self) -> str:
        """The server log's last ``error:`` line (or its last line), one line; ``"no log"`` without one."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except (OSError, AttributeError):
            return "no log"
        errs = [ln for ln in lines if ln.lower().startswith("error") or _TRITON_ERROR.match(ln)]
        return first_line((errs or lines or ["empty log"])[-1], 300)

    def running(self) -> bool:
        """True while the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def group_alive(self) -> bool:
        """True while any process of the server's process group (server or python-backend stub) is alive."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # a zombie leader still counts until reaped; poll() reaps it
        self.proc.poll()
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the whole process group at once (what a crash looks like to clients)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the server's process group, wait up to ``timeout`` s, then SIGKILL it; wait for the stubs to
        go (bounded), remove the temporary directory. Returns the server's exit code (``None`` if never started)."""
        code = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                code = self.proc.returncode
            end = time.monotonic() + timeout
            while self.group_alive() and time.monotonic() < end:
                time.sleep(0.1)
            if self.group_alive():
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def model_states(self) -> list[dict]:
        """The server's ``/v2/repository/index``: ``name``, ``version``, ``state`` (READY / UNAVAILABLE / ...; UNKNOWN
        for a model of the repository that was not asked for) and ``reason`` per model, the skipped ones as state
        ``SKIPPED`` with vggc's reason."""
        req = urllib.request.Request(f"{self.http_url}/v2/repository/index", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with _NO_PROXY.open(req, timeout=10.0) as r:
            index = json.loads(r.read().decode())
        states = [{"name": m.get("name"), "version": m.get("version"), "state": m.get("state", "UNKNOWN"),
                   "reason": m.get("reason", "")} for m in index if m.get("name") not in self.skipped]
        return states + [{"name": n, "version": None, "state": "SKIPPED", "reason": r} for n, r in self.skipped.items()]

    def metadata(self) -> dict:
        """The server's ``/v2`` metadata (``name``, ``version``, ``extensions``)."""
        with _NO_PROXY.open(f"{self.http_url}/v2", timeout=10.0) as r:
            return json.loads(r.read().decode())

    def facts(self) -> dict:
        """What was started: server version, URLs, bound address, models loaded/skipped."""
        version = self.metadata().get("version", "?") if self.running() else "?"
        return {"server": f"tritonserver {version} (nvidia-pytriton {self.bundle.version if self.bundle else '?'})",
                "address": HOST, "http": self.http_url, "grpc": self.grpc_url, "metrics": "off",
                "load": list(self.load), "skipped": dict(self.skipped), "pid": self.proc.pid if self.proc else None}
