"""The training stage of ``elasticdenser pipeline`` (the main job): a short elastic run whose
result replaces the pipeline's encoder before indexing.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from elasticdenser.model.towers import load_document_tower
from elasticdenser.training.config import TrainConfig
from elasticdenser.training.loop import SUMMARY_FILE, train

log = logging.getLogger(__name__)

__all__ = ["PIPELINE_TRAIN_DEFAULTS", "pipeline_train_stage"]



#: the short elastic-training stage of the main job (200 steps, so the main job stays short, with
#: the equal point weights its figures in BENCHMARKS.md were measured with; every other setting is
#: TrainConfig's default). Its
#: questions are the built-in pool alone: on nq-sample, whose questions are pool-like, that is at
#: least as good as the adaptation default (pool + pseudo-queries; BENCHMARKS.md "Label-free corpus
#: adaptation"). For another corpus, pass a train config with ``sources: null`` or use ``train``.
PIPELINE_TRAIN_DEFAULTS = dict(sources=["pool"], steps=200, smallest_weight=1.0, log_every=20)


def pipeline_train_stage(ctx) -> None:
    """Stage for ``elasticdenser pipeline`` (insert before ``build_index``).

    Trains the query tower of ``ctx.encoder``'s starting model against the fixed document
    embeddings of ``ctx.collection`` (distillation on the unlabeled query pool, leakage-guarded
    against the collection), then sets ``ctx.encoder`` to the trained encoder and
    ``ctx.extra["document_encoder"]`` / ``ctx.extra["document_embeddings"]`` to the document tower
    and its cached full-width embeddings: documents must be indexed with those (the trained
    model's own full point drifts slightly from them). Settings: ``PIPELINE_TRAIN_DEFAULTS``,
    overridden by ``ctx.args.train_config`` (a YAML/TOML path) and ``ctx.args.train_steps`` if present.
    """
    args = ctx.args
    cfg = TrainConfig(**PIPELINE_TRAIN_DEFAULTS)
    if getattr(args, "train_config", None):
        cfg = TrainConfig.load(args.train_config)
    changes = dict(
        model=getattr(args, "model", None),
        output_dir=str(Path(ctx.out) / "training"),
        data_dir=str(args.data_dir) if getattr(args, "data_dir", None) else None,
        collection=ctx.collection.name,
        exclude=sorted(set(cfg.exclude) | {ctx.collection.name}),
        progress=not getattr(args, "no_progress", False),
    )
    if getattr(args, "train_steps", None):
        changes["steps"] = int(args.train_steps)
    cfg = cfg.replace(**changes)
    result = train(cfg, collection=ctx.collection)
    summary = json.loads((result.model_dir / SUMMARY_FILE).read_text())
    # the document tower the trained model records (the starting model, or the joint stage's)
    doc_encoder = load_document_tower(result.model_dir, ctx.encoder.device)
    ctx.extra["document_encoder"] = ctx.encoder if doc_encoder.fingerprint() == ctx.encoder.fingerprint() else doc_encoder
    ctx.extra["document_embeddings"] = summary["document_embeddings"]
    ctx.extra["training"] = {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 1),
                             "model_dir": str(result.model_dir), "last_losses": result.last_losses}
    ctx.encoder = result.encoder.to(ctx.encoder.device)
    ctx.log(f"[train] {result.steps} steps in {result.wall_time_s:.0f} s -> {result.model_dir}")
