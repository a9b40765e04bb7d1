"""Triton python-backend model: an OpenVINO IR (or ONNX) file on OpenVINO's CPU plugin (written by vggc).

Settings (config ``parameters``): ``model_file`` (in the version directory), ``threads``
(INFERENCE_NUM_THREADS). Like vggc's ``openvino-cpu`` backend: INFERENCE_PRECISION_HINT=f32 (int8
layers stay int8 kernels), NUM_STREAMS=1, PERFORMANCE_HINT=LATENCY, static input shapes. With more
than one instance (each its own process) ENABLE_CPU_PINNING is off, so the instances do not pin
their threads onto the same cores.

The requests of one ``execute`` call (what the dynamic batcher merged) run as one batch, split into
power-of-two chunks (37 = 32 + 4 + 1), each on a model compiled for that static batch size: at most
log2(max_batch_size) + 1 compiled shapes, all compiled in ``initialize`` so no request pays a compile.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _chunks(n, sizes):
    """Split ``n`` rows into the largest sizes first: a list of (start, size)."""
    out, start = [], 0
    for s in sizes:
        while n - start >= s:
            out.append((start, s))
            start += s
    return out


class TritonPythonModel:
    def initialize(self, args):
        import openvino as ov

        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.xml"))
        self.input_name = cfg["input"][0]["name"]
        self.output_name = cfg["output"][0]["name"]
        dims = [int(d) for d in cfg["input"][0]["dims"]]
        instances = sum(int(g.get("count", 1)) for g in cfg.get("instance_group", [{}]))
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(params.get("threads", "1")),
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if instances > 1:
            config["ENABLE_CPU_PINNING"] = False
        core = ov.Core()
        max_batch = max(1, int(cfg.get("max_batch_size", 1)))
        self.sizes = sorted({1 << i for i in range(max_batch.bit_length()) if (1 << i) <= max_batch}, reverse=True)
        self.requests = {}
        for size in self.sizes:
            model = core.read_model(path)
            model.reshape({model.inputs[0]: ov.PartialShape([size, *dims])})
            self.requests[size] = core.compile_model(model, "CPU", config).create_infer_request()

    def _run(self, batch):
        y = None
        for start, size in _chunks(len(batch), self.sizes):
            req = self.requests[size]
            req.infer({0: batch[start:start + size]})
            out = req.get_output_tensor(0).data
            if y is None:
                y = np.empty((len(batch), *out.shape[1:]), dtype=np.float32)
            y[start:start + size] = out
        return y

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = np.ascontiguousarray(np.concatenate(xs) if len(xs) > 1 else xs[0], dtype=np.float32)
        y = self._run(batch)
        out, start = [], 0
        for x in xs:
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, y[start:start + len(x)])]))
            start += len(x)
        return out

    def finalize(self):
        self.requests = {}
