"""Serving vggc's Triton model repository with a real ``tritonserver`` on loopback, and load-testing it.

* :mod:`vggc.serve.bundle`: where the ``tritonserver`` of the ``nvidia-pytriton`` wheel (the ``serve``
  extra) and its python backend live, and why it cannot run here (one line naming the install command);
* :mod:`vggc.serve.server`: :class:`~vggc.serve.server.TritonServer` starts it on 127.0.0.1 (free ports,
  explicit model list), waits for ``/v2/health/ready``, reports each model's load state, stops it;
* :mod:`vggc.serve.loadtest`: a bounded gRPC load test of a loopback server and served top-1 on a split;
* :mod:`vggc.serve.pymodels`: the python-backend ``model.py`` templates (OpenVINO, ONNX Runtime).
"""
