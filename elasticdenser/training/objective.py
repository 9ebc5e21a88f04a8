"""The elastic objective: how the losses of :mod:`elasticdenser.training.losses` combine for one
operating point of one micro-batch (teacher targets computed once per micro-batch).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import torch

from elasticdenser.model.functional import pooled_by_length
from elasticdenser.operating_point import OperatingPoint
from elasticdenser.training.candidates import StoreDocuments
from elasticdenser.training.config import TrainConfig
from elasticdenser.training.data import Example
from elasticdenser.training.losses import (
    ContrastiveLoss,
    EmbeddingAlignmentLoss,
    FixedDocuments,
    MatryoshkaLoss,
    ScoreDistillationLoss,
    matryoshka_widths,
)

log = logging.getLogger(__name__)

__all__ = ["ElasticObjective"]


class ElasticObjective:
    """All losses of one micro-batch for one operating point (Matryoshka over widths)."""

    def __init__(self, config: TrainConfig, docs: "FixedDocuments | StoreDocuments", widths: Sequence[int], full_width: int):
        self.config = config
        self.docs = docs
        self.widths = list(widths)
        self.full_width = full_width
        self.distill = ScoreDistillationLoss(config.distill_temperature)
        self.align = EmbeddingAlignmentLoss(config.align_kind)
        self.contrastive = ContrastiveLoss(config.contrastive_temperature)

    def prepare(self, teacher, batch: dict, examples: Sequence[Example], key: int = 0) -> dict:
        """Teacher-side quantities for one micro-batch (no gradients); ``key`` numbers the micro-batch."""
        cfg = self.config
        docs, local = self.docs, None
        with torch.no_grad():
            t_pooled = pooled_by_length(lambda ids, mask, types: teacher.pooled(ids, mask, None, types), batch).float()
            t_full = teacher.truncate(t_pooled, self.full_width)
            if isinstance(docs, StoreDocuments):  # memory-bounded: the losses run on the candidates only
                rows = docs.candidates(t_full, cfg.distill_candidates, {d for ex in examples for d in ex.positives}, key)
                local = {int(r): i for i, r in enumerate(rows.tolist())}
                docs = docs.subset(rows)
            full_scores = docs.scores(t_full, self.full_width)
        prep = {"docs": docs, "t_pooled": t_pooled, "candidates": None, "teacher_scores": {}}
        if cfg.distill_weight > 0:
            cand = None
            if local is None and cfg.distill_candidates and cfg.distill_candidates < len(docs):
                top = full_scores.topk(int(cfg.distill_candidates), dim=-1).indices
                cand = torch.unique(top.reshape(-1))
            prep["candidates"] = cand
            full_target = full_scores if cand is None else full_scores[:, cand]
            for w in self.widths:
                if cfg.distill_target_width == "full" or w == self.full_width:
                    prep["teacher_scores"][w] = full_target
                else:
                    prep["teacher_scores"][w] = docs.scores(teacher.truncate(t_pooled, w), w, cand)
        if local is not None:  # positives as rows of the candidate subset
            examples = [Example(ex.text, tuple(local[d] for d in ex.positives)) for ex in examples]
        # contrastive: columns = positives of the batch + hard negatives mined by the teacher
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
                pos = set(ex.positives)
                ranked = full_scores[i].topk(min(len(docs), cfg.hard_negatives + len(pos) + 1)).indices.tolist()
                negs = [d for d in ranked if d not in pos][: cfg.hard_negatives]
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
        docs = prep["docs"]

        def at_width(w: int) -> torch.Tensor:
            s = encoder.truncate(s_pooled, w)
            total = s.new_zeros(())
            if cfg.distill_weight > 0:
                student_scores = docs.scores(s, w, prep["candidates"])
                loss = self.distill(student_scores, prep["teacher_scores"][w])
                parts["distill"] = parts.get("distill", 0.0) + float(loss.detach()) / len(widths)
                total = total + cfg.distill_weight * loss
            if cfg.align_weight > 0:
                loss = self.align(s, encoder.truncate(prep["t_pooled"], w))
                parts["align"] = parts.get("align", 0.0) + float(loss.detach()) / len(widths)
                total = total + cfg.align_weight * loss
            if "contrastive" in prep:
                rows, cols, labels, mask = prep["contrastive"]
                scores = docs.scores(s[rows], w, cols).masked_fill(mask, float("-inf"))
                loss = self.contrastive(scores, labels)
                parts["contrastive"] = parts.get("contrastive", 0.0) + float(loss.detach()) / len(widths)
                total = total + cfg.contrastive_weight * loss
            return total

        loss = MatryoshkaLoss(widths)(at_width)
        return loss, parts
