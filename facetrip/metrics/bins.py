"""Scoring a ``.bin`` verification set (:mod:`facetrip.data.bins`) as the published tables do.

Pair ``i`` is images ``(2 i, 2 i + 1)``; the pairs form 10 contiguous folds, fold ``k`` = pairs
``[k P / 10, (k + 1) P / 10)``, each scored with the threshold chosen on the other nine: what
:func:`~facetrip.metrics.verification.verification_metrics` does with ``folds=None``, so there
is one k-fold in facetrip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from facetrip.data.bins import BinImages, VerificationBin
from facetrip.data.transforms import Preprocess
from facetrip.errors import UserError
from facetrip.metrics.embedding import embed_all
from facetrip.metrics.pairs import PairIndexList, pair_distances
from facetrip.metrics.verification import verification_metrics

BIN_FOLDS = 10  #: the published protocol


def bin_pairs(n_pairs: int, n_folds: int = BIN_FOLDS) -> PairIndexList:
    """Pair ``i`` = images ``(2 i, 2 i + 1)``; fold ``k`` = pairs ``[k P / n, (k + 1) P / n)``
    (``issame`` all False: fill it from the set)."""
    i = np.arange(n_pairs, dtype=np.int64)
    return PairIndexList(2 * i, 2 * i + 1, np.zeros(n_pairs, bool), i * n_folds // n_pairs)


@dataclass
class BinScore:
    """A ``.bin`` scored: ``metrics`` (the fields of ``verification``, plus ``file`` and
    ``skipped_pairs``), the pairs scored and their distances ``(P',)``."""

    metrics: dict
    pairs: PairIndexList
    distances: np.ndarray


@torch.no_grad()
def embed_bin(
    model: torch.nn.Module,
    bin_set: VerificationBin,
    preprocess: Preprocess,
    device: torch.device,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels_last: bool = False,
    flip: bool = False,
    batch_size: int = 256,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (2 P, D), decoded (2 P,) bool)`` of the images of ``bin_set``: decoded
    with ``preprocess`` (in ``workers`` processes), ``batch_transform`` (the normalisation)
    on ``device``, then ``model``; an image that does not decode is not decoded."""
    loader = torch.utils.data.DataLoader(BinImages(bin_set.images, preprocess),
                                         batch_size=batch_size, num_workers=workers)
    emb, decoded = embed_all(model, loader, device, channels_last, batch_transform, flip,
                             progress)
    return emb, decoded > 0


def score_bin(bin_set: VerificationBin, emb: np.ndarray, decoded: np.ndarray,
              distance: str = "euclidean") -> BinScore:
    """Score the pairs of ``bin_set`` from its images' embeddings ``emb (2 P, D)`` (10 folds,
    :func:`verification_metrics`); pairs with an image that did not decode (``decoded``
    False) are left out and counted (``skipped_pairs``).

    Raises:
        UserError: no image of the set decoded.
    """
    pairs = bin_pairs(len(bin_set))
    keep = decoded[pairs.idx1] & decoded[pairs.idx2]
    if not keep.any():
        raise UserError(f"{bin_set.path}: none of its images decodes")
    pairs = PairIndexList(pairs.idx1[keep], pairs.idx2[keep], bin_set.issame[keep],
                          pairs.fold[keep])
    distances = pair_distances(emb, pairs, distance)
    metrics = verification_metrics(distances, pairs.issame, folds=pairs.fold)
    metrics.update(file=str(bin_set.path), skipped_pairs=int((~keep).sum()))
    return BinScore(metrics, pairs, distances)
