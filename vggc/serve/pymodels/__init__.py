"""Triton python-backend ``model.py`` templates, one per runtime (copied verbatim into ``<model>/1/model.py``).

Each template is self-contained (it imports only numpy, its runtime and Triton's
``triton_python_backend_utils``, never vggc) and reads its settings from the model config's
``parameters``: ``model_file`` (the file in the version directory), ``threads`` (the runtime's
intra-op threads). ``execute`` gets the requests the dynamic batcher merged, runs them as one batch
and answers each request with its own rows. :data:`TEMPLATES` maps a runtime name to its template.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
# runtime name -> template file (the model.py a python-backend model of that runtime runs)
TEMPLATES = {"openvino": HERE / "openvino_model.py", "onnxruntime": HERE / "onnxruntime_model.py"}
