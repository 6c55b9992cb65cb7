"""Checkpoints: written atomically, read with ``weights_only=True``, turned back into a model.

A checkpoint is a plain dict of tensors and primitives: ``config`` (the resolved run config),
``model_spec``, ``model`` (state dict), ``val`` (the last validation metrics) and, in ``last.pt``,
the rest of the :class:`~facetrip.training.state.TrainState` (optimiser, scheduler, scaler,
epoch, batch, step, best accuracy) for resuming. ``best.pt`` holds the weights only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from facetrip.config import Config, config_from_dict, config_to_dict
from facetrip.errors import UserError
from facetrip.io import atomic_torch_save
from facetrip.model import EmbeddingNet, ModelSpec
from facetrip.training.state import TrainState

RESUME_ONLY = ("optimizer", "scheduler", "scaler")
"""Keys a weights-only checkpoint (``best.pt``) leaves out."""


def checkpoint_dict(state: TrainState, cfg: Config, val: dict | None) -> dict:
    """The checkpoint of ``state`` in run ``cfg`` with the last validation metrics ``val``."""
    return {
        "config": config_to_dict(cfg),
        "model_spec": state.model.spec.to_dict(),
        **state.state_dict(),
        "val": val,
    }


def save_checkpoint(ckpt: dict, path: str | Path, weights_only: bool = False) -> Path:
    """Write ``ckpt`` (from :func:`checkpoint_dict`) to ``path`` atomically; with
    ``weights_only`` leave out what only resuming needs."""
    if weights_only:
        ckpt = {k: v for k, v in ckpt.items() if k not in RESUME_ONLY}
    return atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a facetrip checkpoint safely (``weights_only=True``); UserError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        raise UserError(f"{path} is not a facetrip checkpoint")
    return ckpt


def model_from_checkpoint(
    ckpt: dict, device: str | torch.device = "cpu"
) -> tuple[EmbeddingNet, Config]:
    """Rebuild the network (eval mode, on ``device``) and the run config from a checkpoint."""
    model = EmbeddingNet(ModelSpec(**ckpt["model_spec"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, config_from_dict(ckpt.get("config", {}))
