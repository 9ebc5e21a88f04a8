"""ElasticRanker: an elastic cross-encoder that scores (query, passage) pairs.

The body is an :class:`~elasticdenser.model.encoder.ElasticEncoder` over the checkpoint's
transformer, so a ranker point runs exactly as a query point does (sliced layers, heads and FFN
neurons, importance order, layer order, materialised and ONNX fast paths) with CLS pooling and no
normalisation; the relevance logit is the checkpoint's own sequence-classification head on top:
``out(tanh(dense(CLS)))`` -- BERT's pooler + classifier, RoBERTa's classification head. A ranker
point keeps the full width (``D`` = the hidden size): there is no embedding to cut.

What loads (:func:`load_ranker_parts`):

* a Hugging Face cross-encoder directory (``*ForSequenceClassification`` with one label, the
  layout of ``cross-encoder/ms-marco-MiniLM-L-6-v2``), used as it is;
* any supported encoder checkpoint (e.g. the bundled all-MiniLM-L6-v2, sentence-transformers
  layout included) with a new, randomly initialised one-logit head (``new_head`` is then True);
* a ranker saved by :meth:`ElasticRanker.save_pretrained` (the HF files plus ``elastic_config.json``
  with ``"role": "ranker"``), which is still a standard cross-encoder directory for other tools.

Refused with a clear error: other architectures (:func:`~elasticdenser.model.loading.check_supported`),
classification heads with more than one label, and an elastic query encoder passed as a ranker.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elasticdenser.errors import InvalidInputError, MissingFileError
from elasticdenser.model.encoder import ElasticEncoder
from elasticdenser.model.functional import pool
from elasticdenser.model.loading import (
    DEFAULT_MAX_LENGTH,
    ELASTIC_CONFIG_NAME,
    UnsupportedModelError,
    check_elastic_config,
    check_supported,
    default_model_path,
    hash_weights,
    read_json,
    save_checkpoint_dir,
    sentence_transformers_layout,
)
from elasticdenser.model.reorder import set_greedy_layer_order
from elasticdenser.operating_point import ElasticSpace, OperatingPoint, PointLike

__all__ = ["RANKER_ROLE", "ElasticRanker", "load_ranker_parts", "ranker_default_points"]

#: ``role`` in the elastic config of a saved ranker (query encoders have none).
RANKER_ROLE = "ranker"


def load_ranker_parts(path: Union[str, os.PathLike, None]) -> Dict[str, Any]:
    """``model`` (a transformers ``*ForSequenceClassification`` with one label), ``tokenizer``,
    ``elastic`` (the checked elastic config or ``{}``), ``new_head`` and ``source``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path) if path is not None else Path(default_model_path())
    if not path.is_dir():
        raise MissingFileError(f"ranker model directory not found: {path}")
    elastic = check_elastic_config(read_json(path / ELASTIC_CONFIG_NAME) or {}, path / ELASTIC_CONFIG_NAME)
    if elastic and elastic.get("role") != RANKER_ROLE:
        raise InvalidInputError(f"{path} is an elastic query encoder, not a ranker; pass a cross-encoder or an "
                                "encoder checkpoint to start a ranker from")
    model_dir = Path(({} if elastic else sentence_transformers_layout(path)).get("transformer_dir", path))
    if not (model_dir / "config.json").is_file():
        raise MissingFileError(f"{model_dir} has no config.json; is it a Hugging Face checkpoint directory?")
    config = AutoConfig.from_pretrained(model_dir)
    check_supported(config, model_dir)
    cross = any(str(a).endswith("ForSequenceClassification") for a in (config.architectures or []))
    if cross and int(config.num_labels) != 1:
        raise UnsupportedModelError(
            f"{model_dir}: the classification head has {config.num_labels} labels; a ranker needs one relevance logit"
        )
    config.num_labels = 1
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a new head on an encoder checkpoint is expected, not news
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return {"model": model, "tokenizer": tokenizer, "elastic": elastic, "new_head": not cross, "source": str(path)}


def ranker_default_points(space: ElasticSpace) -> List[OperatingPoint]:
    """Full depth with all, 3/4, 1/2 and 1/4 of the heads and FFN neurons, at the full width.

    Unlike the query encoder's ladder, the ranker's smaller points keep every layer: a
    cross-encoder cut to the checkpoint's bottom layers barely learns relevance, while one cut
    in width at the same FLOPs trains close to its teacher (BENCHMARKS.md, issue 17).
    """
    return [space.scaled(1.0, f, f, 1.0) for f in (1.0, 0.75, 0.5, 0.25)]


class ElasticRanker(nn.Module):
    """Elastic cross-encoder (see module docstring)."""

    def __init__(self, model: nn.Module, tokenizer, *, max_length: Optional[int] = None,
                 elastic_config: Optional[dict] = None, source: Optional[str] = None, new_head: bool = False):
        super().__init__()
        check_supported(model.config, source or "model")
        self.hf = model
        base = getattr(model, model.base_model_prefix)
        if model.config.model_type == "bert":
            if getattr(base, "pooler", None) is None:
                raise UnsupportedModelError(f"{source or 'model'}: a BERT cross-encoder needs its pooler")
            self._dense, self._out = base.pooler.dense, model.classifier
        else:  # RoBERTa / XLM-R: classifier.dense -> tanh -> classifier.out_proj on <s>
            self._dense, self._out = model.classifier.dense, model.classifier.out_proj
        cfg = dict(elastic_config or {})
        self.encoder = ElasticEncoder(base, tokenizer, pooling="cls", normalize=False,
                                      max_length=int(max_length or cfg.get("max_length") or DEFAULT_MAX_LENGTH),
                                      elastic_config=cfg,
                                      source=source)
        if not cfg.get("points"):
            self.encoder.set_points(ranker_default_points(self.encoder.space))
        drop = getattr(model.config, "classifier_dropout", None)
        self.head_dropout = float(drop if drop is not None else getattr(model.config, "hidden_dropout_prob", 0.0) or 0.0)
        self.source = source
        self.new_head = bool(new_head)
        #: per ranker point name: the weight of the first stage's score in the reranked score
        #: (:func:`elasticdenser.rerank.interpolate`), chosen by training on held-out lists; absent = 0
        self.first_stage_weights: Dict[str, float] = {
            str(k): float(v) for k, v in (cfg.get("first_stage_weights") or {}).items()}
        self.train(False)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike, None] = None, *,
                        max_length: Optional[int] = None) -> "ElasticRanker":
        """Load a cross-encoder, a saved ranker, or an encoder checkpoint with a new head (default:
        the bundled all-MiniLM-L6-v2); see :func:`load_ranker_parts`."""
        parts = load_ranker_parts(path)
        return cls(parts["model"], parts["tokenizer"], max_length=max_length, elastic_config=parts["elastic"] or None,
                   source=parts["source"], new_head=parts["new_head"])

    # ------------------------------------------------------------------ points
    def full_width(self, point: PointLike) -> OperatingPoint:
        p = OperatingPoint.parse(point) if point is not None else self.encoder.space.full
        return OperatingPoint(p.layers, p.heads, p.ffn, self.encoder.space.hidden_size)

    def resolve_point(self, point: PointLike) -> OperatingPoint:
        """The encoder's resolver; a ranker point must keep the full width (its ``D`` is the hidden size)."""
        p = self.encoder.resolve_point(point)
        if p.width != self.encoder.space.hidden_size:
            raise InvalidInputError(f"ranker point {p} cuts the width; a ranker scores with the full width "
                                    f"(use {self.full_width(p)})")
        return p

    def default_points(self) -> List[OperatingPoint]:
        return self.encoder.default_points()

    def first_stage_weight(self, point: PointLike = None) -> float:
        """The first stage's weight when ``point`` reranks (0: the logit alone)."""
        return self.first_stage_weights.get(self.resolve_point(point).name, 0.0)

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    # ------------------------------------------------------------------ scoring
    def head(self, cls: torch.Tensor) -> torch.Tensor:
        """The relevance logit of pooled CLS vectors ``(B, hidden)`` -> ``(B,)``."""
        h = torch.tanh(F.linear(cls, self._dense.weight, self._dense.bias))
        if self.training and self.head_dropout:
            h = F.dropout(h, self.head_dropout, True)
        return F.linear(h, self._out.weight, self._out.bias).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, point: PointLike = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``(B,)`` of tokenised pairs at ``point`` (sliced weights; gradients flow)."""
        return self.logits_and_states(input_ids, attention_mask, point, token_type_ids)[0]

    def logits_and_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, point: PointLike = None,
                          token_type_ids: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B,)`` and the body's last token states ``(B, S, hidden)`` at ``point``: distillation
        matches a small point's states to the teacher's, a far denser signal than one logit per pair."""
        states = self.encoder.hidden_states(input_ids, attention_mask, self.resolve_point(point), token_type_ids)
        return self.head(pool(states, attention_mask, self.encoder.pooling)), states

    def tokenize_pairs(self, queries: Sequence[str], passages: Sequence[str], max_length: Optional[int] = None,
                       return_tensors: str = "pt"):
        return self.tokenizer(list(queries), list(passages), padding=True, truncation=True,
                              max_length=int(max_length or self.max_length), return_tensors=return_tensors)

    @torch.inference_mode()
    def score_pairs(self, pairs: Sequence[Tuple[str, str]], point: PointLike = None, batch_size: int = 32,
                    backend: Optional[str] = None, max_length: Optional[int] = None) -> np.ndarray:
        """Relevance logits (float32, input order) of ``(query, passage)`` pairs at ``point``.

        Pairs run in length-sorted batches. ``backend`` as for :meth:`ElasticEncoder.encode`: the
        fast backends run the body's CLS vector (the same cached runners as query points) and this
        head on top; training mode or a non-CPU device falls back to the sliced eager path.
        """
        p = self.resolve_point(point)
        out = np.zeros(len(pairs), dtype=np.float32)
        if not len(pairs):
            return out
        for i, (q, d) in enumerate(pairs):
            if not isinstance(q, str) or not isinstance(d, str):
                raise InvalidInputError(f"pair {i}: query and passage must be strings, got {type(q).__name__}, "
                                        f"{type(d).__name__}")
        runner = None
        name = backend or "eager"
        if str(name).lower() != "eager" and not self.training and self.encoder.device.type == "cpu":
            from elasticdenser.model import fastpath

            resolved = fastpath.resolve_backend(name)
            if resolved != "eager":
                runner = fastpath.get_runner(self.encoder, p, resolved)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        bs = max(1, int(batch_size))
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            b = self.tokenize_pairs([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], max_length)
            if runner is not None:
                cls = torch.from_numpy(runner(b["input_ids"], b["attention_mask"], b.get("token_type_ids")))
                out[idx] = self.head(cls.to(self._dense.weight.dtype)).float().numpy()
            else:
                b = self.encoder.batch_to_device(b)
                out[idx] = self(b["input_ids"], b["attention_mask"], p, b.get("token_type_ids")).float().cpu().numpy()
        return out

    def score(self, query: str, passages: Sequence[str], point: PointLike = None, **kwargs: Any) -> np.ndarray:
        """Logits of one query against each passage (see :meth:`score_pairs`)."""
        return self.score_pairs([(query, d) for d in passages], point, **kwargs)

    # ------------------------------------------------------------------ importance order
    def reorder_by_importance(self, lists: Sequence[Tuple[str, Sequence[str], int]]) -> dict:
        """Reorder heads and FFN neurons of every layer, most important first, so that every ranker
        point is a prefix of the best heads and neurons (as :meth:`ElasticEncoder.reorder_by_importance`
        does for query points). Importance: Taylor ``|d loss / d gate|`` per pair, summed, where the
        loss is the full point's listwise cross-entropy on labelled lists ``(query, passages, index of
        the positive)``. The full point's scores are unchanged (a permutation)."""
        enc = self.encoder
        L, H, Fn = enc.space.num_layers, enc.space.num_heads, enc.space.intermediate_size
        head_scores = torch.zeros(L, H, dtype=torch.float64)
        ffn_scores = torch.zeros(L, Fn, dtype=torch.float64)
        was_training = self.training
        self.train(False)
        params = list(self.hf.parameters())
        flags = [q.requires_grad for q in params]
        for q in params:
            q.requires_grad_(False)
        try:
            for query, passages, label in lists:
                b = enc.batch_to_device(self.tokenize_pairs([query] * len(passages), passages))
                n = len(passages)
                hg = [torch.ones(n, H, device=enc.device, requires_grad=True) for _ in range(L)]
                fg = [torch.ones(n, Fn, device=enc.device, requires_grad=True) for _ in range(L)]
                with torch.enable_grad():
                    cls = enc.pooled(b["input_ids"], b["attention_mask"], None, b.get("token_type_ids"),
                                     head_gates=hg, ffn_gates=fg)
                    loss = F.cross_entropy(self.head(cls)[None], torch.tensor([int(label)], device=enc.device))
                    grads = torch.autograd.grad(loss, hg + fg)
                for i in range(L):
                    head_scores[i] += grads[i].abs().sum(0).double().cpu()
                    ffn_scores[i] += grads[L + i].abs().sum(0).double().cpu()
        finally:
            for q, flag in zip(params, flags):
                q.requires_grad_(flag)
            self.train(was_training)
        enc.apply_permutation([sorted(range(H), key=lambda j, s=s: (-float(s[j]), j)) for s in head_scores],
                              [torch.argsort(-s, stable=True).tolist() for s in ffn_scores])
        enc.reordered = True
        enc.importance_info = {"method": "taylor |d loss / d gate| per pair, summed; loss = the full point's listwise "
                               "cross-entropy on labelled lists", "num_lists": len(lists)}
        return dict(enc.importance_info)

    @torch.no_grad()
    def reorder_layers(self, lists: Sequence[Tuple[str, Sequence[str], int]], lists_per_batch: int = 8) -> List[int]:
        """Choose the layers each depth keeps (sets the encoder's ``layer_order``); run once before the
        elastic phase. Bottom-up truncation feeds the head a layer it was never trained on; greedy
        elimination (:func:`~elasticdenser.model.reorder.greedy_layer_order`) instead keeps the
        layers whose removal moves the full point's score distribution over each candidate list
        least. That predicts the untrained sub-network, not the trained one: on squad the small
        depths trained worse with it (BENCHMARKS.md), so training uses it only when asked
        (``RankerConfig.reorder_layers``). ``lists`` as for :meth:`reorder_by_importance` (labels unused)."""
        enc = self.encoder
        if not lists:
            raise InvalidInputError("layer ordering needs at least one candidate list")
        step = max(1, int(lists_per_batch))
        batches = []
        for i in range(0, len(lists), step):
            chunk = lists[i : i + step]
            b = self.tokenize_pairs([q for q, ps, _ in chunk for _ in ps], [p for _, ps, _ in chunk for p in ps])
            batches.append((enc.batch_to_device(b), [len(ps) for _, ps, _ in chunk]))
        full = enc.space.full

        def log_probs(layers: List[int]) -> List[torch.Tensor]:
            enc.layer_order = layers + [i for i in range(enc.space.num_layers) if i not in layers]
            point = OperatingPoint(len(layers), full.heads, full.ffn, enc.space.hidden_size)
            out = []
            for b, sizes in batches:
                logits = self(b["input_ids"], b["attention_mask"], point, b.get("token_type_ids")).float()
                out.extend(F.log_softmax(s, -1) for s in logits.split(sizes))
            return out

        return set_greedy_layer_order(self, enc, log_probs)

    # ------------------------------------------------------------------ persistence
    def elastic_config(self) -> dict:
        weights = {"first_stage_weights": dict(self.first_stage_weights)} if self.first_stage_weights else {}
        return {**self.encoder.elastic_config(), "role": RANKER_ROLE, **weights}

    def save_pretrained(self, path: Union[str, os.PathLike]) -> Path:
        """The HF cross-encoder files (loadable by any tool) plus ``elastic_config.json``."""
        return save_checkpoint_dir(path, self.hf, self.tokenizer, self.elastic_config())

    def fingerprint(self) -> str:
        """sha256 of every weight (body and head) plus the elastic config."""
        return hash_weights(hashlib.sha256(json.dumps(self.elastic_config(), sort_keys=True).encode()),
                            self.hf.state_dict())
