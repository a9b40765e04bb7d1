"""TEST CODE: a Python-based Triton backend named ``onnxruntime`` (Triton's "Python-based backend" feature).

The tritonserver bundled by nvidia-pytriton has only the python backend, so a model with
``platform: "onnxruntime_onnx"`` (what ``vggc export --triton`` writes) cannot load there. Placed as
``<backend dir>/onnxruntime/model.py`` this shim serves such a model unchanged: it runs the
version directory's ``model.onnx`` on ONNX Runtime CPU. vggc never ships or writes it; the serve
tests pass this directory as ``--backends``.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"],
                            cfg.get("default_model_filename") or "model.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.input_name = cfg["input"][0]["name"]
        self.output_name = cfg["output"][0]["name"]

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        y = self.session.run([self.output_name], {self.input_name: np.concatenate(xs)})[0]
        out, start = [], 0
        for x in xs:
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, y[start:start + len(x)])]))
            start += len(x)
        return out
