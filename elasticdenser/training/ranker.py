"""Training an ElasticRanker: a full-size teacher, then every operating point distilled from it.

1. **Teacher** (``teacher_steps``, skipped when ``teacher`` names a trained cross-encoder): the
   full point fine-tuned with listwise cross-entropy on labelled lists (the positive against hard
   negatives from the first stage). Saved as ``<output_dir>/teacher``.
2. **Elastic optimisation** (``steps``): each step samples operating points (``sandwich``: largest
   + smallest + ``num_random``; ``fixed``: every point; ``static``: the listed point only) and
   trains each on listwise KL to the frozen teacher's scores over the same lists
   (``distill_weight``, temperature ``distill_temperature``) plus the labels' cross-entropy where
   the list has a positive (``label_weight``), and, with ``hidden_weight``, the squared difference
   between the point's last token states and the teacher's (DynaBERT's hidden-state distillation).
   Unlabelled lists need only the teacher.
3. **First-stage weights** (``first_stage_weight``): per point, how much of the first stage's score
   the reranked score keeps, chosen on ``dev_questions`` labelled lists held out of both phases
   (:mod:`elasticdenser.training.ranker_weights`) and saved with the ranker.

Checkpoints (``checkpoint_every``) hold weights, optimiser, scheduler, RNG, phase and step, written
atomically; a run started again with the same ``output_dir`` resumes from the last one. The final
ranker is ``<output_dir>/model`` (a standard HF cross-encoder directory plus ``elastic_config.json``)
with ``ranker_summary.json``.
"""
from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional

import torch
import torch.nn.functional as F

from elasticdenser.atomic import atomic_dir, write_text
from elasticdenser.errors import InvalidInputError
from elasticdenser.training.configfile import ConfigFile
from elasticdenser.training.optim import adamw, load_optimizer_state

log = logging.getLogger(__name__)

__all__ = ["RANKER_CONFIG_FILENAME", "RankerConfig", "train_ranker"]

RANKER_CONFIG_FILENAME = "ranker_config.yaml"
_STATE = "ranker_state.pt"


@dataclass
class RankerConfig(ConfigFile):
    KIND: ClassVar[str] = "ranker config"
    FILENAME: ClassVar[str] = RANKER_CONFIG_FILENAME

    #: start checkpoint: an HF cross-encoder, a saved ranker, or an encoder (new head); None = the teacher if
    #: given, else all-MiniLM-L6-v2
    model: Optional[str] = None
    #: a trained cross-encoder to distil from; None = fine-tune the full point first (teacher_steps)
    teacher: Optional[str] = None
    output_dir: str = "runs/ranker"
    data_dir: Optional[str] = None
    #: collection whose labelled training half (train_queries) and corpus the lists come from
    collection: str = "squad-sample-test"
    #: the first stage: an experiment over the same corpus whose retriever gives the candidates
    experiment: Optional[str] = None
    first_stage_point: Optional[str] = None  #: query point of the first stage (None = full)
    candidates: int = 20  #: first-stage depth hard negatives are drawn from
    list_size: int = 4  #: passages per list (positive + negatives)
    batch_size: int = 4  #: lists per step
    max_length: int = 192
    labels: bool = True  #: use the collection's labelled training half
    pseudo_queries: int = 0  #: add pseudo-queries cut from the corpus (source passage = positive)
    max_queries: Optional[int] = None
    exclude: List[str] = field(default_factory=list)  #: more collections whose questions must not be trained on
    teacher_steps: int = 400
    teacher_lr: float = 1e-4
    #: 450: the smallest point keeps its share of the gain only with ~3x the 200 steps (BENCHMARKS.md, issue 17)
    steps: int = 450
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    points: Optional[List[str]] = None  #: ranker points to train (None = the ranker's defaults)
    sampling: str = "sandwich"
    num_random: int = 1
    #: loss weights of the largest and smallest points in each elastic step (the query encoder's
    #: ``largest_weight`` / ``smallest_weight``); both 1: a heavier smallest point did not lift it on
    #: scifact (BENCHMARKS.md, "the smallest ranker point's loss weighted 3x")
    largest_weight: float = 1.0
    smallest_weight: float = 1.0
    static: bool = False  #: train only the listed point(s) (a static baseline of that shape)
    #: before the elastic phase, order heads and FFN neurons by importance on this many labelled lists (0: keep)
    reorder_lists: int = 64
    #: and choose the layers each depth keeps by greedy elimination on the same lists; off = bottom-up,
    #: which trained the small depths far better on squad (BENCHMARKS.md: static L3 0.655 vs 0.257)
    reorder_layers: bool = False
    label_weight: float = 1.0
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    #: weight of the mean squared difference between a point's last token states and the teacher's (every
    #: non-padding token): a denser signal than the listwise KL's one number per pair; off until it is measured to help
    hidden_weight: float = 0.0
    #: the first stage's weight in every point's reranked score (``elasticdenser.rerank.interpolate``):
    #: None = chosen per point on ``dev_questions`` labelled lists held out of training; 0 = the logit alone
    first_stage_weight: Optional[float] = None
    dev_questions: int = 100
    seed: int = 42
    checkpoint_every: int = 100
    keep_checkpoints: int = 1

    def validate(self) -> "RankerConfig":
        if self.sampling not in ("sandwich", "fixed"):
            raise InvalidInputError(f"ranker config: sampling must be sandwich or fixed, got {self.sampling!r}")
        self.check_bounds(("candidates", "list_size", "batch_size", "max_length", "checkpoint_every", "keep_checkpoints"), 1)
        if self.list_size < 2:
            raise InvalidInputError("ranker config: list_size must be >= 2 (a positive and a negative)")
        self.check_bounds(("teacher_steps", "steps", "num_random", "pseudo_queries", "reorder_lists", "teacher_lr", "lr",
                           "weight_decay", "max_grad_norm", "label_weight", "distill_weight", "hidden_weight",
                           "largest_weight", "smallest_weight"), 0)
        self.check_bounds(("distill_temperature",), 0, strict=True)
        self.check_bounds(("dev_questions",), 0)
        if self.first_stage_weight is not None and not 0 <= float(self.first_stage_weight) <= 1:
            raise InvalidInputError(f"ranker config: first_stage_weight must be in [0, 1], got {self.first_stage_weight!r}")
        if not self.experiment:
            raise InvalidInputError("ranker config: experiment (the first stage whose candidates the ranker learns "
                                    "to rerank) is required")
        if self.static and not self.points:
            raise InvalidInputError("ranker config: static needs the point(s) to train in `points`")
        for name in ("points", "exclude"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [p for p in getattr(self, name).split(",") if p.strip()])
        return self


def _list_losses(logits: torch.Tensor, sizes: List[int], labels: List[int], teacher: Optional[torch.Tensor],
                 cfg: RankerConfig, label_weight: float) -> torch.Tensor:
    """Mean over lists of ``distill_weight x KL(teacher || student) + label_weight x CE(label)``."""
    total, start = logits.new_zeros(()), 0
    t = cfg.distill_temperature
    for size, label in zip(sizes, labels):
        s = logits[start : start + size]
        if teacher is not None and cfg.distill_weight:
            p = F.log_softmax(teacher[start : start + size].float() / t, -1)
            total = total + cfg.distill_weight * t * t * F.kl_div(F.log_softmax(s.float() / t, -1), p, reduction="sum",
                                                                  log_target=True)
        if label >= 0 and label_weight:
            total = total + label_weight * F.cross_entropy(s.float()[None], torch.tensor([label]))
        start += size
    return total / max(1, len(sizes))


def _state_loss(states: torch.Tensor, teacher_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens of the mean squared difference of their last-layer states."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return ((states.float() - teacher_states.float()) ** 2 * m).sum() / (m.sum() * states.shape[-1]).clamp(min=1)


def _save_state(out: Path, ranker, optimizer, scheduler, phase: str, step: int, keep: int) -> None:
    from elasticdenser.training.checkpoint import rng_state

    root = out / "checkpoints"
    with atomic_dir(root / f"{phase}-{step}") as tmp:
        torch.save({"phase": phase, "step": step, "model": ranker.hf.state_dict(),
                    "elastic_config": ranker.elastic_config(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / _STATE)
    done = sorted((p for p in root.iterdir() if (p / _STATE).is_file()), key=lambda p: p.stat().st_mtime)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_state(out: Path) -> Optional[dict]:
    root = out / "checkpoints"
    done = sorted((p for p in root.glob("*") if (p / _STATE).is_file()), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    return torch.load(done[-1] / _STATE, map_location="cpu", weights_only=False) if done else None


def train_ranker(cfg: RankerConfig, first_stage, progress: bool = True,
                 log_fn: Callable[[str], None] = log.info) -> Path:
    """Run both phases (see module docstring); returns ``<output_dir>/model``.

    ``first_stage`` is the retriever whose candidates the ranker learns to rerank: anything with
    ``search_texts(texts, k, point)`` -- ``Searcher.open(cfg.experiment)``, as ``train-ranker`` opens it.
    Under ``torchrun`` each rank takes its share of every step's ``batch_size x WORLD_SIZE`` lists,
    gradients are averaged over the ranks, and rank 0 alone writes (same file layout, same resume).
    """
    from elasticdenser.training.distributed import setup_distributed

    dist = setup_distributed()
    try:
        return _train_ranker(cfg, first_stage, progress, log_fn, dist)
    finally:
        if dist.owns_group:
            torch.distributed.destroy_process_group()


def _train_ranker(cfg: RankerConfig, first_stage, progress: bool, log_fn: Callable[[str], None], dist) -> Path:
    from elasticdenser.data import load_collection
    from elasticdenser.model.ranker import ElasticRanker
    from elasticdenser.training.checkpoint import set_rng_state
    from elasticdenser.training.distributed import allreduce_gradients, broadcast_parameters
    from elasticdenser.training.ranker_data import build_list, first_stage_lists, training_questions
    from elasticdenser.training.ranker_weights import choose_first_stage_weights, split_dev_lists
    from elasticdenser.training.sampling import PointSampler, lr_lambda

    out = Path(cfg.output_dir)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out)
    dist.barrier()
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    coll = load_collection(cfg.collection, cfg.data_dir)
    exclude = [load_collection(name, cfg.data_dir) for name in cfg.exclude]
    questions, dropped = training_questions(coll, labels=cfg.labels, pseudo=cfg.pseudo_queries, seed=cfg.seed,
                                            exclude=exclude)
    if cfg.max_queries:
        questions = random.Random(cfg.seed).sample(questions, min(cfg.max_queries, len(questions)))
    passages = {d.doc_id: d.contents for d in coll.corpus}
    log_fn(f"first stage: {len(questions)} questions x {cfg.candidates} candidates from {cfg.experiment}")
    examples = first_stage_lists(first_stage, questions, passages, cfg.candidates, cfg.first_stage_point)
    dev: list = []
    if cfg.first_stage_weight is None and cfg.dev_questions:
        examples, dev = split_dev_lists(examples, cfg.dev_questions, cfg.seed + 29)
        log_fn(f"{len(dev)} labelled lists held out to choose the first stage's weight per point")
    # a given teacher is also where the student starts (its sub-networks are what gets distilled)
    ranker = ElasticRanker.from_pretrained(cfg.model or cfg.teacher, max_length=cfg.max_length)
    if cfg.points:
        ranker.encoder.set_points([ranker.full_width(p) for p in cfg.points])
    state = _latest_state(out)
    phases = [("teacher", cfg.teacher_steps, cfg.teacher_lr)] if cfg.teacher is None else []
    phases.append(("elastic", cfg.steps, cfg.lr))
    teacher = ElasticRanker.from_pretrained(cfg.teacher, max_length=cfg.max_length) if cfg.teacher else None
    if teacher is None and (out / "teacher" / "config.json").is_file() and (state or {}).get("phase") != "teacher":
        teacher = ElasticRanker.from_pretrained(out / "teacher", max_length=cfg.max_length)  # finished before a resume
        ranker.hf.load_state_dict(teacher.hf.state_dict())
    if cfg.teacher is None and not any(ex.positives for ex in examples):
        raise InvalidInputError(f"{cfg.collection}: no labelled list to train a teacher on; give a trained "
                                "cross-encoder as teacher, or labels / pseudo_queries")
    summary: Dict[str, object] = {"questions": len(questions), "dropped": dropped, "phases": {}}
    for phase, steps, lr in phases:
        if phase == "teacher" and teacher is not None:
            continue  # finished before a resume
        if steps == 0 and phase == "teacher":
            raise InvalidInputError("ranker config: teacher_steps is 0 and no teacher is given")
        if phase == "elastic":
            teacher.train(False)
        torch.manual_seed(cfg.seed + len(phase))  # dropout draws per phase: a run resumed between phases is the same run
        points = [ranker.resolve_point(None)] if phase == "teacher" else (
            [ranker.resolve_point(p) for p in cfg.points] if cfg.static else ranker.default_points())
        space = ranker.encoder.space
        sampler = PointSampler(space, points, "fixed" if (phase == "teacher" or cfg.static) else cfg.sampling,
                               cfg.num_random, widths=[space.hidden_size], seed=cfg.seed)
        params = [p for p in ranker.hf.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=lr, weight_decay=cfg.weight_decay)
        warmup = int(cfg.warmup_ratio * steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s, w=warmup, n=steps: lr_lambda(s, w, n))
        start = 0
        if state and state["phase"] == phase:
            ranker.hf.load_state_dict(state["model"])
            ranker.encoder.load_elastic_state(state["elastic_config"])
            load_optimizer_state(optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start = int(state["step"])
            log_fn(f"{phase}: resuming at step {start}")
        if phase == "elastic" and start == 0 and cfg.reorder_lists and not ranker.encoder.reordered:
            rng = random.Random(cfg.seed + 17)
            labelled = [ex for ex in examples if ex.positives]
            rng.shuffle(labelled)
            lists = []
            for ex in labelled[: 4 * cfg.reorder_lists]:
                built = build_list(ex, cfg.list_size, rng)
                if built is not None and len(lists) < cfg.reorder_lists:
                    lists.append((ex.query, *built))
            if lists:
                log_fn(f"ordering heads and FFN neurons by importance on {len(lists)} lists")
                ranker.reorder_by_importance(lists)
                if cfg.reorder_layers:
                    log_fn(f"layer order (most important first): {ranker.reorder_layers(lists)}")
            ranker.encoder.layer_order = dist.from_rank0(ranker.encoder.layer_order)
        broadcast_parameters(ranker.hf, dist)  # every rank starts the phase from rank 0's weights
        ranker.train(True)
        losses: List[float] = []
        bar = range(start, steps)
        if progress and dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(bar, desc=f"ranker {phase}", unit="step", initial=start, total=steps)
        for step in bar:
            rng = random.Random(cfg.seed * 7_919 + step + (0 if phase == "teacher" else 1_000_003))
            lists, wanted = [], cfg.batch_size * dist.world
            for _ in range(100 * wanted):
                ex = examples[rng.randrange(len(examples))]
                built = build_list(ex, cfg.list_size, rng)
                if built is not None and (phase == "elastic" or built[1] >= 0):
                    lists.append((ex.query, *built))
                    if len(lists) == wanted:
                        break
            else:
                raise InvalidInputError(f"{cfg.collection}: too few questions with a usable list ({phase} phase)")
            lists = lists[dist.rank :: dist.world]  # this rank's share; one rank = every list
            sizes, labels = [len(p) for _, p, _ in lists], [lab for _, _, lab in lists]
            batch = ranker.tokenize_pairs([q for q, ps, _ in lists for _ in ps], [p for _, ps, _ in lists for p in ps])
            target = target_states = None
            if phase == "elastic":
                with torch.no_grad():
                    target, target_states = teacher.logits_and_states(batch["input_ids"], batch["attention_mask"], None,
                                                                      batch.get("token_type_ids"))
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for point in sampler.sample(step):
                logits, states = ranker.logits_and_states(batch["input_ids"], batch["attention_mask"], point,
                                                          batch.get("token_type_ids"))
                loss = _list_losses(logits, sizes, labels, target, cfg, cfg.label_weight if phase == "elastic" else 1.0)
                if target_states is not None and cfg.hidden_weight:
                    loss = loss + cfg.hidden_weight * _state_loss(states, target_states, batch["attention_mask"])
                if phase == "elastic" and not cfg.static:
                    loss = loss * sampler.weight(point, cfg.largest_weight, cfg.smallest_weight)
                loss.backward()
                step_loss += float(loss.detach())
            allreduce_gradients(params, dist)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(step_loss)
            if progress and dist.main:
                bar.set_postfix(loss=f"{step_loss:.3f}")
            elif (step + 1) % 50 == 0 and dist.main:
                log_fn(f"{phase} step {step + 1}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                if dist.main:
                    _save_state(out, ranker, optimizer, scheduler, phase, step + 1, cfg.keep_checkpoints)
                dist.barrier()
        ranker.train(False)
        state = None
        summary["phases"][phase] = {"steps": steps, "resumed_at": start, "final_loss": losses[-1] if losses else None}
        if phase == "teacher":
            if dist.main:
                with atomic_dir(out / "teacher") as tmp:  # a half-written teacher must not look finished
                    ranker.save_pretrained(tmp)
                for done in (out / "checkpoints").glob("teacher-*"):  # the finished teacher is the resume point now
                    shutil.rmtree(done, ignore_errors=True)
            dist.barrier()
            teacher = copy.deepcopy(ranker)
    if cfg.first_stage_weight is not None:  # 0 records nothing: the logit alone, as a ranker without weights
        w = float(cfg.first_stage_weight)
        ranker.first_stage_weights = {p.name: w for p in ranker.default_points()} if w else {}
    elif dev and dist.main:
        chosen = choose_first_stage_weights(ranker, dev, ranker.default_points())
        ranker.first_stage_weights = {name: float(c["weight"]) for name, c in chosen.items()}
        summary["first_stage_weights"] = {"dev_lists": len(dev), **chosen}
        log_fn(f"first-stage weights (on {len(dev)} held-out lists): {ranker.first_stage_weights}")
    summary.update(seconds=round(time.time() - t0, 1), points=[p.name for p in ranker.default_points()],
                   teacher=cfg.teacher or str(out / "teacher"), fingerprint=ranker.fingerprint())
    if dist.main:
        with atomic_dir(out / "model") as tmp:
            ranker.save_pretrained(tmp)
            write_text(tmp / "ranker_summary.json", json.dumps(summary, indent=1))
    dist.barrier()
    return out / "model"
