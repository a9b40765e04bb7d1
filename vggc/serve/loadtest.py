"""A bounded gRPC load test of a Triton server on loopback, and served top-1 over a data split.

:func:`run_loadtest` runs, per concurrency C (default 1, 4, 16), C client threads, each with its own
``tritonclient.grpc`` client, sending the same fixed-seed input until ``requests`` requests are done
or ``deadline_s`` has passed (whichever first); each request has a ``timeout_s`` client deadline, and
the threads are joined with a bound, so the run ends in bounded time even when the server hangs.
The first failed request stops the level and raises :class:`VggcError` with one line (a killed
server: ``stopped answering``). Per level it reports throughput (requests/s and images/s), latency
p50/p95/p99 and the server's own statistics for the model (``ModelStatistics``, what HTTP
``/v2/models/M/stats`` returns), taken before and after the level: execution count, inference
count, mean batch (inferences per execution), mean requests per execution, queue and compute time.

:func:`served_top1` sends a split's images through the server (in ``batch``-image requests from
``concurrency`` threads) and returns the served top-1. Both refuse a non-loopback URL
(:func:`check_loopback`).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import numpy as np

from vggc.errors import InputError, UnavailableError, VggcError, first_line

DEFAULT_CONCURRENCY = (1, 4, 16)
JOIN_SLACK_S = 5.0
_NP_TYPES = {"FP32": np.float32, "FP16": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
             "INT64": np.int64}
STATS_SOURCE = "Triton ModelStatistics over gRPC (the same counters as HTTP /v2/models/M/stats)"


def check_loopback(url: str) -> str:
    """Return ``host:port`` for a gRPC ``url`` (``127.0.0.1:8001``, ``grpc://localhost:8001``, ``[::1]:8001``)
    whose host is a loopback address (every address a name resolves to); :class:`InputError` otherwise."""
    raw = url if "://" in url else f"grpc://{url}"
    if not raw.startswith("grpc://"):
        raise InputError(f"{url}: the load test speaks gRPC; give the gRPC HOST:PORT `vggc serve` prints")
    try:
        parts = urlsplit(raw)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise InputError(f"{url}: expected HOST:PORT of a gRPC endpoint, e.g. 127.0.0.1:8001")
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        raise InputError(f"{url}: cannot resolve {host}") from None
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise InputError(f"{url}: not a loopback address ({', '.join(sorted(addrs))}); the load test only targets "
                         "a server on this machine (127.0.0.1)")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise UnavailableError("tritonclient not installed: pip install 'tritonclient[grpc]'") from None
    return grpcclient


def client(url: str):
    """A ``tritonclient.grpc`` client for ``url`` that never goes through an HTTP proxy (``grpc.enable_http_proxy``
    0: a ``http_proxy``/``grpc_proxy`` in the environment must not reroute loopback traffic)."""
    return _grpc().InferenceServerClient(url, channel_args=[("grpc.enable_http_proxy", 0)])


def model_facts(url: str, model: str) -> dict:
    """The served model's config facts: ``input`` (name, datatype, dims), ``output`` name, ``backend``,
    ``platform``, ``runtime`` (python-backend models), ``max_batch_size``, ``instance_group``,
    ``dynamic_batching``, ``preprocess`` (vggc's ``vggc_preprocess`` parameter, or ``None``), ``label``;
    plus the server's version. :class:`VggcError` with Triton's message for an unknown model."""
    from tritonclient.utils import InferenceServerException

    from vggc.export.triton_python import served_label

    c = client(url)
    try:
        cfg = c.get_model_config(model, as_json=True, client_timeout=10.0)["config"]
        server = c.get_server_metadata(as_json=True, client_timeout=10.0)
    except InferenceServerException as err:
        raise VggcError(f"{url}: {first_line(err.message() or str(err))}") from None
    finally:
        c.close()
    params = {k: v.get("string_value") for k, v in (cfg.get("parameters") or {}).items()}
    inp = cfg["input"][0]
    backend, platform = cfg.get("backend", ""), cfg.get("platform", "")
    if backend == "python" and params.get("runtime"):
        label = served_label(params["runtime"])
    elif str(cfg.get("runtime", "")).endswith(".py"):  # a Python-based backend (its model.py), not the C++ one
        label = f"Triton + Python-based {backend} backend ({cfg['runtime']})"
    else:
        label = f"Triton + {backend or platform} backend"
    return {"server": f"{server.get('name', 'triton')} {server.get('version', '?')}", "model": model,
            "backend": backend, "platform": platform, "runtime": params.get("runtime"),
            "input": {"name": inp["name"], "datatype": inp["data_type"].removeprefix("TYPE_"),
                      "dims": [int(d) for d in inp["dims"]]},
            "output": cfg["output"][0]["name"], "max_batch_size": int(cfg.get("max_batch_size", 0)),
            "instance_group": cfg.get("instance_group"), "dynamic_batching": cfg.get("dynamic_batching"),
            "preprocess": json.loads(params["vggc_preprocess"]) if params.get("vggc_preprocess") else None,
            "threads": params.get("threads"), "label": label}


def model_stats(url: str, model: str) -> dict:
    """The server's counters for ``model`` (all versions summed): ``execution_count``, ``inference_count``,
    ``success_count``, ``queue_ns``, ``compute_ns`` (compute_input + compute_infer + compute_output)."""
    from tritonclient.utils import InferenceServerException

    c = client(url)
    try:
        doc = c.get_inference_statistics(model, as_json=True, client_timeout=10.0)
    except InferenceServerException as err:
        raise VggcError(f"{url}: statistics of {model}: {first_line(err.message() or str(err))}") from None
    finally:
        c.close()
    tot = {"execution_count": 0, "inference_count": 0, "success_count": 0, "queue_ns": 0, "compute_ns": 0}
    for m in doc.get("model_stats", []):
        st = m.get("inference_stats", {})
        tot["execution_count"] += int(m.get("execution_count", 0))
        tot["inference_count"] += int(m.get("inference_count", 0))
        tot["success_count"] += int(st.get("success", {}).get("count", 0))
        tot["queue_ns"] += int(st.get("queue", {}).get("ns", 0))
        tot["compute_ns"] += sum(int(st.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer",
                                                                          "compute_output"))
    return tot


def _stats_delta(before: dict, after: dict, batch: int) -> dict:
    d = {k: after[k] - before[k] for k in before}
    ex = d["execution_count"]
    return {"execution_count": ex, "inference_count": d["inference_count"], "success_count": d["success_count"],
            "mean_batch": round(d["inference_count"] / ex, 3) if ex else None,
            "mean_requests_per_execution": round(d["inference_count"] / batch / ex, 3) if ex else None,
            "queue_ms_per_request": round(d["queue_ns"] / 1e6 / d["success_count"], 4) if d["success_count"] else None,
            "compute_ms_per_execution": round(d["compute_ns"] / 1e6 / ex, 4) if ex else None}


class _Level:
    """Shared state of one concurrency level: tickets, latencies, the first error, the stop flag."""

    def __init__(self, requests: int, deadline: float):
        self.lock = threading.Lock()
        self.next = 0
        self.requests = requests
        self.deadline = deadline
        self.latencies: list[float] = []
        self.error: str | None = None
        self.stop = threading.Event()

    def take(self) -> bool:
        with self.lock:
            if self.stop.is_set() or self.next >= self.requests or time.monotonic() >= self.deadline:
                return False
            self.next += 1
            return True

    def fail(self, msg: str) -> None:
        with self.lock:
            if self.error is None:
                self.error = msg
        self.stop.set()


def _error_line(url: str, err, done: int) -> str:
    status = str(err.status() or "") if hasattr(err, "status") else ""
    msg = first_line(err.message() if hasattr(err, "message") and err.message() else str(err), 200)
    if any(s in status for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")) or "Socket closed" in msg:
        return f"server at {url} stopped answering after {done} requests ({status or 'no status'}: {msg})"
    return f"request failed after {done} requests: {msg}"


def _worker(url: str, model: str, facts: dict, x: np.ndarray, timeout_s: float, level: _Level) -> None:
    from tritonclient.utils import InferenceServerException

    g = _grpc()
    c = client(url)
    try:
        inp = g.InferInput(facts["input"]["name"], list(x.shape), facts["input"]["datatype"])
        inp.set_data_from_numpy(x)
        out = [g.InferRequestedOutput(facts["output"])]
        while level.take():
            t0 = time.perf_counter()
            try:
                c.infer(model, [inp], outputs=out, client_timeout=timeout_s)
            except InferenceServerException as err:
                level.fail(_error_line(url, err, len(level.latencies)))
                return
            except Exception as err:  # noqa: BLE001 - any transport failure ends the level with one line
                level.fail(_error_line(url, err, len(level.latencies)))
                return
            with level.lock:
                level.latencies.append(time.perf_counter() - t0)
    finally:
        c.close()


def _run_threads(url, model, facts, x, concurrency, requests, deadline_s, timeout_s) -> tuple[_Level, float]:
    level = _Level(requests, time.monotonic() + deadline_s)
    threads = [threading.Thread(target=_worker, args=(url, model, facts, x, timeout_s, level), daemon=True,
                                name=f"vggc-loadtest-{i}") for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    join_by = time.monotonic() + deadline_s + timeout_s + JOIN_SLACK_S
    for t in threads:
        t.join(max(0.0, join_by - time.monotonic()))
    seconds = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        level.fail(f"client threads still waiting on {url} after {deadline_s + timeout_s + JOIN_SLACK_S:g} s")
    return level, seconds


def run_level(url: str, model: str, facts: dict, x: np.ndarray, *, concurrency: int, requests: int,
              deadline_s: float, timeout_s: float) -> dict:
    """One concurrency level (see the module docstring); returns its row. :class:`VggcError` on the first error."""
    before = model_stats(url, model)
    level, seconds = _run_threads(url, model, facts, x, concurrency, requests, deadline_s, timeout_s)
    if level.error:
        raise VggcError(level.error)
    lat = np.array(level.latencies) * 1e3
    n, batch = len(lat), int(x.shape[0])
    row = {"concurrency": concurrency, "requests": n, "batch": batch, "images": n * batch,
           "seconds": round(seconds, 4), "hit_deadline": n < requests,
           "throughput_rps": round(n / seconds, 2) if seconds else None,
           "throughput_ips": round(n * batch / seconds, 2) if seconds else None}
    for q in (50, 95, 99):
        row[f"latency_p{q}_ms"] = round(float(np.percentile(lat, q)), 4) if n else None
    row["server_stats"] = _stats_delta(before, model_stats(url, model), batch)
    return row


def _input(facts: dict, batch: int, seed: int) -> np.ndarray:
    dt = facts["input"]["datatype"]
    if dt not in _NP_TYPES:
        raise InputError(f"model {facts['model']}: input datatype {dt} not supported by the load test")
    if facts["max_batch_size"] and batch > facts["max_batch_size"]:
        raise InputError(f"--batch {batch}: above the model's max_batch_size {facts['max_batch_size']}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal([batch, *facts["input"]["dims"]]).astype(_NP_TYPES[dt])


def _with_reference(res: dict, before: dict, after: dict) -> dict:
    ips = round((before["throughput_ips"] + after["throughput_ips"]) / 2, 2)
    for row in res["levels"]:
        row["served_vs_inprocess"] = round(row["throughput_ips"] / ips, 4) if row["throughput_ips"] else None
    return {**res, "reference": {"label": f"in-process {before['backend']}, batch {before['batch']}",
                                 "throughput_ips": ips, "before": before, "after": after}}


def run_loadtest(url: str, model: str, *, concurrency=DEFAULT_CONCURRENCY, requests: int = 2000,
                 deadline_s: float = 60.0, timeout_s: float = 10.0, batch: int = 1, warmup: int = 20,
                 seed: int = 0, reference=None, reference_threads: int | None = None, progress=None) -> dict:
    """Run the bounded load test of ``model`` at ``url`` (loopback only) at each ``concurrency``; return
    ``url``, ``model``, the model's facts (:func:`model_facts`: ``label``, ``server``, ...), ``cpu``, the settings
    and ``levels`` (one row per concurrency: requests, seconds, throughput_rps/ips, latency_p50/p95/p99_ms,
    hit_deadline, server_stats). ``warmup`` requests (at the first concurrency, not counted) go first.
    ``reference``: the served file, timed in-process at batch 64 just before and after the levels
    (:func:`vggc.serve.reference.reference_throughput`); then ``reference`` and each row's
    ``served_vs_inprocess`` (served images/s over the mean in-process images/s). ``progress(row)`` is called
    after each level."""
    from vggc.cpu import cpu_model

    url = check_loopback(url)
    for name, v in (("requests", requests), ("batch", batch), *(("concurrency", c) for c in concurrency)):
        if int(v) < 1:
            raise InputError(f"--{name} {v}: must be >= 1")
    if deadline_s <= 0 or timeout_s <= 0:
        raise InputError("--deadline and --timeout must be > 0")
    facts = model_facts(url, model)
    x = _input(facts, batch, seed)
    if reference is not None:
        from vggc.serve.reference import reference_throughput

        before = reference_throughput(reference, facts["runtime"], threads=reference_threads, seed=seed)
    if warmup:
        run_level(url, model, facts, x, concurrency=min(concurrency), requests=warmup, deadline_s=deadline_s,
                  timeout_s=timeout_s)
    levels = []
    for c in concurrency:
        levels.append(run_level(url, model, facts, x, concurrency=int(c), requests=int(requests),
                                deadline_s=deadline_s, timeout_s=timeout_s))
        if progress:
            progress(levels[-1])
    res = {"kind": "triton-loadtest", "url": url, "model": model, "label": facts["label"], "server": facts["server"],
           "cpu": cpu_model(), "model_facts": facts, "stats_source": STATS_SOURCE,
           "settings": {"requests": requests, "deadline_s": deadline_s, "timeout_s": timeout_s, "batch": batch,
                        "warmup": warmup, "seed": seed, "concurrency": list(concurrency), "protocol": "grpc"},
           "levels": levels}
    if reference is None:
        return res
    from vggc.serve.reference import reference_throughput

    after = reference_throughput(reference, facts["runtime"], threads=reference_threads, seed=seed)
    return _with_reference(res, before, after)
