"""Served top-1: a data split's images sent through a loopback Triton server, predictions compared to labels.

The images are preprocessed the way the served file expects (the model config's ``vggc_preprocess``
parameter that :func:`vggc.export.triton_python.write_python_model` writes; else the explicit
options, else CIFAR-10's defaults) and sent in ``batch``-image requests from ``concurrency`` threads,
so the dynamic batcher merges requests while the answers are checked row by row.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from vggc.errors import InputError, VggcError
from vggc.progress import Progress, no_progress
from vggc.serve.loadtest import _error_line, _grpc, check_loopback, client, model_facts


def _predict_chunks(url, model, facts, x: np.ndarray, batch: int, concurrency: int, timeout_s: float,
                    deadline_s: float) -> np.ndarray:
    """Argmax of the served logits of every row of ``x`` (requests of ``batch`` rows); VggcError on any failure."""
    g = _grpc()
    starts = list(range(0, len(x), batch))
    preds = np.full(len(x), -1, dtype=np.int64)
    lock, state = threading.Lock(), {"next": 0, "error": None, "done": 0}
    deadline = time.monotonic() + deadline_s

    def work():
        c = client(url)
        try:
            while True:
                with lock:
                    if state["error"] or state["next"] >= len(starts):
                        return
                    if time.monotonic() >= deadline:
                        state["error"] = state["error"] or f"served top-1 not done within --deadline {deadline_s:g} s"
                        return
                    s = starts[state["next"]]
                    state["next"] += 1
                chunk = x[s:s + batch]
                inp = g.InferInput(facts["input"]["name"], list(chunk.shape), facts["input"]["datatype"])
                inp.set_data_from_numpy(chunk)
                try:
                    res = c.infer(model, [inp], client_timeout=timeout_s)
                except Exception as err:  # noqa: BLE001 - any failure: one line, then stop
                    with lock:
                        state["error"] = state["error"] or _error_line(url, err, state["done"])
                    return
                preds[s:s + len(chunk)] = res.as_numpy(facts["output"]).argmax(1)
                with lock:
                    state["done"] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + timeout_s + 5.0)
    if any(t.is_alive() for t in threads):
        raise VggcError(f"client threads still waiting on {url} after the deadline")
    if state["error"]:
        raise VggcError(state["error"])
    return preds


def served_top1(url: str, model: str, data, *, split: str = "test", limit: int | None = None, seed: int = 0,
                batch: int = 64, concurrency: int = 4, timeout_s: float = 30.0, deadline_s: float = 900.0,
                mean=None, std=None, input_size=None, progress: Progress = no_progress) -> dict:
    """Send ``data``'s ``split`` (all of it, or a class-balanced ``limit`` subset drawn with ``seed``) through
    ``model`` at the loopback gRPC ``url``; return ``top1``, ``n``, ``correct``, ``per_class``, ``label``,
    ``server``, ``preprocess`` and the request settings."""
    from vggc.data import limit_split, load_split, resolve_preprocess

    url = check_loopback(url)
    if batch < 1 or concurrency < 1:
        raise InputError("--batch and --concurrency must be >= 1")
    facts = model_facts(url, model)
    if facts["max_batch_size"] and batch > facts["max_batch_size"]:
        raise InputError(f"--batch {batch}: above the model's max_batch_size {facts['max_batch_size']}")
    pre = resolve_preprocess(facts["preprocess"], mean, std, input_size)
    sp = limit_split(load_split(data, split, progress=progress), limit, seed)
    x = np.ascontiguousarray(torch.cat([pre(sp.images[i:i + 1024]) for i in range(0, len(sp), 1024)]).numpy())
    preds = torch.from_numpy(_predict_chunks(url, model, facts, x, batch, concurrency, timeout_s, deadline_s))
    hit = preds == sp.labels
    per_class = {name: round(float(hit[sp.labels == ci].float().mean()), 6)
                 for ci, name in enumerate(sp.classes) if bool((sp.labels == ci).any())}
    correct = int(hit.sum())
    return {"kind": "triton-served-top1", "url": url, "model": model, "label": facts["label"],
            "server": facts["server"], "split": split, "n": len(sp), "correct": correct,
            "top1": correct / len(sp), "per_class": per_class, "preprocess": pre.to_dict(),
            "settings": {"batch": batch, "concurrency": concurrency, "limit": limit, "seed": seed,
                         "timeout_s": timeout_s, "deadline_s": deadline_s}}
