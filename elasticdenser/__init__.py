"""ElasticDenser: dense retrieval with an elastic query encoder.

The public API is this short list; everything else lives in the sub-packages (``model``,
``training``, ``serve``, ``index``, ``eval``, ``data``). Names are imported on first use (PEP 562),
so ``import elasticdenser`` and ``elasticdenser --help`` do not load torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.16.2"

#: public name -> the module that owns it
_EXPORTS = {
    "OperatingPoint": "elasticdenser.operating_point",
    "ElasticSpace": "elasticdenser.operating_point",
    "InvalidOperatingPoint": "elasticdenser.operating_point",
    "parse_points": "elasticdenser.operating_point",
    "ElasticDenserError": "elasticdenser.errors",
    "ElasticEncoder": "elasticdenser.model.encoder",
    "ElasticRanker": "elasticdenser.model.ranker",
    "RankerConfig": "elasticdenser.training.ranker",
    "train_ranker": "elasticdenser.training.ranker",
    "load_collection": "elasticdenser.data",
    "load_query_pool": "elasticdenser.data",
    "TrainConfig": "elasticdenser.training.config",
    "train": "elasticdenser.training.loop",
    "build_experiment": "elasticdenser.index.build",
    "Searcher": "elasticdenser.searcher",
    "evaluate_points": "elasticdenser.eval.evaluate",
    "Router": "elasticdenser.serve.router",
    "RouterConfig": "elasticdenser.serve.router",
    "RoutedSearcher": "elasticdenser.serve.service",
    "create_app": "elasticdenser.serve.server",
}

__all__ = [
    "__version__",
    "OperatingPoint",
    "ElasticSpace",
    "InvalidOperatingPoint",
    "parse_points",
    "ElasticDenserError",
    "ElasticEncoder",
    "ElasticRanker",
    "RankerConfig",
    "train_ranker",
    "load_collection",
    "load_query_pool",
    "TrainConfig",
    "train",
    "build_experiment",
    "Searcher",
    "evaluate_points",
    "Router",
    "RouterConfig",
    "RoutedSearcher",
    "create_app",
]
assert set(__all__[1:]) == set(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'elasticdenser' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from elasticdenser.data import load_collection, load_query_pool
    from elasticdenser.errors import ElasticDenserError
    from elasticdenser.eval.evaluate import evaluate_points
    from elasticdenser.index.build import build_experiment
    from elasticdenser.model.encoder import ElasticEncoder
    from elasticdenser.operating_point import (
        ElasticSpace,
        InvalidOperatingPoint,
        OperatingPoint,
        parse_points,
    )
    from elasticdenser.searcher import Searcher
    from elasticdenser.serve.router import Router, RouterConfig
    from elasticdenser.serve.server import create_app
    from elasticdenser.serve.service import RoutedSearcher
    from elasticdenser.training.config import TrainConfig
    from elasticdenser.training.loop import train
