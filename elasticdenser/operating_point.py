"""Operating points: the vocabulary every stage shares.

An operating point names one query sub-network plus one embedding width, e.g.
``L4-H8-F1024-D256``. Because heads and FFN neurons are importance-reordered once, each
point is a *prefix* of the full network, so four integers identify it completely.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

_POINT_RE = re.compile(r"^L(\d+)-H(\d+)-F(\d+)-D(\d+)$")

#: Width rule: an embedding width must be a multiple of this (and <= the hidden size).
WIDTH_MULTIPLE = 8


class InvalidOperatingPoint(ValueError):
    """A point that cannot exist in a given elastic space (or cannot be parsed)."""


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
            self.validate(OperatingPoint(l, h, f, w))
            for l in axes[0] for h in axes[1] for f in axes[2] for w in axes[3]
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


def parse_points(texts: "str | Sequence[str]") -> List[OperatingPoint]:
    """Parse a comma-separated string or a list of point names."""
    if isinstance(texts, str):
        texts = [t for t in texts.split(",") if t.strip()]
    return [OperatingPoint.parse(t) for t in texts]
