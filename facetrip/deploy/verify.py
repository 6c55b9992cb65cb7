"""``facetrip verify``: are two face images the same person, by a calibrated threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facetrip.deploy.calibration import choose_threshold
from facetrip.metrics.pairs import PairIndexList, pair_distances


@dataclass(frozen=True)
class Verdict:
    """The answer for one pair: same person iff ``distance < threshold``."""

    distance: float
    threshold: float
    threshold_source: str  #: "--threshold", "best accuracy on ...", "FAR 0.001 on ..."
    metric: str
    same: bool

    def to_dict(self) -> dict:
        return asdict(self)


def distance(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    """Distance of two ``(D,)`` embeddings, computed as ``facetrip eval`` computes pair
    distances (so calibrated thresholds apply unchanged)."""
    pair = PairIndexList(np.array([0]), np.array([1]), np.array([True]), np.array([0]))
    return float(pair_distances(np.stack([a, b]).astype(np.float32), pair, metric)[0])


def verify(embedder: Any, image_a: str | Path, image_b: str | Path, far: float | None = None,
           threshold: float | None = None) -> Verdict:
    """Compare two image files with ``embedder``'s model (any model file, see
    :func:`~facetrip.deploy.embedder.load_embedder`).

    The threshold is ``threshold`` when given, else the model's calibrated one at ``far``,
    else its best-accuracy one.

    Raises:
        UserError: an image is missing or unusable; no threshold to be had.
    """
    value, source = choose_threshold(embedder.calibration, far, threshold)
    emb = embedder.embed_files([Path(image_a), Path(image_b)])
    d = distance(emb[0], emb[1], embedder.distance)
    return Verdict(d, value, source, embedder.distance, d < value)
