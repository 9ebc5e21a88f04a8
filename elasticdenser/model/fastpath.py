"""Fast serving paths for operating points (issue 8).

The eager path (:meth:`ElasticEncoder.encode` with ``backend="eager"``) stays the reference. A fast
path runs the *materialised* module of a point (:meth:`ElasticEncoder.materialize`: physically sliced
weights, fused QKV, pooling + truncation + normalisation inside) through a graph runtime, which removes
the per-operator Python / dispatcher overhead that dominates a single query:

* ``"onnx"``: the point is exported to ONNX (``torch.onnx.export``, legacy TorchScript exporter, opset
  17, dynamic batch and sequence axes) and run by ONNX Runtime (CPU provider, all graph optimisations).
  The fastest exact path on the measured CPU at every batch size (``BENCHMARKS.md``). Needs the
  optional ``onnxruntime`` package (``serve`` / ``dev`` extras).
* ``"int8"``: the same graph with its weight products quantised to int8 (dynamic, per output channel);
  attention products, LayerNorm, softmax and pooling stay fp32. 1.4-1.9x faster than ``"onnx"`` at
  batch 1 on AVX2, but embeddings move to cosine ~0.99 of the reference (MRR@10 within 0.003 on
  nq-sample), so it is opt-in only: ``"auto"`` never picks it. Queries only: documents are never
  encoded in int8 (:func:`document_path`).
* ``"openvino"``: the same ONNX graph compiled by OpenVINO, in bf16 where the CPU multiplies bf16 in
  hardware (AVX512-BF16 or AMX, read at run time by :func:`elasticdenser.model.cpu.native_bf16`) and in
  fp32 elsewhere. There it encodes passages much faster than ``"onnx"`` within the correctness bar
  (``BENCHMARKS.md``), so :func:`document_path` picks it for the documents and ``"auto"`` for large
  query batches; at batch 1 it does not pay. Needs the optional ``openvino`` package
  (``openvino`` / ``dev`` extras).
* ``"jit"``: ``torch.jit.trace`` + ``torch.jit.freeze`` of the materialised module: needs only torch,
  builds in < 0.5 s, 12-33 % faster than eager at batch 1. The fallback when onnxruntime is missing.
* ``"eager"``: the reference (``ElasticEncoder.forward`` / cached materialised module).
* ``"auto"``: ``"onnx"`` if onnxruntime imports, else ``"jit"``; on a CPU with bf16 products and
  OpenVINO installed, batches of :data:`AUTO_BF16_MIN_BATCH` rows or more run on ``"openvino"``
  (bf16), which is faster there from that size on and within the correctness bar.

Not kept (measured, see ``BENCHMARKS.md``): ``torch.compile`` (a 1.5-minute compile per point for no
gain over ONNX Runtime); torch's own bf16 (``encode(..., bf16=True)``, autocast) stays an opt-in of
the eager path: without bf16 hardware it runs 2-6x *slower* than fp32, and with it OpenVINO is faster.

Compiled artefacts are built lazily, per point, on first use, and cached on the encoder; the cache
key includes every weight's version counter, so training updates (optimizer steps, reordering)
rebuild on next use. ONNX files are additionally cached on disk under
``$ELASTICDENSER_CACHE/onnx/<fingerprint>/`` (default ``~/.cache/elasticdenser``) so a CLI run pays the
export (1-2 s per point, int8 2.5-5 s) once per model; set ``ELASTICDENSER_CACHE=off`` to keep them in
memory only.

Threads: ``threads`` if given, else ``torch.get_num_threads()`` for batches of more than
``SMALL_BATCH`` texts; smaller ones run on all threads only where that runs one query
``THREADS_MARGIN`` times faster than one thread, measured per runner on first use
(:meth:`FastRunner.small_batch_thread_count`): a second thread buys nothing at batch 1 on one CPU
and much on another (``BENCHMARKS.md``).
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from elasticdenser.atomic import write_bytes
from elasticdenser.errors import InvalidInputError, StateError
from elasticdenser.model.batch_tokenizer import batch_tokenizer, length_batches, tokenize_batch
from elasticdenser.model.cpu import faster_threads

__all__ = [
    "BACKENDS",
    "SMALL_BATCH",
    "available_backends",
    "resolve_backend",
    "get_runner",
    "FastRunner",
    "encode_fast",
    "batch_tokenizer",
    "tokenize_batch",
    "PRECISIONS",
    "document_path",
    "openvino_precision",
    "exact_backends",
]

BACKENDS = ("auto", "eager", "jit", "onnx", "int8", "openvino")
#: backends that run ONNX Runtime (and need onnxruntime).
_ORT = ("onnx", "int8")
#: backends that run the exported ONNX graph (ONNX Runtime or OpenVINO) on numpy inputs.
_GRAPH = _ORT + ("openvino",)
#: the precisions a corpus can be encoded in (:func:`document_path`).
PRECISIONS = ("auto", "fp32", "bf16")
#: batches up to this size run on one thread or on all (see module docstring).
SMALL_BATCH = 4
#: on a CPU with bf16 products, ``"auto"`` runs query batches of at least this many rows on
#: OpenVINO bf16 (faster there, within the correctness bar) and smaller ones on ONNX Runtime fp32
#: (lower call overhead); measured in BENCHMARKS.md (``benchmarks/bench_bf16.py``).
AUTO_BF16_MIN_BATCH = 8
#: threads for batches of up to SMALL_BATCH rows: a number fixes them; None: measured per runner
small_batch_threads: Optional[int] = None
#: all threads are kept for small batches only when this much faster than one: the other core is
#: then taken from whatever else the process runs (FAISS, the HTTP loop)
THREADS_MARGIN = 1.2
#: timed calls per thread count when a runner measures its small-batch threads
THREADS_PROBES = 9
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_lock = threading.RLock()


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except Exception:
        return False
    return True


def available_backends() -> Tuple[str, ...]:
    """Backends usable here (``"onnx"`` and ``"int8"`` only when onnxruntime is installed,
    ``"openvino"`` only when openvino is)."""
    return tuple(b for b in BACKENDS if (b not in _ORT or _has_onnxruntime()) and (b != "openvino" or _has_openvino()))


def exact_backends() -> Tuple[str, ...]:
    """The usable backends that compute in fp32 here (``"openvino"`` only on a CPU without bf16 products)."""
    return tuple(b for b in available_backends() if b != "int8" and (b != "openvino" or not _openvino_bf16()))


def _openvino_bf16() -> bool:
    """Whether OpenVINO is installed and computes in bf16 on this CPU."""
    return _has_openvino() and openvino_precision() == "bf16"


def openvino_precision() -> str:
    """What the ``"openvino"`` backend computes in on this CPU: ``"bf16"`` where it multiplies bf16 in
    hardware, else ``"fp32"`` (OpenVINO is never left to choose: its default changes with the CPU)."""
    from elasticdenser.model.cpu import native_bf16

    return "bf16" if native_bf16() else "fp32"


def document_path(precision: Optional[str], device: "torch.device | str" = "cpu") -> Tuple[str, bool, str]:
    """How a corpus is encoded at ``precision``: ``(backend, torch_bf16_autocast, precision used)``.

    Documents are encoded once and every query point is measured against them, so a lower
    precision is used only where it is faster *and* within the correctness bar (cosine >= 0.999 to
    fp32, retrieval metrics within 0.002 at every point; ``benchmarks/bench_bf16.py``):

    * ``"auto"`` (the default of ``index``): bf16 through OpenVINO on a CPU with bf16 products and
      OpenVINO installed; fp32 everywhere else (on a GPU: the eager path, as before);
    * ``"fp32"``: the fastest exact fp32 path (ONNX Runtime, else TorchScript, on CPU; eager on a GPU);
    * ``"bf16"``: OpenVINO bf16 where that exists, else torch's bf16 autocast on the eager path
      (a GPU, or a CPU without OpenVINO; without bf16 products that is several times slower).
    """
    name = (precision or "auto").lower()
    if name not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    cpu = torch.device(device).type == "cpu"
    native = cpu and _openvino_bf16()
    if name == "auto":
        name = "bf16" if native else "fp32"
    if name == "fp32":  # an exact backend by name: "auto" may run large batches in bf16 (AUTO_BF16_MIN_BATCH)
        return (resolve_backend("auto") if cpu else "eager"), False, "fp32"
    return ("openvino", False, "bf16") if native else ("eager", True, "bf16")


def resolve_backend(backend: Optional[str]) -> str:
    """``None``/``"auto"`` -> ``"onnx"`` if onnxruntime imports, else ``"jit"``; validates names."""
    name = (backend or "auto").lower()
    if name not in BACKENDS:
        raise InvalidInputError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "onnx" if _has_onnxruntime() else "jit"
    if name in _ORT and not _has_onnxruntime():
        raise StateError(f"backend {name!r} needs onnxruntime (pip install onnxruntime); use 'jit' or 'auto'")
    if name == "openvino" and not _has_openvino():
        raise StateError("backend 'openvino' needs openvino (pip install 'elasticdenser[openvino]'); use 'onnx' or 'auto'")
    return name


def _cache_root() -> Optional[Path]:
    value = os.environ.get("ELASTICDENSER_CACHE")
    if value and value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "elasticdenser"


def _example_inputs(encoder):
    b = encoder.tokenizer(["an example query to trace the graph", "and a second one"], padding=True,
                          return_tensors="pt")
    ids = b["input_ids"]
    tt = b.get("token_type_ids")
    return ids, b["attention_mask"], (torch.zeros_like(ids) if tt is None else tt)


def _onnx_bytes(module: torch.nn.Module, example) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, buf, dynamo=False, opset_version=17,
            input_names=list(_INPUTS), output_names=["embedding"],
            dynamic_axes={k: {0: "batch", 1: "seq"} for k in _INPUTS} | {"embedding": {0: "batch"}},
        )
    return buf.getvalue()


def _quantize_int8(data: bytes, keep_fp32: Sequence[str] = (), reduce_range: bool = False) -> bytes:
    """Dynamic int8 quantisation of the weight matrix multiplications (per output channel); the
    attention products (activation x activation), LayerNorm, softmax and pooling stay fp32, and so
    do the weight products whose node name contains one of ``keep_fp32`` (e.g. ``"ffn_out"``:
    ``benchmarks/bench_int8_variants.py`` measures which)."""
    import logging
    import tempfile

    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise StateError(f"backend 'int8' needs onnx and onnxruntime (pip install 'elasticdenser[serve]'): {exc}") from exc
    model = onnx.load_from_string(data)
    weights = {init.name for init in model.graph.initializer}
    activations = [n.name for n in model.graph.node if n.op_type == "MatMul"
                   and (n.input[1] not in weights or any(k in n.name for k in keep_fp32))]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        logging.disable(logging.WARNING)  # quantize_dynamic logs a generic "run pre-processing" hint
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=activations)
        finally:
            logging.disable(logging.NOTSET)
        return dst.read_bytes()


class FastRunner:
    """One operating point on one backend: ``runner(input_ids, attention_mask, token_type_ids)`` ->
    float32 numpy ``(B, width)``. Inputs may be numpy int arrays or torch tensors."""

    def __init__(self, encoder, point, backend: str):
        self.point = point
        self.backend = backend
        #: what the products are computed in (``"int8"`` runs int8 weight products)
        self.precision = openvino_precision() if backend == "openvino" else "fp32"
        self.width = point.width
        self._sessions: Dict[int, object] = {}
        self._small_threads: Dict[int, int] = {}  # torch's thread count -> the measured small-batch threads
        self._measuring = threading.Lock()
        self._onnx: Optional[bytes | str] = None
        self._module = None
        module = encoder.materialize(point).eval()
        example = _example_inputs(encoder)
        #: one short query: what the small-batch thread count is measured on
        self._probe = tuple(t[:1].numpy() for t in example)
        if backend == "jit":
            with torch.no_grad():
                self._module = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
        elif backend in _GRAPH:
            self._onnx = self._onnx_model(encoder, point, module, example, int8=backend == "int8")
        elif backend == "eager":
            self._module = module
        else:  # pragma: no cover - resolve_backend validates
            raise InvalidInputError(backend)

    @staticmethod
    def _onnx_model(encoder, point, module, example, int8: bool = False):
        def build() -> bytes:
            data = _onnx_bytes(module, example)
            return _quantize_int8(data) if int8 else data

        root = _cache_root()
        if root is not None:
            try:
                key = f"{encoder.fingerprint()[:24]}-{encoder.pooling}-{int(encoder.normalize)}"
                path = root / "onnx" / key / f"{point.name}{'.int8' if int8 else ''}.onnx"
                if path.is_file() and path.stat().st_size > 0:
                    return str(path)
                data = build()
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(path, data)
                return str(path)
            except OSError:
                pass
        return build()

    def _session(self, threads: int):
        sess = self._sessions.get(threads)
        if sess is not None:
            return sess
        with _lock:
            return self._sessions.get(threads) or self._new_session(threads)

    def _new_session(self, threads: int):
        if self.backend == "openvino":
            from elasticdenser.model.openvino_session import OpenVinoSession

            sess = self._sessions[threads] = OpenVinoSession(self._onnx, threads, self.precision)
            return sess
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        sess = self._sessions[threads] = ort.InferenceSession(self._onnx, so, providers=["CPUExecutionProvider"])
        return sess

    def __call__(self, input_ids, attention_mask, token_type_ids=None, threads: Optional[int] = None) -> np.ndarray:
        if token_type_ids is None:
            token_type_ids = (np.zeros_like(input_ids) if isinstance(input_ids, np.ndarray)
                              else torch.zeros_like(input_ids))
        return self._run(self.threads_for(int(input_ids.shape[0]), threads), input_ids, attention_mask, token_type_ids)

    def threads_for(self, batch: int, threads: Optional[int] = None) -> int:
        """The intra-op threads a call of ``batch`` rows runs on (``threads``, if given, wins)."""
        if threads:
            return max(1, int(threads))
        if batch > SMALL_BATCH:
            return max(1, torch.get_num_threads())
        if small_batch_threads is not None:
            return max(1, int(small_batch_threads))
        return self.small_batch_thread_count()

    def small_batch_thread_count(self) -> int:
        """Threads for a batch of up to ``SMALL_BATCH`` rows (:func:`~elasticdenser.model.cpu.faster_threads`
        on one short query), measured on first use and kept per torch thread count."""
        many = max(1, torch.get_num_threads())
        if many == 1:
            return 1
        known = self._small_threads.get(many)
        if known is not None:
            return known
        with self._measuring:  # a per-runner lock: other points' encodes go on meanwhile
            if many not in self._small_threads:
                self._small_threads[many] = faster_threads(lambda n: self._run(n, *self._probe), many,
                                                           THREADS_PROBES, THREADS_MARGIN)
            return self._small_threads[many]

    def pin_small_batch_threads(self, threads: int) -> None:
        """Use ``threads`` for small batches at torch's current thread count (what a profile measured)."""
        self._small_threads[max(1, torch.get_num_threads())] = max(1, int(threads))

    def _run(self, n: int, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        if self.backend in _GRAPH:
            feeds = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.int64, copy=False)
                     for k, v in zip(_INPUTS, (input_ids, attention_mask, token_type_ids))}
            return self._session(n).run(None, feeds)[0]
        args = tuple(torch.as_tensor(v, dtype=torch.long) for v in (input_ids, attention_mask, token_type_ids))
        prev = torch.get_num_threads()
        if n != prev:
            torch.set_num_threads(n)
        try:
            with torch.inference_mode():
                return self._module(*args).float().numpy()
        finally:
            if n != prev:
                torch.set_num_threads(prev)


def get_runner(encoder, point=None, backend: Optional[str] = "auto") -> FastRunner:
    """The cached :class:`FastRunner` of ``point`` (lazily built; rebuilt when any weight changed)."""
    p = encoder.resolve_point(point)
    name = resolve_backend(backend)
    cache = encoder.serving_cache("fast")
    key = (p, name, encoder.pooling, encoder.normalize, encoder.state_version())
    with _lock:
        entry = cache.get((p, name))
        if entry is None or entry[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # export / trace refuse inference tensors
                cache[(p, name)] = entry = (key, FastRunner(encoder, p, name))
    return entry[1]


def encode_fast(encoder, texts: Sequence[str], point=None, batch_size: int = 32, max_length: Optional[int] = None,
                progress: bool = False, backend: Optional[str] = "auto", threads: Optional[int] = None) -> np.ndarray:
    """:meth:`ElasticEncoder.encode` on a fast backend (fp32): same batching (longest first), same output."""
    p, texts, out = encoder.encode_inputs(texts, point)
    if not texts:
        return out
    runner = get_runner(encoder, p, backend)
    bulk = get_runner(encoder, p, "openvino") if _auto_bf16(backend, len(texts), batch_size) else None
    tensors = "np" if runner.backend in _GRAPH else "pt"
    batches = length_batches(encoder, texts, int(max_length or encoder.max_length), batch_size, tensors,
                             progress=f"encode {p.name} [{runner.backend}]" if progress else None)
    for idx, b in batches:
        run = bulk if bulk is not None and len(idx) >= AUTO_BF16_MIN_BATCH else runner
        out[idx] = run(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), threads=threads)
    return out


def _auto_bf16(backend: Optional[str], rows: int, batch_size: int) -> bool:
    """Whether ``"auto"`` runs this call's large batches on OpenVINO bf16: only on a CPU with bf16
    products, with OpenVINO installed, and for batches of at least :data:`AUTO_BF16_MIN_BATCH`."""
    return ((backend or "").lower() == "auto" and min(rows, int(batch_size)) >= AUTO_BF16_MIN_BATCH
            and _openvino_bf16())
