"""Weights-only export (safetensors) and :func:`load_model`, the public way back to an
:class:`~facetrip.model.EmbeddingNet`.

A safetensors export holds the state dict, bit for bit, and in its header metadata
(``"facetrip"``: JSON) the model spec and preprocessing, so the file alone rebuilds the network.
Nothing in it is executed when it is read (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from facetrip.errors import UserError
from facetrip.model import EmbeddingNet, ModelSpec

METADATA_KEY = "facetrip"


def safetensors_bytes(model: EmbeddingNet, meta: Mapping[str, Any]) -> bytes:
    """The safetensors file of ``model``'s state dict (CPU, contiguous), with ``meta`` (JSON-
    serialisable: model spec, preprocessing) in the header under ``"facetrip"``."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={METADATA_KEY: json.dumps(dict(meta), sort_keys=True)})


def _read_safetensors(source: str | Path | bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state dict, facetrip metadata)`` of a safetensors file or its bytes."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    where = "safetensors data" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            state = load(source)
            header_len = int.from_bytes(source[:8], "little")
            header = json.loads(source[8 : 8 + header_len])
            raw_meta = (header.get("__metadata__") or {}).get(METADATA_KEY)
        else:
            with safe_open(str(source), framework="pt") as f:
                raw_meta = (f.metadata() or {}).get(METADATA_KEY)
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {where}: {str(exc).splitlines()[0]}") from None
    if raw_meta is None:
        raise UserError(f"{where} is not a facetrip export (no '{METADATA_KEY}' metadata)")
    return state, json.loads(raw_meta)


def model_from_safetensors(source: str | Path | bytes,
                           device: str | torch.device = "cpu") -> tuple[EmbeddingNet, dict]:
    """``(network in eval mode on device, its facetrip metadata)`` from a safetensors export."""
    state, meta = _read_safetensors(source)
    model = EmbeddingNet(ModelSpec(**meta["model_spec"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"weights do not fit the model spec {meta['model_spec']}: "
                        f"{str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> EmbeddingNet:
    """The :class:`~facetrip.model.EmbeddingNet` (eval mode, on ``device``) of a safetensors
    export or of a training checkpoint.

    ``model(x)``: ``(B, 3, S, S)`` float images normalised with the sidecar's mean/std ->
    ``(B, D)`` unit-norm embeddings. For embedding image files with the run's preprocessing,
    see :func:`facetrip.deploy.embedder.load_embedder` (any format).

    Raises:
        UserError: the file is missing, or is neither a facetrip safetensors export nor a
            checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    if path.suffix == ".safetensors":
        return model_from_safetensors(path, device)[0]
    from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(path), device)[0]
