"""Training checkpoints: ``<output_dir>/checkpoints/step-N`` (weights, elastic state, optimiser,
scheduler, RNG), written under a temporary name and renamed, so a killed run resumes from the
last complete one.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from elasticdenser.atomic import atomic_dir
from elasticdenser.errors import MissingFileError
from elasticdenser.training.config import CONFIG_FILENAME, TrainConfig
from elasticdenser.training.documents import load_encoder

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "latest_checkpoint", "save_checkpoint", "load_checkpoint_encoder", "rng_state", "set_rng_state"]


STATE_FILE = "trainer_state.pt"


def latest_checkpoint(output_dir: "str | Path") -> Optional[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    if not done:
        return None
    return max(done, key=lambda p: int(p.name.split("-")[1]))


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, encoder, optimizer, scheduler, config: TrainConfig, extra: dict) -> Path:
    root = output_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    state = {
        "step": step,
        "model": {k: v.detach().cpu() for k, v in encoder.model.state_dict().items()},
        "elastic_config": encoder.elastic_config(),
        "output_basis": None if encoder.output_basis is None else encoder.output_basis.detach().cpu(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        **extra,
    }
    with atomic_dir(final) as tmp:
        torch.save(state, tmp / STATE_FILE)
        config.save(tmp / CONFIG_FILENAME)
    ckpts = sorted((p for p in root.glob("step-*") if (p / STATE_FILE).is_file()), key=lambda p: int(p.name.split("-")[1]))
    for old in ckpts[: max(0, len(ckpts) - max(1, config.keep_checkpoints))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_encoder(checkpoint: "str | Path", device: "str | torch.device" = "cpu"):
    """The query encoder saved in a checkpoint directory (``<output_dir>/checkpoints/step-N``).

    Rebuilds it from the run's starting model (``train_config.yaml`` in the checkpoint), the saved
    head/neuron permutation and the saved weights; e.g. to evaluate or export a run that was stopped.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / STATE_FILE).is_file():
        raise MissingFileError(f"{checkpoint} is not a training checkpoint (no {STATE_FILE})")
    config = TrainConfig.load(checkpoint / CONFIG_FILENAME)
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    start = config.model
    if config.mode == "joint":
        start = str(Path(config.output_dir) / "document_model")
    encoder = load_encoder(start, torch.device(device))
    encoder.load_elastic_state(state["elastic_config"], checkpoint / STATE_FILE)
    encoder.set_output_basis(state.get("output_basis"))
    encoder.model.load_state_dict(state["model"])
    points = state["elastic_config"].get("points")
    if config.points:
        encoder.set_points(config.points)
    elif points:
        encoder.set_points(points)
    encoder.eval()
    return encoder
