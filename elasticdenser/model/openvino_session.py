"""An OpenVINO compiled model called like an ONNX Runtime session (the ``"openvino"`` backend of
:mod:`elasticdenser.model.fastpath`)."""
from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["OpenVinoSession"]


class OpenVinoSession:
    """One model that OpenVINO runs on ``threads`` threads, called like an ONNX Runtime session.

    With one thread it is one latency-mode stream (a query). With several, a large batch is cut into
    sub-batches of at most :attr:`SUB_BATCH` rows, each trimmed to its own longest sequence, that
    single-threaded streams run side by side: threads that never wait for each other inside an
    operator, and less padding (batches arrive sorted by length). Bulk passage encoding runs
    measurably closer to the bf16 floor this way. A small batch (at most :attr:`ONE_STREAM_TOKENS`
    padded tokens, e.g. 32 questions) is too little work to split: it runs as one request on one
    stream holding every thread, a second compilation made on first use (``BENCHMARKS.md``; in a
    bulk run only the last, shortest batch may take it).

    An infer request is not safe to share between threads (the server calls from several), so
    each calling thread gets its own requests; outputs are copied out of the requests' buffers,
    which the next call overwrites.
    """

    #: most rows one stream runs at a time when a batch is split over streams
    SUB_BATCH = 8
    #: a batch of at most this many padded tokens (rows x longest row) runs on one stream with every thread
    ONE_STREAM_TOKENS = 1024

    def __init__(self, model, threads: int, precision: str):
        import openvino as ov

        self._core = ov.Core()
        self._source = model if isinstance(model, str) else self._core.read_model(model=model, weights=b"")
        self._precision = "bf16" if precision == "bf16" else "f32"
        self.streams = max(1, int(threads))
        self._compiled: dict = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _model(self, streams: int):
        """The model compiled for ``streams`` streams sharing every thread (made on first use)."""
        compiled = self._compiled.get(streams)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(streams)
                if compiled is None:
                    compiled = self._compiled[streams] = self._core.compile_model(self._source, "CPU", {
                        "INFERENCE_NUM_THREADS": self.streams, "NUM_STREAMS": streams,
                        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
                        "INFERENCE_PRECISION_HINT": self._precision})
        return compiled

    def run(self, _outputs, feeds: dict) -> list:
        rows, length = feeds["input_ids"].shape
        if self.streams > 1 and rows * length > self.ONE_STREAM_TOKENS:
            return [self._run_split(feeds, rows)]
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._model(1).create_infer_request()
        return [np.array(request.infer(feeds)[0], dtype=np.float32, copy=True)]

    def _run_split(self, feeds: dict, rows: int) -> np.ndarray:
        import openvino as ov

        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = ov.AsyncInferQueue(self._model(self.streams), self.streams)
        step = min(self.SUB_BATCH, math.ceil(rows / self.streams))
        parts = {}
        queue.set_callback(lambda request, i: parts.__setitem__(i, request.get_output_tensor(0).data.copy()))
        for i, start in enumerate(range(0, rows, step)):
            used = np.flatnonzero(feeds["attention_mask"][start : start + step].any(0))
            length = int(used[-1]) + 1 if len(used) else 1  # only columns no row attends to are cut
            queue.start_async({k: np.ascontiguousarray(v[start : start + step, :length]) for k, v in feeds.items()}, i)
        queue.wait_all()
        return np.concatenate([parts[i] for i in range(len(parts))]).astype(np.float32, copy=False)
