"""An OpenVINO compiled model called like an ONNX Runtime session (the ``"openvino"`` backend of
:mod:`elasticdenser.model.fastpath`)."""
from __future__ import annotations

import threading

import numpy as np

__all__ = ["OpenVinoSession"]


class OpenVinoSession:
    """One OpenVINO compiled model with ``threads`` threads, called like an ONNX Runtime session.

    An infer request is not safe to share between threads (the server calls from several), so
    each calling thread gets its own; outputs are copied out of the request's buffer, which the
    next call overwrites.
    """

    def __init__(self, model, threads: int, precision: str):
        import openvino as ov

        source = model if isinstance(model, str) else ov.Core().read_model(model=model, weights=b"")
        self._compiled = ov.Core().compile_model(source, "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
        self._local = threading.local()

    def run(self, _outputs, feeds: dict) -> list:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return [np.array(request.infer(feeds)[0], dtype=np.float32, copy=True)]
