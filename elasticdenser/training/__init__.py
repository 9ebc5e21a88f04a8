"""Elastic optimisation: every query operating point trained on shared weights against fixed documents.

- :mod:`.config`: :class:`~.config.TrainConfig` (YAML/TOML, validated).
- :mod:`.sampling`: which points a step trains (sandwich / fixed list) and the LR schedule.
- :mod:`.data`: training questions, the leakage guard and the example stream.
- :mod:`.distributed`: the few collectives training needs (``torchrun``: gloo on CPU, NCCL on GPU).
- :mod:`.documents`: the document tower's fixed embeddings, encoded once and cached.
- :mod:`.checkpoint`: save / resume.
- :mod:`.losses`: the losses, one job each.
- :mod:`.objective`: how the losses combine for one point of one micro-batch.
- :mod:`.loop`: :func:`~.loop.train`, the training loop.
- :mod:`.joint`: the optional first stage that trains both towers together.
- :mod:`.stage`: the training stage of ``elasticdenser pipeline``.
"""
