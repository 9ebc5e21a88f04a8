"""The optional joint stage: both towers (shared weights) trained contrastively at the full point
before the document tower is frozen (``mode: joint``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List

import torch

from elasticdenser.errors import InvalidInputError
from elasticdenser.training.config import TrainConfig
from elasticdenser.training.data import TrainingData
from elasticdenser.training.distributed import Dist, allreduce_gradients
from elasticdenser.training.documents import doc_cache_key, encode_documents
from elasticdenser.training.losses import ContrastiveLoss, FixedDocuments
from elasticdenser.training.optim import adamw
from elasticdenser.training.sampling import lr_lambda

log = logging.getLogger(__name__)

__all__ = ["joint_stage"]




def joint_stage(encoder, data: TrainingData, config: TrainConfig, dist: Dist, cache_dir: Path) -> None:
    """Siamese contrastive training of the full model (query and document tower share weights).

    In-batch negatives (the other queries' positives) + hard negatives (mined
    with the starting model over the corpus). Needs labelled examples (DPR-style positives).
    """
    labelled = [i for i, ex in enumerate(data.examples) if ex.positives]
    if not labelled:
        raise InvalidInputError(
            f"mode 'joint' needs training questions with positives; {data.collection_name} has none "
            "(use a DPR-style collection with a train split, or mode 'frozen')"
        )
    # mine hard negatives once with the starting full model
    key = doc_cache_key(encoder, config, len(data.doc_texts), "joint-start")
    doc_emb = encode_documents(encoder, data.doc_texts, config, cache_dir, key, dist)
    docs = FixedDocuments(doc_emb, normalize=encoder.normalize)
    texts = [data.examples[i].text for i in labelled]
    q = torch.from_numpy(encoder.encode(texts, None, batch_size=64, max_length=config.query_max_length))
    ranked = (q @ docs.at(docs.hidden).T).topk(min(len(docs), config.hard_negatives + 8), dim=-1).indices.tolist()
    mined = {}
    for i, r in zip(labelled, ranked):
        ex = data.examples[i]
        negs = [d for d in r if d not in ex.positives]
        mined[i] = negs[: max(1, config.hard_negatives)]

    sub = TrainingData(data.doc_texts, data.doc_ids, [data.examples[i] for i in labelled])
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=config.joint_lr, weight_decay=config.weight_decay)
    warm = max(1, config.joint_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, warm, config.joint_steps, "linear"))
    loss_fn = ContrastiveLoss(config.contrastive_temperature)
    full = encoder.space.full
    bar = None
    if config.progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.joint_steps, desc="joint (both towers, full point)", unit="step")
    for step in range(config.joint_steps):
        encoder.train(config.dropout)
        optimizer.zero_grad(set_to_none=True)
        idx = sub.batch_indices(step, config.joint_batch_size, dist.rank, dist.world, config.seed + 1)
        exs = [sub.examples[i] for i in idx]
        columns: List[int] = []
        col_of: Dict[int, int] = {}
        for ex in exs:
            d = ex.positives[0]
            if d not in col_of:
                col_of[d] = len(columns)
                columns.append(d)
        labels = [col_of[ex.positives[0]] for ex in exs]
        for j in idx:
            for d in mined[labelled[j]]:
                if d not in col_of:
                    col_of[d] = len(columns)
                    columns.append(d)
        qb = encoder.batch_to_device(encoder.tokenize([e.text for e in exs], config.query_max_length))
        db = encoder.batch_to_device(encoder.tokenize([data.doc_texts[d] for d in columns], config.doc_max_length))
        qv = encoder(qb["input_ids"], qb["attention_mask"], full, qb.get("token_type_ids"))
        dv = encoder(db["input_ids"], db["attention_mask"], full, db.get("token_type_ids"))
        mask = torch.zeros(len(exs), len(columns), dtype=torch.bool)
        for r, ex in enumerate(exs):
            for d in ex.positives[1:]:
                if d in col_of and col_of[d] != labels[r]:
                    mask[r, col_of[d]] = True
        loss = loss_fn((qv @ dv.T).masked_fill(mask.to(qv.device), float("-inf")), torch.tensor(labels, device=qv.device))
        loss.backward()
        allreduce_gradients(params, dist)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
    if bar is not None:
        bar.close()
    encoder.eval()
