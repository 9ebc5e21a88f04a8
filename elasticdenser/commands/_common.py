"""Argument helpers shared by the index/search/evaluate/pipeline commands."""
from __future__ import annotations

import argparse
from typing import List, Optional

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import OperatingPoint


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="folder of the sample data (default: $ELASTICDENSER_DATA)")


def pick_device(device: Optional[str] = None) -> str:
    """``device`` if given, else ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device for the encoder (default: cuda if available, else cpu)")


def add_backend(p: argparse.ArgumentParser, default: Optional[str], help: str) -> None:
    """``--backend``: the query encoder path (names of :data:`elasticdenser.model.fastpath.BACKENDS`; not
    imported here so that ``--help`` does not load torch)."""
    p.add_argument("--backend", default=default, choices=("auto", "eager", "jit", "onnx", "int8"), help=help)


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
