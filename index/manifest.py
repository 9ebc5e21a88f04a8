"""``manifest.json``: what an experiment directory holds and which model made it.

Fields: ``format``, ``package_version``, ``created``, ``model`` (``fingerprint`` = sha256 of weights
+ elastic config, ``space``, ``pooling``, ``normalize``, ``max_length``, ``output_basis`` digest or
null, ``full_point_tower`` fingerprint or null),
``collection`` (``name``, ``num_docs``), ``embeddings`` (``file``, ``width``, ``dtype``),
``widths``, ``indexes`` (``{width: {"file", "factory", "ntotal", "bytes", "build_seconds",
"normalize", "basis"}}``: ``basis`` = the output basis the rows were cut in), ``points``
(default operating points), and free-form sections other stages add (``profile``, ...).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

from elasticdenser.atomic import write_json
from elasticdenser.errors import InvalidInputError, MissingFileError, StateError

__all__ = [
    "MANIFEST",
    "FORMAT",
    "ManifestMismatchError",
    "model_section",
    "new_manifest",
    "normalizes",
    "load",
    "save",
    "update",
    "document_fingerprint",
    "check_model",
    "check_index",
]

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestMismatchError(StateError):
    """The model given does not match the one the index was built with."""


def model_section(encoder) -> Dict[str, Any]:
    space = encoder.space
    return {
        "fingerprint": encoder.fingerprint(),
        "space": {
            "num_layers": space.num_layers,
            "num_heads": space.num_heads,
            "intermediate_size": space.intermediate_size,
            "hidden_size": space.hidden_size,
        },
        "pooling": getattr(encoder, "pooling", None),
        "normalize": getattr(encoder, "normalize", None),
        "max_length": getattr(encoder, "max_length", None),
        # the query model's output basis (None: plain truncation); its indexes are cut in it
        "output_basis": getattr(encoder, "output_basis_sha", None),
        # the document tower serving the full point (None: the shared weights do)
        "full_point_tower": getattr(encoder, "full_point_tower", None),
    }


def new_manifest(encoder, collection: str, num_docs: int, dtype: str) -> Dict[str, Any]:
    import elasticdenser

    return {
        "format": FORMAT,
        "package_version": elasticdenser.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_section(encoder),
        "collection": {"name": collection, "num_docs": int(num_docs)},
        "embeddings": {"file": "embeddings.npy", "width": int(encoder.space.hidden_size), "dtype": dtype},
        "widths": [],
        "indexes": {},
        "points": [p.name for p in encoder.default_points()],
    }


def normalizes(manifest: Dict[str, Any]) -> bool:
    """Whether the experiment's model re-normalises truncated vectors (cosine) or not (dot product)."""
    value = manifest.get("model", {}).get("normalize")
    return True if value is None else bool(value)


def load(exp_dir: "str | os.PathLike") -> Dict[str, Any]:
    path = Path(exp_dir) / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"{path} not found: {exp_dir} is not an experiment directory "
                                "(build one with `elasticdenser index` or `elasticdenser pipeline`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format", FORMAT) != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise InvalidInputError(f"{path}: manifest format {found!r} is not one this release reads ({FORMAT})")
    return manifest


def save(exp_dir: "str | os.PathLike", manifest: Dict[str, Any]) -> None:
    write_json(Path(exp_dir) / MANIFEST, manifest)


def update(exp_dir: "str | os.PathLike", **sections: Any) -> Dict[str, Any]:
    """Load, set top-level ``sections``, save atomically; returns the new manifest."""
    m = load(exp_dir)
    m.update(sections)
    save(exp_dir, m)
    return m


def document_fingerprint(manifest: Dict[str, Any]) -> Optional[str]:
    """The fingerprint of the model that encoded the documents (the query model's when untrained)."""
    return (manifest.get("document_model") or manifest.get("model") or {}).get("fingerprint")


def check_model(manifest: Dict[str, Any], encoder, allow_mismatch: bool = False, role: str = "query") -> Optional[str]:
    """Refuse an encoder that is not the experiment's ``role`` model (unless ``allow_mismatch``).

    ``role="query"``: the model queries are encoded with (``model``): only that one, never the
    document tower in its place -- a trained query model's small points are what the router serves.
    ``role="document"``: the model the stored documents were encoded with (``document_model`` when
    the experiment has one, else ``model``), for re-encoding or extending the corpus.
    Returns a warning text when a mismatch was allowed, else None.
    """
    if role not in ("query", "document"):
        raise InvalidInputError(f"role must be 'query' or 'document', got {role!r}")
    want = manifest.get("model", {}).get("fingerprint") if role == "query" else document_fingerprint(manifest)
    got = encoder.fingerprint()
    if want == got:
        return None
    tower = ("; it is the experiment's document tower: open the experiment with its query model (EXP/model)"
             if role == "query" and got == manifest.get("document_model", {}).get("fingerprint") else "")
    msg = (f"model fingerprint {str(got)[:16]}... does not match the {role} model {str(want)[:16]}... of this experiment "
           f"(collection {manifest.get('collection', {}).get('name')!r}){tower}")
    if not allow_mismatch:
        raise ManifestMismatchError(msg + "; re-index with this model, or pass allow_mismatch=True "
                                    "(CLI: --allow-model-mismatch) to search anyway")
    return msg


def check_index(manifest: Dict[str, Any], width: int, encoder, name: str) -> Dict[str, Any]:
    """The manifest entry of the index for ``width`` (file ``name``), if ``encoder``'s queries can
    search it: built under the model's width rule (cosine or dot product) and, below full width,
    cut in the query model's output basis (full-width scores do not depend on the basis)."""
    info = manifest.get("indexes", {}).get(str(width), {})
    if info.get("normalize", True) != normalizes(manifest):
        rule = "cosine" if info.get("normalize", True) else "dot-product"
        raise StateError(f"{name} was built for {rule} search, which this model does not use; "
                         "rebuild it: `elasticdenser index ... --merge --force`")
    basis = getattr(encoder, "output_basis_sha", None)
    if width < encoder.space.hidden_size and info.get("basis") != basis:
        raise StateError(f"{name} was cut in output basis {(info.get('basis') or 'none')[:12]}, this query model's "
                         f"is {(basis or 'none')[:12]}: index with this model (`elasticdenser index ... --merge --model MODEL`)")
    return info
