"""Checkpoints: atomic writes, ``weights_only`` loads, and rebuilding a model from one.

A checkpoint is a plain dict of tensors and primitives (so ``torch.load(weights_only=True)``
can read it): ``config`` (the resolved run config), ``model_spec``, ``model`` (state dict),
and, for resuming, ``optimizer``, ``scheduler``, ``epoch``, ``step``, ``best`` and RNG states.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from facetrip.config import Config, config_from_dict
from facetrip.errors import UserError
from facetrip.model import EmbeddingNet, ModelSpec


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
