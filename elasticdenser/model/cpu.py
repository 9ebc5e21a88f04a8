"""What the CPU this process runs on can do, read at run time (never assumed).

The machines this project runs on differ between sessions: some are AVX2-only, some have AVX-512
with AVX512-BF16, some AMX. Whether bf16 pays depends on that: with native bf16 products a bf16
matmul runs faster than fp32; without them torch emulates bf16 and it runs several times slower
(BENCHMARKS.md). Benchmarks record :func:`cpu_features` beside every speed figure, and the bf16
paths consult :func:`native_bf16` instead of a hard-coded choice; :func:`faster_threads` likewise
measures whether more threads pay for a small call.
"""
from __future__ import annotations

import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List

__all__ = ["cpu_features", "faster_threads", "native_bf16", "parse_cpuinfo"]

#: the flags (Linux /proc/cpuinfo names) that decide which low-precision products run in hardware
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def parse_cpuinfo(text: str) -> "tuple[str, set]":
    """``(model name, flags)`` of the first processor in a Linux ``/proc/cpuinfo`` text. The name
    carries the family and model numbers where given: a VM may call two CPU generations with
    different bf16 rates by the same name ("AMD EPYC")."""
    fields, flags = {}, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    model = fields.get("model name", "")
    if model and "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return model, flags


@lru_cache(maxsize=1)
def cpu_features() -> Dict[str, object]:
    """``{"model": ..., "flags": {name: bool}, "torch_capability": ..., "summary": ...}`` of this CPU."""
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: only torch's own view below
        model, flags = "", set()
    model = model or platform.processor() or platform.machine()
    capability = ""
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        pass
    found = {name: name in flags for name in _FLAGS}
    have = [n for n in _FLAGS if found[n]] or ["none of " + ", ".join(_FLAGS)]
    return {"model": model, "flags": found, "torch_capability": capability,
            "summary": f"{model}; {', '.join(have)}; torch {capability or '?'}"}


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_features()["flags"]
    return bool(flags["avx512_bf16"] or flags["amx_bf16"])


def faster_threads(run: Callable[[int], object], many: int, probes: int, margin: float) -> int:
    """``many`` if ``run(many)`` takes at most ``1 / margin`` of ``run(1)``'s time here, else 1.

    Whether more threads pay for a small call depends on the CPU (its thread wake-up cost against
    the call's work), so it is measured, not assumed: one untimed call each (sessions are built),
    then ``probes`` calls each, alternating which goes first, compared by their fastest: other work
    in the process (another pool's threads still spinning) only ever adds time, and it hurts the
    call on several threads most. The margin keeps one thread unless more are clearly faster: they
    take cores other work would use."""
    if many <= 1:
        return 1
    times: Dict[int, List[float]] = {1: [], many: []}
    for n in times:
        run(n)
    for i in range(probes):
        for n in ((1, many) if i % 2 else (many, 1)):
            t0 = time.perf_counter()
            run(n)
            times[n].append(time.perf_counter() - t0)
    return many if min(times[many]) * margin <= min(times[1]) else 1
