"""Importance reordering: which heads, FFN neurons and layers each operating point keeps.

Every point is a *prefix* of the full network, so the order of heads and neurons decides what a
smaller point keeps. :meth:`ImportanceReordering.reorder_by_importance` sorts them by Taylor
importance once, before elastic training; :meth:`ImportanceReordering.reorder_layers` chooses the
nested layer set of each depth by greedy elimination. A mixin of :class:`ElasticEncoder`: it uses
the encoder's sliced forward (``pooled``), ``encode``, ``tokenize`` and ``truncate``.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import OperatingPoint

__all__ = ["ImportanceReordering", "greedy_layer_order", "set_greedy_layer_order"]


def greedy_layer_order(num_layers: int, log_probs: Callable[[List[int]], List[torch.Tensor]]) -> List[int]:
    """The nested layer order (most important first) that greedy backward elimination finds.

    ``log_probs(layers)`` runs the model on only ``layers`` (in order) and returns its score
    distributions (log-softmax rows). Starting from every layer, the layer whose removal moves those
    distributions least from the full model's (KL) is dropped, until one is left; the order is the
    survivors first, then the dropped layers, last dropped first, so every depth is a prefix. The
    query encoder scores queries against fixed documents, the ranker scores candidate lists.
    """
    kept = list(range(num_layers))
    target = log_probs(kept)
    dropped: List[int] = []
    while len(kept) > 1:
        def cost(layer: int) -> float:
            sub = log_probs([i for i in kept if i != layer])
            return sum(float(F.kl_div(s, t, log_target=True, reduction="sum")) for s, t in zip(sub, target))

        worst = min(kept, key=lambda i: (cost(i), i))
        kept.remove(worst)
        dropped.append(worst)
    return kept + dropped[::-1]


def set_greedy_layer_order(module: torch.nn.Module, holder, log_probs: Callable[[List[int]], List[torch.Tensor]]) -> List[int]:
    """Set ``holder.layer_order`` (an encoder's) to :func:`greedy_layer_order`, with ``module`` in
    eval mode meanwhile; on any error the order and the mode are what they were."""
    was_training, original = module.training, list(holder.layer_order)
    module.train(False)
    try:
        holder.layer_order = greedy_layer_order(holder.space.num_layers, log_probs)
    except BaseException:
        holder.layer_order = original
        raise
    finally:
        module.train(was_training)
    return list(holder.layer_order)


class ImportanceReordering:
    """Head / neuron importance and the layer order of an :class:`ElasticEncoder`."""

    def _reference_documents(self, queries: Sequence[str], documents: Sequence[str], batch_size: int,
                             max_doc_length: Optional[int], what: str) -> torch.Tensor:
        """Full-point document vectors: the fixed target that importance and layer ordering score
        queries against (the same vectors the index holds)."""
        if not queries or not documents:
            raise InvalidInputError(f"{what} needs at least one query and one document")
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
                batch = self.batch_to_device(self.tokenize(chunk, max_query_length))
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
                raise InvalidInputError(f"layer {i}: orders must be permutations of range({H}) / range({Fn})")
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
        batches = [
            self.batch_to_device(self.tokenize(list(queries[i : i + batch_size]), max_query_length))
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

        return set_greedy_layer_order(self, self, log_probs)
