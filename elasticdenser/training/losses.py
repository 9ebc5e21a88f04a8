"""Small composable losses for elastic training, one job each (sentence-transformers style).

Every loss works on embeddings that are already truncated to one width; the Matryoshka wrapper
applies a loss at several widths of one pooled vector, so a point costs one forward pass.

- :class:`FixedDocuments`: the frozen document embeddings, truncated and re-normalised per width
  (what the index for width ``d`` holds; the rule is :func:`elasticdenser.operating_point.truncate`).
- :class:`ContrastiveLoss`: InfoNCE of queries against candidate documents (in-batch + hard negatives).
- :class:`ScoreDistillationLoss`: KL(teacher || student) between score distributions over candidates.
- :class:`EmbeddingAlignmentLoss`: cosine or MSE between a point's query embedding and the teacher's.
- :class:`MatryoshkaLoss`: sums an inner loss over several embedding widths.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import truncate

__all__ = ["FixedDocuments", "ContrastiveLoss", "ScoreDistillationLoss", "EmbeddingAlignmentLoss",
           "MatryoshkaLoss", "matryoshka_widths"]


class FixedDocuments:
    """Full-width document embeddings computed once by the document tower; never trained.

    ``at(width)`` returns the rows cut to ``width`` by the width rule (cached) in the query model's
    output ``basis``, i.e. exactly the vectors the FAISS index for that width holds.
    """

    def __init__(self, embeddings: Tensor, normalize: bool = True, basis: Optional[Tensor] = None):
        if embeddings.dim() != 2:
            raise InvalidInputError(f"document embeddings must be 2-D (N, hidden), got shape {tuple(embeddings.shape)}")
        self.full = embeddings.detach().float()
        self.normalize = normalize
        self.basis = basis
        self._cache: Dict[int, Tensor] = {}

    def set_basis(self, basis: Optional[Tensor]) -> None:
        """Cut in ``basis`` from now on (the query model's output basis)."""
        self.basis = basis
        self._cache.clear()

    def __len__(self) -> int:
        return self.full.shape[0]

    @property
    def hidden(self) -> int:
        return self.full.shape[1]

    def at(self, width: int) -> Tensor:
        if width not in self._cache:
            self._cache[width] = truncate(self.full, width, self.normalize, self.basis).contiguous()
        return self._cache[width]

    def scores(self, queries: Tensor, width: Optional[int] = None, candidates: Optional[Tensor] = None) -> Tensor:
        """(B, C) dot products of ``queries`` (already at ``width``) with the candidate documents."""
        width = queries.shape[-1] if width is None else width
        docs = self.at(width)
        if candidates is not None:
            docs = docs[candidates]
        return queries.float() @ docs.T


class ContrastiveLoss(nn.Module):
    """InfoNCE: cross-entropy of ``scores / temperature`` against the index of each query's positive.

    ``scores`` are (B, C) over a shared candidate list (in-batch positives of the other queries +
    hard negatives), ``labels`` (B,) the column of each query's positive.
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, scores: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(scores.float() / self.temperature, labels)


class ScoreDistillationLoss(nn.Module):
    """KL(teacher || student) of the softmax score distributions over the same candidates."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
        t = self.temperature
        log_p_student = F.log_softmax(student_scores.float() / t, dim=-1)
        log_p_teacher = F.log_softmax(teacher_scores.detach().float() / t, dim=-1)
        return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


class EmbeddingAlignmentLoss(nn.Module):
    """Pull a point's query embedding onto the teacher's at the same width: ``1 - cos`` or MSE."""

    def __init__(self, kind: str = "cosine"):
        super().__init__()
        if kind not in ("cosine", "mse"):
            raise InvalidInputError(f"alignment kind must be 'cosine' or 'mse', got {kind!r}")
        self.kind = kind

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        student, teacher = student.float(), teacher.detach().float()
        if self.kind == "cosine":
            return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        return F.mse_loss(student, teacher)


class MatryoshkaLoss(nn.Module):
    """Apply ``loss_fn(width) -> Tensor`` at each width and return the (weighted) mean.

    ``loss_fn`` receives the width and computes the loss on that width's view of the embeddings
    (the caller truncates a pooled vector computed once).
    """

    def __init__(self, widths: Sequence[int], weights: Optional[Sequence[float]] = None):
        super().__init__()
        if not widths:
            raise InvalidInputError("MatryoshkaLoss needs at least one width")
        self.widths = [int(w) for w in widths]
        self.weights = [1.0] * len(self.widths) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.widths):
            raise InvalidInputError("MatryoshkaLoss: one weight per width")

    def forward(self, loss_fn: Callable[[int], Tensor]) -> Tensor:
        total = sum(w * loss_fn(d) for d, w in zip(self.widths, self.weights))
        return total / sum(self.weights)


def matryoshka_widths(point_width: int, widths: Iterable[int], enabled: bool = True) -> list:
    """The widths a point is trained at: every configured width <= its own (always including its own)."""
    if not enabled:
        return [point_width]
    out = sorted({w for w in widths if w <= point_width} | {point_width}, reverse=True)
    return out
