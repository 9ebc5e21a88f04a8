"""Operating points: the vocabulary every stage shares.

An operating point names one query sub-network plus one embedding width, e.g.
``L4-H8-F1024-D256``. Because heads and FFN neurons are importance-reordered once, each
point is a *prefix* of the full network, so four integers identify it completely.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

from elasticdenser.errors import InvalidInputError

_POINT_RE = re.compile(r"^L(\d+)-H(\d+)-F(\d+)-D(\d+)$")

#: Width rule: an embedding width must be a multiple of this (and <= the hidden size).
WIDTH_MULTIPLE = 8


class InvalidOperatingPoint(InvalidInputError):
    """A point that cannot exist in a given elastic space (or cannot be parsed)."""


__all__ = ["WIDTH_MULTIPLE", "InvalidOperatingPoint", "OperatingPoint", "PointLike", "ServingConfig", "ElasticSpace",
           "truncate", "principal_basis", "parse_points"]


@dataclass(frozen=True, order=True)
class OperatingPoint:
    layers: int
    heads: int
    ffn: int
    width: int

    @classmethod
    def parse(cls, text: "str | OperatingPoint") -> "OperatingPoint":
        if isinstance(text, OperatingPoint):
            return text
        match = _POINT_RE.match(str(text).strip())
        if not match:
            raise InvalidOperatingPoint(
                f"cannot parse operating point {text!r}: expected 'L<layers>-H<heads>-F<ffn>-D<width>', "
                "e.g. 'L3-H6-F768-D192'"
            )
        return cls(*(int(g) for g in match.groups()))

    @property
    def name(self) -> str:
        return f"L{self.layers}-H{self.heads}-F{self.ffn}-D{self.width}"

    def __str__(self) -> str:
        return self.name


#: what every API that takes a point accepts: a point, its name, or None (the API says what None means).
PointLike = Union[OperatingPoint, str, None]


@dataclass(frozen=True)
class ServingConfig:
    """What serves one batch: a query point and, optionally, a ranker point that reranks the first
    stage's top ``depth``. Named ``<query point>`` or ``<query point>+<ranker point>@<depth>``: the
    names a profile, the router and a run use for the joint configuration."""

    query: OperatingPoint
    ranker: Optional[OperatingPoint] = None
    depth: int = 0

    def __post_init__(self) -> None:
        if (self.ranker is None) != (self.depth == 0) or self.depth < 0:
            raise InvalidOperatingPoint(f"a serving configuration reranks with a ranker point at depth >= 1, or not "
                                        f"at all; got ranker {self.ranker}, depth {self.depth}")

    @classmethod
    def parse(cls, text: "str | OperatingPoint | ServingConfig") -> "ServingConfig":
        if isinstance(text, ServingConfig):
            return text
        if isinstance(text, OperatingPoint):
            return cls(text)
        query, plus, rest = str(text).strip().partition("+")
        if not plus:
            return cls(OperatingPoint.parse(query))
        ranker, at, depth = rest.partition("@")
        if not at or not depth.isdigit():
            raise InvalidOperatingPoint(f"cannot parse serving configuration {text!r}: expected "
                                        "'<query point>+<ranker point>@<depth>', e.g. 'L6-H12-F1536-D384+L3-H6-F768-D384@20'")
        return cls(OperatingPoint.parse(query), OperatingPoint.parse(ranker), int(depth))

    @property
    def name(self) -> str:
        return self.query.name if self.ranker is None else f"{self.query.name}+{self.ranker.name}@{self.depth}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ElasticSpace:
    """The set of points one encoder supports (derived from its transformer config)."""

    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_size: int

    @property
    def full(self) -> OperatingPoint:
        return OperatingPoint(self.num_layers, self.num_heads, self.intermediate_size, self.hidden_size)

    def resolve(self, point: PointLike) -> OperatingPoint:
        """The one point resolver: ``None`` or ``"full"`` -> the full point; a name is parsed; every
        point is validated against this space. (An API whose ``None`` means something else -- the
        Searcher's "routed" -- decides that before it calls this.)"""
        if point is None or (isinstance(point, str) and point.strip() == "full"):
            return self.full
        return self.validate(point)

    def validate(self, point: "OperatingPoint | str") -> OperatingPoint:
        point = OperatingPoint.parse(point)
        problems = []
        if not 1 <= point.layers <= self.num_layers:
            problems.append(f"layers must be in 1..{self.num_layers}, got {point.layers}")
        if not 1 <= point.heads <= self.num_heads:
            problems.append(f"heads must be in 1..{self.num_heads}, got {point.heads}")
        if not 1 <= point.ffn <= self.intermediate_size:
            problems.append(f"ffn must be in 1..{self.intermediate_size}, got {point.ffn}")
        if not (WIDTH_MULTIPLE <= point.width <= self.hidden_size and point.width % WIDTH_MULTIPLE == 0):
            problems.append(
                f"width must be a multiple of {WIDTH_MULTIPLE} in {WIDTH_MULTIPLE}..{self.hidden_size}, got {point.width}"
            )
        if problems:
            raise InvalidOperatingPoint(f"operating point {point.name} is invalid for {self.full.name}: " + "; ".join(problems))
        return point

    def scaled(self, depth: float, heads: float, ffn: float, width: float) -> OperatingPoint:
        """The point keeping the given fractions of each axis (rounded, at least one unit)."""
        w = max(WIDTH_MULTIPLE, int(round(self.hidden_size * width / WIDTH_MULTIPLE)) * WIDTH_MULTIPLE)
        return self.validate(
            OperatingPoint(
                max(1, round(self.num_layers * depth)),
                max(1, round(self.num_heads * heads)),
                max(1, round(self.intermediate_size * ffn)),
                min(w, self.hidden_size),
            )
        )

    def default_points(self) -> List[OperatingPoint]:
        """Full model plus three smaller points down to ~1/4 of its encoder compute.

        For all-MiniLM-L6-v2 these are L6-H12-F1536-D384, L5-H10-F1280-D384,
        L4-H8-F1024-D256 and L3-H6-F768-D192.
        """
        return [
            self.full,
            self.scaled(5 / 6, 5 / 6, 5 / 6, 1.0),
            self.scaled(4 / 6, 4 / 6, 4 / 6, 2 / 3),
            self.scaled(0.5, 0.5, 0.5, 0.5),
        ]

    def grid(
        self,
        layers: Optional[Iterable[int]] = None,
        heads: Optional[Iterable[int]] = None,
        ffn: Optional[Iterable[int]] = None,
        widths: Optional[Iterable[int]] = None,
    ) -> List[OperatingPoint]:
        """Every combination of the given per-axis values, validated, largest first.

        An axis left as ``None`` takes the values it has in :meth:`default_points`, so
        ``grid()`` crosses the default depths, head counts, FFN sizes and widths.
        """
        defaults = self.default_points()
        axes = [
            sorted(set(layers if layers is not None else (p.layers for p in defaults))),
            sorted(set(heads if heads is not None else (p.heads for p in defaults))),
            sorted(set(ffn if ffn is not None else (p.ffn for p in defaults))),
            sorted(set(widths if widths is not None else (p.width for p in defaults))),
        ]
        points = {
            self.validate(OperatingPoint(d, h, f, w))
            for d in axes[0] for h in axes[1] for f in axes[2] for w in axes[3]
        }
        return sorted(points, reverse=True)

    def widths(self, points: Iterable[OperatingPoint]) -> List[int]:
        return sorted({p.width for p in points}, reverse=True)

    def flops(self, point: OperatingPoint, seq_len: int) -> float:
        """Multiply-add FLOPs (2 per MAC) of the transformer layers for one sequence.

        Counts the dense projections and attention score/value products; embeddings,
        layer norms and pooling are negligible at these sizes and left out.
        """
        point = self.validate(point)
        head_dim = self.hidden_size // self.num_heads
        attn_dim = point.heads * head_dim
        per_layer = (
            2 * seq_len * self.hidden_size * attn_dim * 3  # Q, K, V
            + 2 * seq_len * attn_dim * self.hidden_size  # output projection
            + 2 * 2 * seq_len * seq_len * attn_dim  # scores and weighted values
            + 2 * 2 * seq_len * self.hidden_size * point.ffn  # FFN in and out
        )
        return float(per_layer * point.layers)

    def params(self, point: OperatingPoint, embedding_params: int = 0) -> int:
        """Parameters a query at ``point`` reads: ``embedding_params`` (the model's embedding tables,
        shared by every point) plus the kept slices of the kept layers (weights, biases, LayerNorms).

        The one owner of this count: reports, the profile and benchmarks all call it.
        """
        point = self.validate(point)
        h = self.hidden_size
        a = point.heads * (h // self.num_heads)
        f = point.ffn
        per_layer = 3 * (h * a + a) + (a * h + h) + (h * f + f) + (f * h + h) + 4 * h
        return int(embedding_params) + per_layer * point.layers


def truncate(vectors, width: int, normalize: bool = True, basis=None):
    """The width rule: the first ``width`` dimensions of each row, re-normalised to unit length when
    the model normalises (Matryoshka style), else left as they are (dot-product models).

    ``basis``: the model's output basis (an orthogonal ``(hidden, hidden)`` matrix, or its first
    ``width`` columns; None = the identity): rows are expressed in it before they are cut, so the
    leading dimensions are the ones that carry the most of the corpus (:func:`principal_basis`).
    Full-width inner products do not change; only what a truncation keeps does.

    The one owner of this rule: the encoder's query vectors, training's targets and every FAISS
    index are cut by it. Works on a torch tensor (differentiable) or a NumPy array (a float32 copy;
    zero rows stay zero).
    """
    width, stored = int(width), vectors.shape[-1]
    if isinstance(stored, int) and not 1 <= width <= stored:  # (a traced graph's shape is not an int)
        raise InvalidOperatingPoint(f"width {width} is out of range 1..{vectors.shape[-1]} (the stored embedding width)")
    if isinstance(vectors, np.ndarray):
        if basis is not None:
            cut = np.asarray(vectors, dtype=np.float32) @ np.asarray(basis[:, :width], dtype=np.float32)
        else:
            cut = np.asarray(vectors[..., :width], dtype=np.float32)
        if not normalize:
            return cut.copy() if basis is None else cut
        norms = np.linalg.norm(cut, axis=-1, keepdims=True)
        norms[norms == 0] = 1.0
        return cut / norms
    if basis is not None:
        import torch

        if not isinstance(basis, torch.Tensor):
            basis = torch.from_numpy(np.ascontiguousarray(basis, dtype=np.float32))
        cut = vectors @ basis[:, :width].to(device=vectors.device, dtype=vectors.dtype)
    else:
        cut = vectors[..., :width]
    if not normalize:
        return cut
    import torch.nn.functional as F

    return F.normalize(cut, p=2, dim=-1)


def principal_basis(vectors, sample: int = 200_000, seed: int = 0) -> np.ndarray:
    """An orthogonal ``(hidden, hidden)`` basis whose leading columns are the directions that carry
    the most of ``vectors`` (eigenvectors of their second-moment matrix, largest first).

    Why: a general-purpose model was not trained so that its first ``d`` dimensions summarise a
    document, so plain truncation throws away signal the corpus has; expressed in this basis, the
    first ``d`` dimensions keep the most of every row's squared norm a ``d``-dimensional linear cut
    can (PCA without centring: inner products, not distances, are what retrieval compares). Label
    free: it needs only the document vectors. Deterministic: rows are sampled with ``seed`` when
    there are more than ``sample``, and each column's sign is fixed (largest entry positive).
    """
    array = np.asarray(vectors) if not hasattr(vectors, "detach") else vectors.detach().cpu().numpy()
    if array.ndim != 2 or array.shape[0] == 0:
        raise InvalidInputError(f"principal_basis needs a non-empty (N, hidden) array, got shape {array.shape}")
    n = array.shape[0]
    if n > sample:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        array = array[rows]
    x = np.asarray(array, dtype=np.float64)
    moment = x.T @ x
    values, vecs = np.linalg.eigh(moment)
    vecs = vecs[:, np.argsort(-values, kind="stable")]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return np.ascontiguousarray(vecs * signs, dtype=np.float32)


def parse_points(texts: "str | Sequence[str]") -> List[OperatingPoint]:
    """Parse a comma-separated string or a list of point names."""
    if isinstance(texts, str):
        texts = [t for t in texts.split(",") if t.strip()]
    return [OperatingPoint.parse(t) for t in texts]
