"""Materialised operating points and the caches that serve them.

:class:`MaterializedEncoder` is one point as a plain module with physically sliced, contiguous
weights (fused QKV): what serving runs for every point but the full one, and what the fast paths
export. :class:`ServingCache` (a mixin of :class:`ElasticEncoder`) keeps those modules, and the fast
paths' runners, valid: every cache entry is keyed by :meth:`ServingCache.state_version`, which moves
with any in-place weight update, a ``.to()`` / ``.half()`` or a new layer order.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from elasticdenser.model.functional import attention_bias, pool
from elasticdenser.operating_point import OperatingPoint, truncate

if TYPE_CHECKING:  # pragma: no cover
    from elasticdenser.model.encoder import ElasticEncoder

__all__ = ["MaterializedEncoder", "ServingCache"]


class ServingCache:
    """Per-encoder caches of compiled / materialised points, invalidated by weight changes."""

    def serving_cache(self, name: str) -> Dict[Any, Any]:
        """The cache dict ``name`` of this encoder (kept outside ``nn.Module`` state, so it is never
        saved, copied into a state dict, or moved by ``.to()``)."""
        return self.__dict__.setdefault("_caches", {}).setdefault(name, {})

    def state_version(self) -> tuple:
        """Changes whenever a served sub-network would: any in-place weight update, or the layer order.

        Called on every encode, so it is kept cheap (it was a visible share of a small point's query):
        the parameter list is cached, and refreshed, with a new epoch, when ``model`` is replaced;
        the weights count as one number, the sum of their version counters, which only grow, so any
        in-place update moves it. ``_apply`` (``.to()``, ``.half()``, ...) may swap parameters or
        their data without a version bump, so it drops the list and counts as a change of its own.
        """
        params = self.__dict__.get("_param_list")
        if params is None or params[0] is not self.model:
            self.__dict__["_param_epoch"] = self.__dict__.get("_param_epoch", 0) + 1
            params = self.__dict__["_param_list"] = (self.model, list(self.model.parameters()))
        d = self.__dict__
        tower = None if getattr(self, "full_tower", None) is None else (id(self.full_tower), self.full_tower.state_version())
        return (tuple(self.layer_order), d.get("_apply_epoch", 0), d.get("_basis_version", 0), d["_param_epoch"], tower,
                sum(q._version for q in params[1]))

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_param_list", None)
        self.__dict__["_apply_epoch"] = self.__dict__.get("_apply_epoch", 0) + 1
        return super()._apply(fn, *args, **kwargs)

    def serving_module(self, point: OperatingPoint) -> Optional["MaterializedEncoder"]:
        """Cached materialised module for ``point`` (None for the full point: slicing is a no-op there).

        The cache key includes every parameter's version counter and the layer order, so any
        in-place update (optimizer step, ``load_state_dict``, reordering) rebuilds the module on
        next use. Embeddings are shared with the encoder, not copied.
        """
        if point == self.space.full:
            return None
        cache = self.serving_cache("materialized")
        key = (point, self.pooling, self.normalize, self.state_version())
        entry = cache.get(point)
        if entry is None or entry[0] != key:
            module = MaterializedEncoder.from_elastic(self, point, self.output_basis, share_embeddings=True)
            cache[point] = entry = (key, module)
        return entry[1]


class _Embeddings(nn.Module):
    """Word + position + token-type embeddings and LayerNorm (BERT, or RoBERTa position ids)."""

    def __init__(self, hf_embeddings: nn.Module, roberta_padding_idx: Optional[int], share: bool = False):
        super().__init__()
        dup = (lambda m: m) if share else copy.deepcopy
        self.word = dup(hf_embeddings.word_embeddings)
        self.position = dup(hf_embeddings.position_embeddings)
        self.token_type = dup(hf_embeddings.token_type_embeddings)
        self.norm = dup(hf_embeddings.LayerNorm)
        self.roberta_padding_idx = roberta_padding_idx

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        S = input_ids.shape[1]
        if self.roberta_padding_idx is not None:
            nonpad = input_ids.ne(self.roberta_padding_idx).to(torch.long)
            pos = torch.cumsum(nonpad, dim=1) * nonpad + self.roberta_padding_idx
        else:
            pos = torch.arange(S, device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(pos)
        return self.norm(x)


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module, heads: int, head_dim: int, ffn: int, act: nn.Module):
        super().__init__()
        a = heads * head_dim
        sa, ao = layer.attention.self, layer.attention.output
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(sa.query.in_features, 3 * a)
        self.qkv.weight.copy_(torch.cat([sa.query.weight[:a], sa.key.weight[:a], sa.value.weight[:a]]))
        self.qkv.bias.copy_(torch.cat([sa.query.bias[:a], sa.key.bias[:a], sa.value.bias[:a]]))
        self.attn_out = nn.Linear(a, ao.dense.out_features)
        self.attn_out.weight.copy_(ao.dense.weight[:, :a])
        self.attn_out.bias.copy_(ao.dense.bias)
        self.norm1 = copy.deepcopy(ao.LayerNorm)
        self.ffn_in = nn.Linear(layer.intermediate.dense.in_features, ffn)
        self.ffn_in.weight.copy_(layer.intermediate.dense.weight[:ffn])
        self.ffn_in.bias.copy_(layer.intermediate.dense.bias[:ffn])
        self.ffn_out = nn.Linear(ffn, layer.output.dense.out_features)
        self.ffn_out.weight.copy_(layer.output.dense.weight[:, :ffn])
        self.ffn_out.bias.copy_(layer.output.dense.bias)
        self.norm2 = copy.deepcopy(layer.output.LayerNorm)
        self.act = act

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        B, S = x.shape[0], x.shape[1]
        qkv = self.qkv(x).view(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = qkv[0]
        ctx = F.scaled_dot_product_attention(q, qkv[1], qkv[2], attn_mask=None if bias is None else bias.to(q.dtype))
        ctx = ctx.transpose(1, 2).reshape(B, S, self.heads * self.head_dim)
        x = self.norm1(self.attn_out(ctx) + x)
        return self.norm2(self.ffn_out(self.act(self.ffn_in(x))) + x)


class MaterializedEncoder(nn.Module):
    """One operating point as a plain, standalone PyTorch module with physically smaller weights.

    ``forward(input_ids, attention_mask, token_type_ids=None)`` returns the point's final
    embedding (pooled, truncated to the point's width, normalised if the model normalises).
    Q, K and V are fused into one matrix multiplication.
    """

    def __init__(self):
        super().__init__()

    @classmethod
    @torch.no_grad()
    def from_elastic(cls, enc: "ElasticEncoder", point: OperatingPoint, basis: Optional[torch.Tensor],
                     share_embeddings: bool = False) -> "MaterializedEncoder":
        """Copy ``point`` of ``enc``, its vectors expressed in ``basis`` (the query model's, also when
        ``enc`` is the tower serving its full point); ``share_embeddings``: reuse ``enc``'s embedding modules."""
        self = cls()
        from transformers.activations import ACT2FN

        act = ACT2FN[enc.hidden_act]
        pad = enc.model.config.pad_token_id if enc.model.config.model_type != "bert" else None
        self.embeddings = _Embeddings(enc.model.embeddings, pad, share=share_embeddings)
        self.layers = nn.ModuleList(
            _Layer(enc.model.encoder.layer[i], point.heads, enc.head_dim, point.ffn, act) for i in enc.layers_of(point.layers)
        )
        self.point_name = point.name
        self.width = point.width
        self.pooling = enc.pooling
        self.normalize = enc.normalize
        self.register_buffer("basis", None if basis is None else basis[:, :point.width].clone())
        self.to(enc.device)
        self.eval()
        return self

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        bias = attention_bias(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return truncate(pool(x, attention_mask, self.pooling), self.width, self.normalize, self.basis)
