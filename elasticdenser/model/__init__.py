"""The elastic model: one BERT-family checkpoint, many nested operating points.

- :mod:`.loading`: reading a checkpoint directory (HF / sentence-transformers layouts, the elastic config).
- :mod:`.functional`: the building blocks every path shares (attention bias, pooling).
- :mod:`.encoder`: :class:`~.encoder.ElasticEncoder`, the sliced forward and ``encode``.
- :mod:`.reorder`: importance reordering of heads / neurons and the layer order of each depth.
- :mod:`.materialized`: one point as a standalone module with physically smaller weights.
- :mod:`.fastpath`: the serving backends (ONNX Runtime, int8, TorchScript) over materialised points.
- :mod:`.export`: one point as a standalone artefact (``torch.export`` or ONNX).

Nothing is imported here, so importing a submodule does not load torch before it needs to.
"""
