"""From which batch size a point's queries run in bf16 under ``backend="auto"``: measured, per point.

Why measured per point: on a CPU with bf16 products, OpenVINO bf16 pays once a call holds enough
work to cover its higher per-call cost. The full point gets there within a few rows; the smallest
default point, with a quarter of the work per row, only at 16-32 rows, and where that lies moves with
the CPU (``BENCHMARKS.md``, issue 16). One row count for every point ran the small points, the ones
a router serves at peak load, slower at the batch sizes it serves them in. ``elasticdenser profile``
measures each point here, applies the result (:func:`elasticdenser.model.fastpath.set_bf16_min_batch`)
before timing the profile, and stores it with the profile, which :meth:`Searcher.open` applies again.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

from elasticdenser.errors import InvalidInputError

__all__ = ["BATCH_SIZES", "apply_profile", "choose_min_batch", "measure_bf16_min_batch"]

#: batch sizes compared; 6 sits just past the exact path's switch from one thread to two
#: (``fastpath.SMALL_BATCH``), where the two paths trade places on some CPUs
BATCH_SIZES = (2, 4, 6, 8, 12, 16, 24, 32)


def choose_min_batch(times: Dict[int, Dict[str, float]]) -> Optional[int]:
    """The smallest measured size from which bf16 is faster at that size *and every larger one*
    (``None`` when it is not faster at the largest). ``times``: ``{size: {"fp32": ms, "bf16": ms}}``.
    Sizes above the largest measured follow the largest (more rows only favour the larger products)."""
    chosen = None
    for size in sorted(times, reverse=True):
        if times[size]["bf16"] >= times[size]["fp32"]:
            break
        chosen = size
    return chosen


def measure_bf16_min_batch(encoder, point, texts: Sequence[str], sizes: Sequence[int] = BATCH_SIZES,
                           rounds: int = 3, burst: int = 3,
                           clock: Callable[[], float] = time.perf_counter) -> Tuple[Optional[int], Dict[int, Dict[str, float]]]:
    """``(rows from which bf16 is faster, {size: {"fp32": median ms, "bf16": median ms}})`` for ``point``.

    The exact path is the one ``"auto"`` runs below the switch (ONNX Runtime, else TorchScript); both
    are timed on the same real texts through :func:`elasticdenser.model.fastpath.encode_fast`, each
    size and path as ``burst`` calls in a row after one untimed call (a served point runs in a row;
    the first call after the other path finds its weights out of the cache), the two paths in
    alternating order each round. Medians over ``rounds`` x ``burst`` calls.
    """
    from elasticdenser.model import fastpath

    if not texts:
        raise InvalidInputError("measuring the bf16 batch size needs at least one query text")
    exact = fastpath.resolve_backend("auto")
    samples: Dict[Tuple[int, str], list] = {}
    offset = 0
    for r in range(rounds):
        for size in sizes:
            paths = ((exact, "fp32"), ("openvino", "bf16"))
            for backend, label in paths if r % 2 == 0 else paths[::-1]:
                for i in range(burst + 1):
                    batch = [texts[(offset + j) % len(texts)] for j in range(size)]
                    offset += size
                    t0 = clock()
                    fastpath.encode_fast(encoder, batch, point, batch_size=size, backend=backend)
                    if i:
                        samples.setdefault((size, label), []).append((clock() - t0) * 1e3)
    times = {int(s): {label: round(statistics.median(samples[(s, label)]), 4) for label in ("fp32", "bf16")}
             for s in sizes}
    return choose_min_batch(times), times


def apply_profile(encoder, manifest: dict) -> bool:
    """Apply the sizes the experiment's profile measured (``bf16_min_batch``) to ``encoder``, which the
    caller has checked is the experiment's query model; only when the profile was measured on that
    same model. Returns whether anything was applied."""
    from elasticdenser.model import fastpath

    prof = manifest.get("profile")
    sizes = prof.get("bf16_min_batch") if isinstance(prof, dict) else None
    if not sizes or prof.get("model_fingerprint") != manifest.get("model", {}).get("fingerprint"):
        return False
    fastpath.set_bf16_min_batch(encoder, sizes)
    return True
