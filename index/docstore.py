"""Passage text on disk: ``docs.jsonl`` (one ``{"id","title","text"}`` per line, in embedding-row
order) plus ``docs.offsets.npy`` (int64 byte offsets, N+1 of them).

The Searcher looks passages up by row with ``os.pread``: O(1) per hit, no Python objects for the
whole corpus, and safe to call from many threads at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, List

import numpy as np

from elasticdenser.atomic import atomic_path
from elasticdenser.data.types import Document, check_id
from elasticdenser.errors import MissingFileError

__all__ = ["DOCS", "OFFSETS", "doc_line", "write_docstore", "DocStore"]

DOCS = "docs.jsonl"
OFFSETS = "docs.offsets.npy"


def doc_line(doc: Document) -> bytes:
    check_id(doc.doc_id, "corpus")  # the last line of defence: doc_ids.txt holds one id per line
    return (json.dumps({"id": doc.doc_id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n").encode("utf-8")


def write_docstore(exp_dir: "str | os.PathLike", lines: Iterable[bytes]) -> int:
    """Write ``docs.jsonl`` + offsets atomically from already-serialised lines; returns the count."""
    exp_dir = Path(exp_dir)
    offsets: List[int] = [0]
    with atomic_path(exp_dir / DOCS) as tmp:
        with open(tmp, "wb") as fh:
            for line in lines:
                fh.write(line)
                offsets.append(offsets[-1] + len(line))
    with atomic_path(exp_dir / OFFSETS) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(offsets, dtype=np.int64))
    return len(offsets) - 1


class DocStore:
    def __init__(self, exp_dir: "str | os.PathLike"):
        exp_dir = Path(exp_dir)
        for name in (DOCS, OFFSETS):
            if not (exp_dir / name).is_file():
                raise MissingFileError(f"{exp_dir / name} not found: the experiment has no passage text store")
        self.offsets = np.load(str(exp_dir / OFFSETS), mmap_mode="r")
        self._fd = os.open(str(exp_dir / DOCS), os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, position: int) -> Document:
        lo, hi = int(self.offsets[position]), int(self.offsets[position + 1])
        rec = json.loads(os.pread(self._fd, hi - lo, lo).decode("utf-8"))
        return Document(rec["id"], rec.get("title", ""), rec.get("text", ""))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
