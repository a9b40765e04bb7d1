"""Triton python-backend model: an OpenVINO IR (or ONNX) file on OpenVINO's CPU plugin (written by vggc).

Settings (config ``parameters``): ``model_file`` (in the version directory), ``threads``
(INFERENCE_NUM_THREADS). Like vggc's ``openvino-cpu`` backend: INFERENCE_PRECISION_HINT=f32 (int8
layers stay int8 kernels), NUM_STREAMS=1, PERFORMANCE_HINT=LATENCY; compiled once for a dynamic
batch dimension. The requests of one ``execute`` call (what the dynamic batcher merged) run as one
batch.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import openvino as ov

        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.xml"))
        self.input_name = cfg["input"][0]["name"]
        self.output_name = cfg["output"][0]["name"]
        core = ov.Core()
        model = core.read_model(path)
        shape = model.inputs[0].get_partial_shape()
        shape[0] = -1
        model.reshape({model.inputs[0]: shape})
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(params.get("threads", "1")),
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = np.ascontiguousarray(np.concatenate(xs) if len(xs) > 1 else xs[0], dtype=np.float32)
        self.request.infer({0: batch})
        y = np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        out, start = [], 0
        for x in xs:
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, y[start:start + len(x)])]))
            start += len(x)
        return out

    def finalize(self):
        self.request = None
        self.compiled = None
