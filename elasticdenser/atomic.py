"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

The one temporary-name scheme of the package (:func:`tmp_name`: ``.<name>.tmp-<pid>``), for files
and for directories that are renamed into place (models, checkpoints).

An interrupted run can leave ``*.tmp-*`` files behind but never a file under its final name
that looks complete and is not.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

__all__ = ["tmp_name", "atomic_path", "atomic_dir", "write_bytes", "write_text", "write_json", "clean_stale_tmp"]


def tmp_name(path: "str | os.PathLike") -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed onto ``path``, on error it is removed.
    A file that is replaced keeps its permission bits (a rewrite must not make it private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` (a model, a checkpoint),
    on error it is removed. Readers never see a half-written directory under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: "str | os.PathLike", data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: "str | os.PathLike", text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: "str | os.PathLike", obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def clean_stale_tmp(folder: "str | os.PathLike", names: Optional[Iterable[str]] = None) -> int:
    """Remove temporary files that a killed run left in ``folder`` (only those of the files
    ``names``, when given: another process may be writing the others); returns how many."""
    n = 0
    wanted = None if names is None else set(names)
    for p in Path(folder).glob(".*.tmp-*"):
        if wanted is not None and p.name[1:].rsplit(".tmp-", 1)[0] not in wanted:
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n
