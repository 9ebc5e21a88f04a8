"""Argument helpers shared by the index/search/evaluate/pipeline commands."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import OperatingPoint


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """``--data-dir``: where named collections (nq-sample, ...) and the query pool are read from."""
    p.add_argument("--data-dir", default=None,
                   help="data directory of the named collections and the query pool (default: $ELASTICDENSER_DATA; "
                   "a clear error if neither is set and one is needed)")


def pick_device(device: Optional[str] = None) -> str:
    """``device`` if given, else ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``, resolved by :func:`pick_device` wherever it is used."""
    p.add_argument("--device", default=None, help="torch device for the encoder (default: cuda if available, else cpu)")


def add_out(p: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """``--out`` / ``-o``: the one spelling of "where the output goes" in every command."""
    p.add_argument("--out", "-o", required=required, default=None, help=help)


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: the one switch for progress bars (they go to stderr)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` of the corpus encoding (``--bf16`` = ``--precision bf16``, kept for old scripts)."""
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="what the documents are encoded in. auto (default): bf16 through OpenVINO on a CPU with "
                   "bf16 products (AVX512-BF16 or AMX) and OpenVINO installed, fp32 elsewhere; bf16 elsewhere is "
                   "torch's autocast (pays on GPUs, several times slower on a CPU without bf16 products)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)


def warn_slow_bf16(precision: str, device) -> None:
    """Say so when bf16 was asked for on a CPU that would emulate it."""
    import torch

    from elasticdenser.model.cpu import cpu_features, native_bf16

    if precision == "bf16" and torch.device(device).type == "cpu" and not native_bf16():
        print(f"warning: bf16 on a CPU without bf16 products ({cpu_features()['summary']}): torch emulates them, "
              "which is several times slower than fp32 (BENCHMARKS.md); encoding anyway", file=sys.stderr)


QUERY_BACKEND_HELP = ("query encoder path (default auto: ONNX Runtime, else TorchScript; on a CPU with bf16 products "
                      "and OpenVINO installed, large batches in bf16 through OpenVINO; onnx: exact fp32 always)")


def add_backend(p: argparse.ArgumentParser, default: Optional[str], help: str = QUERY_BACKEND_HELP) -> None:
    """``--backend``: the query encoder path (names of :data:`elasticdenser.model.fastpath.BACKENDS`; not
    imported here so that ``--help`` does not load torch)."""
    p.add_argument("--backend", default=default, choices=("auto", "eager", "jit", "onnx", "int8", "openvino"), help=help)


def load_encoder(model: Optional[str], device: Optional[str] = None):
    """The encoder of ``--model`` (default all-MiniLM-L6-v2) on ``--device``, in eval mode."""
    from elasticdenser.model.encoder import ElasticEncoder

    return ElasticEncoder.from_pretrained(model).to(pick_device(device)).eval()


def resolve_points(spec: Optional[str], encoder, available: Optional[List[OperatingPoint]] = None) -> List[OperatingPoint]:
    """``None``/"default" -> the searcher's/encoder's default points; "full"; or a comma list of names."""
    if not spec or spec == "default":
        return list(available or encoder.default_points())
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        out.append(encoder.space.resolve(part))
    if not out:
        raise InvalidInputError(f"no operating points in {spec!r}")
    return out
