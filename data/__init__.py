"""Datasets: ir_datasets ids, local formats, and the named sample collections."""
from elasticdenser.data.types import Collection, Corpus, Document, Qrels, Query

__all__ = ["Collection", "Corpus", "Document", "Qrels", "Query"]
