"""facetrip: triplet-loss face embeddings, end to end.

The command line, in workflow order: ``synth`` (procedural faces), ``cache`` (decode once),
``align`` (photos -> aligned face crops), ``train``, ``eval`` (LFW protocols, baselines,
report), ``export`` (TorchScript, ONNX, safetensors, with a calibrated sidecar), ``embed``,
``verify`` (same person?), ``enroll`` and ``identify`` (who is this?). ``facetrip --help``
and each command's ``--help`` say more.

In Python, ``facetrip.load_model(path)`` rebuilds the network of a safetensors export (or a
checkpoint); ``facetrip.load_embedder(path)`` opens any model file facetrip makes for embedding
images; ``facetrip.align(images)`` returns aligned face crops (the ``align`` extra).
All import torch on first use, not on ``import facetrip``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from facetrip.version import __version__

if TYPE_CHECKING:
    import numpy as np

    from facetrip.deploy.embedder import Embedder
    from facetrip.model import EmbeddingNet

__all__ = ["__version__", "align", "load_embedder", "load_model"]


def load_model(path: str | Path, device: Any = "cpu") -> EmbeddingNet:
    """The :class:`~facetrip.model.EmbeddingNet` (eval mode) of a safetensors export or a
    checkpoint: ``model(x)`` maps normalised ``(B, 3, S, S)`` images to ``(B, D)`` unit-norm
    embeddings. See :func:`facetrip.deploy.safetensors_io.load_model`."""
    from facetrip.deploy.safetensors_io import load_model as _load_model

    return _load_model(path, device)


def load_embedder(path: str | Path, device: Any = "cpu") -> Embedder:
    """Any model file facetrip makes (checkpoint, TorchScript, ONNX, safetensors), ready to
    embed image files with its own preprocessing. See
    :func:`facetrip.deploy.embedder.load_embedder`."""
    from facetrip.deploy.embedder import load_embedder as _load_embedder

    return _load_embedder(path, device)


def align(images: Any, size: int = 112, face: str = "largest", min_face: float = 0.1
          ) -> list[np.ndarray | None]:
    """Aligned face crops of ``images`` (a list of paths, PIL images, (H, W, 3) uint8 arrays or
    (3, H, W) uint8 tensors): one (size, size, 3) uint8 RGB array per image, the face warped
    onto the five-point 112 x 112 template scaled to ``size``; ``None`` where no face was
    found. ``face``: which one when there are several (``largest`` or ``center``). See
    :func:`facetrip.data.align.align`."""
    from facetrip.alignment.crop import AlignSpec
    from facetrip.data.align import align as _align

    return _align(images, AlignSpec(size=size, face=face, min_face=min_face))
