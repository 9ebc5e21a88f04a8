"""Write a :class:`Collection` out as a BEIR folder or as plain JSON lines + TREC qrels.

Why: other toolkits (BEIR, Pyserini, ranx) read these layouts, and an exported BEIR folder
loads back through :func:`elasticdenser.data.load_beir_folder` unchanged (round trip tested).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Union

from tqdm.auto import tqdm

from elasticdenser.atomic import atomic_path
from elasticdenser.data.types import Collection
from elasticdenser.errors import InvalidInputError

__all__ = ["FORMATS", "export_collection"]

FORMATS = ("beir", "jsonl")


def _write_jsonl(path: Path, records) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def export_collection(collection: Collection, out_dir: Union[str, Path], fmt: str = "beir") -> Dict[str, int]:
    """Export ``collection`` to ``out_dir``; returns the number of records written per file.

    ``beir``: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
    ``text``, ``metadata.answers``; train queries too), ``qrels/test.tsv`` and, when the collection
    has training positives, ``qrels/train.tsv``.
    ``jsonl``: ``corpus.jsonl``, ``queries.jsonl`` (``id``, ``text``, ``answers``),
    ``train_queries.jsonl``, ``qrels.trec`` (``qid 0 docid grade``).
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}: expected one of {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, int] = {}
    docs = tqdm(collection.corpus, total=len(collection.corpus), desc="export corpus", disable=None, leave=False)
    if fmt == "beir":
        written["corpus.jsonl"] = _write_jsonl(out / "corpus.jsonl",
                                               ({"_id": d.doc_id, "title": d.title, "text": d.text} for d in docs))
        eval_ids = {q.query_id for q in collection.queries}
        clash = [q.query_id for q in collection.train_queries if q.query_id in eval_ids]
        if clash:
            raise InvalidInputError(f"{collection.name}: train and evaluation query ids collide ({clash[:5]}); "
                                    "BEIR keeps one queries.jsonl")
        queries = list(collection.queries) + list(collection.train_queries)
        written["queries.jsonl"] = _write_jsonl(out / "queries.jsonl", (
            {"_id": q.query_id, "text": q.text, "metadata": {"answers": list(q.answers)} if q.answers else {}}
            for q in queries))
        (out / "qrels").mkdir(exist_ok=True)
        splits = {"test": collection.qrels}
        if collection.train_positives:
            splits["train"] = {qid: {d: 1 for d in docs_} for qid, docs_ in collection.train_positives.items()}
        for split, qrels in splits.items():
            with atomic_path(out / "qrels" / f"{split}.tsv") as tmp, open(tmp, "w", encoding="utf-8") as handle:
                handle.write("query-id\tcorpus-id\tscore\n")
                n = 0
                for qid, judged in qrels.items():
                    for doc_id, grade in judged.items():
                        handle.write(f"{qid}\t{doc_id}\t{grade}\n")
                        n += 1
            written[f"qrels/{split}.tsv"] = n
    else:
        written["corpus.jsonl"] = _write_jsonl(out / "corpus.jsonl",
                                               ({"id": d.doc_id, "title": d.title, "text": d.text} for d in docs))
        for name, queries in (("queries.jsonl", collection.queries), ("train_queries.jsonl", collection.train_queries)):
            if queries or name == "queries.jsonl":
                written[name] = _write_jsonl(out / name, (
                    {"id": q.query_id, "text": q.text, "answers": list(q.answers),
                     **({"positives": collection.train_positives.get(q.query_id, [])} if name.startswith("train") else {})}
                    for q in queries))
        with atomic_path(out / "qrels.trec") as tmp, open(tmp, "w", encoding="utf-8") as handle:
            n = 0
            for qid, judged in collection.qrels.items():
                for doc_id, grade in judged.items():
                    handle.write(f"{qid} 0 {doc_id} {grade}\n")
                    n += 1
        written["qrels.trec"] = n
    return written
