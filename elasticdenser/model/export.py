"""Export one operating point as a standalone artefact.

Format: ``torch.export`` program (``model.pt2``) -- chosen because

* it needs nothing but ``torch`` to run (``torch.export.load(path).module()``): no ElasticDenser,
  no ``transformers`` model classes, no training code; the tokenizer files are saved beside it;
* it is PyTorch's supported successor to TorchScript (deprecated) and reproduces the in-package
  embeddings bit for bit on CPU (same kernels), with dynamic batch size and sequence length;
* ONNX would need the legacy TorchScript-based exporter (deprecated) or ``onnxscript`` (not a
  dependency). It is still available as ``format="onnx"`` for onnxruntime users
  (tolerance ~1e-6, different kernels).

The exported program includes pooling, truncation to the point's width and normalisation:
inputs ``input_ids, attention_mask, token_type_ids`` (int64, ``(B, S)``), output the final
``(B, width)`` float32 embedding.

Artefact directory::

    model.pt2 | model.onnx      the sub-network, physically sliced
    export_config.json          point, width, pooling, normalize, max_length, source fingerprint
    tokenizer files             (AutoTokenizer.from_pretrained(dir) works)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from elasticdenser.atomic import write_text
from elasticdenser.errors import InvalidInputError

__all__ = ["EXPORT_CONFIG_NAME", "FORMATS", "export_point", "ExportedEncoder", "load_exported"]

EXPORT_CONFIG_NAME = "export_config.json"
FORMATS = ("pt2", "onnx")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _example_inputs(encoder):
    batch = encoder.tokenize(["an example query to trace the graph", "and a second one"])
    ids = batch["input_ids"]
    mask = batch["attention_mask"]
    tt = batch.get("token_type_ids")
    if tt is None:
        tt = torch.zeros_like(ids)
    return tuple(t.to(encoder.device) for t in (ids, mask, tt))


def export_point(encoder, point, path: Union[str, os.PathLike], format: str = "pt2") -> Path:
    """Write operating point ``point`` of ``encoder`` as a standalone artefact into ``path``."""
    if format not in FORMATS:
        raise InvalidInputError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    p = encoder.resolve_point(point)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    module = encoder.materialize(p).eval()
    args = _example_inputs(encoder)
    if format == "pt2":
        batch = torch.export.Dim("batch", min=1, max=65536)
        seq = torch.export.Dim("seq", min=2, max=encoder.model.config.max_position_embeddings)
        shapes = tuple({0: batch, 1: seq} for _ in _INPUTS)
        with torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=shapes)
        torch.export.save(program, path / "model.pt2")
        filename = "model.pt2"
    else:
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path / "model.onnx"), dynamo=False, opset_version=17,
                input_names=list(_INPUTS), output_names=["embedding"],
                dynamic_axes={k: {0: "batch", 1: "seq"} for k in _INPUTS} | {"embedding": {0: "batch"}},
            )
        filename = "model.onnx"
    encoder.tokenizer.save_pretrained(path)
    config = {
        "format": format,
        "file": filename,
        "point": p.name,
        "width": p.width,
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "max_length": encoder.max_length,
        "inputs": list(_INPUTS),
        "output": "embedding (batch, width) float32, pooled, truncated, normalised if normalize",
        "source_fingerprint": encoder.fingerprint(),
    }
    write_text(path / EXPORT_CONFIG_NAME, json.dumps(config, indent=1))
    return path


class ExportedEncoder:
    """Minimal runner for an exported point: tokenizer + the exported program (no training code)."""

    def __init__(self, path: Union[str, os.PathLike]):
        from transformers import AutoTokenizer

        path = Path(path)
        with open(path / EXPORT_CONFIG_NAME, encoding="utf-8") as fh:
            self.config = json.load(fh)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.format = self.config["format"]
        self.width = int(self.config["width"])
        self.max_length = int(self.config["max_length"])
        if self.format == "pt2":
            self.module = torch.export.load(str(path / self.config["file"])).module()
            self.session = None
        else:
            import onnxruntime as ort

            self.module = None
            self.session = ort.InferenceSession(str(path / self.config["file"]), providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            b = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
            ids = b["input_ids"].astype(np.int64)
            mask = b["attention_mask"].astype(np.int64)
            tt = b.get("token_type_ids")
            tt = np.zeros_like(ids) if tt is None else tt.astype(np.int64)
            if ids.shape[1] < 2:  # the exported graph's sequence dimension starts at 2
                pad = self.tokenizer.pad_token_id or 0
                ids = np.pad(ids, ((0, 0), (0, 1)), constant_values=pad)
                mask = np.pad(mask, ((0, 0), (0, 1)))
                tt = np.pad(tt, ((0, 0), (0, 1)))
            if self.session is not None:
                emb = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt})[0]
            else:
                with torch.inference_mode():
                    emb = self.module(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt)).numpy()
            out[start : start + len(chunk)] = emb
        return out


def load_exported(path: Union[str, os.PathLike]) -> ExportedEncoder:
    return ExportedEncoder(path)
