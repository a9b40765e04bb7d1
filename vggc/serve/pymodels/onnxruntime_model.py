"""Triton python-backend model: an ONNX file on ONNX Runtime's CPU execution provider (written by vggc).

Settings (config ``parameters``): ``model_file`` (in the version directory), ``threads``
(intra_op_num_threads). Like vggc's ``onnxruntime-cpu`` backend: ORT_ENABLE_ALL, one inter-op
thread, sequential execution. The requests of one ``execute`` call (what the dynamic batcher
merged) run as one batch.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.onnx"))
        self.input_name = cfg["input"][0]["name"]
        self.output_name = cfg["output"][0]["name"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(params.get("threads", "1"))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = np.ascontiguousarray(np.concatenate(xs) if len(xs) > 1 else xs[0], dtype=np.float32)
        y = self.session.run([self.output_name], {self.input_name: batch})[0]
        out, start = [], 0
        for x in xs:
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, y[start:start + len(x)])]))
            start += len(x)
        return out

    def finalize(self):
        self.session = None
