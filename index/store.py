"""The embedding store: one ``.npy`` file, memory-mapped, float32 or float16.

Rows are document positions (the order of ``doc_ids.txt``), columns the full-width embedding.
Nothing is ever loaded whole: readers get memory-mapped views and the index builders consume
it in row blocks, so a 21M x 384 store (32 GB float32, 16 GB float16) never sits in RAM.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from elasticdenser.errors import InvalidInputError, MissingFileError, StateError
from elasticdenser.operating_point import truncate

__all__ = ["DTYPES", "check_dtype", "EmbeddingStore"]

DTYPES = {"float32": np.float32, "float16": np.float16}


def check_dtype(dtype: str) -> np.dtype:
    if str(dtype) not in DTYPES:
        raise InvalidInputError(f"embedding dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return np.dtype(DTYPES[str(dtype)])


class EmbeddingStore:
    """A memory-mapped (N, dim) matrix in ``np.save`` format (plain ``np.load`` opens it)."""

    def __init__(self, path: "str | os.PathLike", array: np.ndarray):
        self.path = Path(path)
        self.array = array

    @classmethod
    def create(cls, path: "str | os.PathLike", num_rows: int, dim: int, dtype: str = "float32") -> "EmbeddingStore":
        """A new writable store (the caller writes into a temporary path and renames it)."""
        arr = np.lib.format.open_memmap(str(path), mode="w+", dtype=check_dtype(dtype), shape=(int(num_rows), int(dim)))
        return cls(path, arr)

    @classmethod
    def open(cls, path: "str | os.PathLike", mode: str = "r") -> "EmbeddingStore":
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"embedding store {path} not found (run `elasticdenser index` first)")
        try:
            array = np.load(str(path), mmap_mode=mode)
        except (OSError, ValueError, EOFError) as exc:
            raise StateError(f"{path} is not a readable embedding store (truncated or damaged: {exc}); "
                             "re-run `elasticdenser index` to rebuild it") from None
        if array.ndim != 2:
            raise StateError(f"{path} holds an array of shape {array.shape}, not (documents, width)")
        return cls(path, array)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.array.dtype)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def flush(self) -> None:
        if hasattr(self.array, "flush"):
            self.array.flush()

    def blocks(self, block_rows: int = 65536, width: Optional[int] = None, start: int = 0,
               end: Optional[int] = None, normalize: bool = True,
               basis: Optional[np.ndarray] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(first_row, float32 block)``; with ``width``, cut by the width rule
        (:func:`~elasticdenser.operating_point.truncate`; ``normalize`` and ``basis`` = the query model's)."""
        end = len(self) if end is None else end
        for lo in range(start, end, block_rows):
            hi = min(lo + block_rows, end)
            block = np.asarray(self.array[lo:hi], dtype=np.float32)
            yield lo, (truncate(block, width, normalize, basis) if width else block)

    def rows(self, positions: np.ndarray, width: Optional[int] = None, normalize: bool = True,
             basis: Optional[np.ndarray] = None) -> np.ndarray:
        """Selected rows (sorted internally for mmap locality), as float32."""
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        out[order] = self.array[positions[order]]
        return truncate(out, width, normalize, basis) if width else out
