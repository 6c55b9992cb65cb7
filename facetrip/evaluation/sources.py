"""Where an evaluation's inputs come from: the pairs (a file or drawn), the images (decoded
from their files or read from a decoded cache) and their embeddings. Shared by ``facetrip
eval`` (:mod:`facetrip.evaluation.evaluate`) and the export's calibration."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facetrip.data.cache import DecodedCache
from facetrip.data.dataset import CachedFaceDataset, FaceDataset
from facetrip.data.index import ImageFolderIndex
from facetrip.data.transforms import FaceTransform
from facetrip.errors import UserError
from facetrip.evaluation.baselines import Eigenfaces, GreyPixels
from facetrip.metrics.embedding import embed_all
from facetrip.metrics.pairs import PairIndexList, generate_pairs, read_pairs, resolve_pairs

EIGENFACES_COMPONENTS = 100  #: principal axes kept by the eigenfaces baseline


def load_pairs(
    index: ImageFolderIndex, pairs_file: str | Path | None, folds: int, pairs_per_fold: int,
    seed: int,
) -> PairIndexList:
    """Pairs from an LFW-format file (folds as given) or drawn from ``index`` with ``seed``."""
    if pairs_file is not None:
        return pairs_from_file(pairs_file, index.paths)
    return draw_pairs(index.labels, folds, pairs_per_fold, seed, str(index.root))


def pairs_from_file(pairs_file: str | Path, paths: list[str]) -> PairIndexList:
    """Read an LFW-format pairs file and resolve it against item ``paths`` (UserError if not)."""
    try:
        pairs = read_pairs(pairs_file)
        idx1, idx2 = resolve_pairs(pairs, paths)
    except (OSError, ValueError) as exc:
        raise UserError(f"pairs file {pairs_file}: {exc}") from None
    return PairIndexList(idx1, idx2, pairs.issame, pairs.fold)


def draw_pairs(labels: np.ndarray, folds: int, pairs_per_fold: int, seed: int, where: str
               ) -> PairIndexList:
    """``folds x pairs_per_fold`` seeded pairs of ``labels (N,)`` (UserError naming ``where``
    when they cannot be drawn)."""
    try:
        return generate_pairs(labels, n_folds=folds, pairs_per_fold=pairs_per_fold, seed=seed)
    except ValueError as exc:
        msg = f"{where}: cannot draw {folds} folds x {pairs_per_fold} pairs: {exc}"
        raise UserError(msg) from None


def people(index: ImageFolderIndex, pairs: PairIndexList) -> set[str]:
    """The names of the identities in ``pairs``."""
    return {index.classes[c] for c in index.labels[np.concatenate([pairs.idx1, pairs.idx2])]}


def pair_identities(index: ImageFolderIndex, pairs: PairIndexList, seen: Sequence[str] | None
                    ) -> dict:
    """``{"identities": n, "seen_in_training": m or None}``: the people in ``pairs`` and how
    many of them the model's training run saw (``seen``: its identity names, when known)."""
    names = people(index, pairs)
    return {"identities": len(names),
            "seen_in_training": None if seen is None else len(names.intersection(seen))}


@dataclass(frozen=True)
class Loading:
    """How images are batched for embedding: images per batch and decoding workers."""

    batch_size: int = 256
    workers: int = 0

    def loader(self, dataset: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size,
                                           num_workers=self.workers)


def embed_index(
    model: torch.nn.Module,
    index: ImageFolderIndex,
    transform: Callable,
    device: torch.device,
    loading: Loading = Loading(),
    flip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(N, D) embeddings of every image of ``index``; with ``flip``, the mean of the image's and
    its mirror's embedding, re-normalised."""
    loader = loading.loader(FaceDataset(index, transform))
    return embed_all(model, loader, device, flip=flip, progress=progress)[0]


@dataclass
class ImageSource:
    """Where a workflow's preprocessed images come from: decoded from their files with
    ``transform``, or read from a decoded ``cache`` (the same preprocessing, decoded once for
    the model, every baseline and the eigenfaces fit) of the dataset at ``cache_root``."""

    transform: FaceTransform
    cache: DecodedCache | None = None
    cache_root: Path | None = None
    loading: Loading = Loading()

    def embed(self, model: torch.nn.Module, index: ImageFolderIndex, device: torch.device,
              flip: bool = False, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(N, D) embeddings of every image of ``index`` (see :func:`embed_index`)."""
        if self.cache is None or Path(index.root).resolve() != self.cache_root:
            return embed_index(model, index, self.transform, device, self.loading, flip=flip,
                               progress=progress)
        loader = self.loading.loader(CachedFaceDataset(index, self.cache))
        return embed_all(model, loader, device, batch_transform=self.transform.normalize,
                         flip=flip, progress=progress)[0]


def fit_eigenfaces(index: ImageFolderIndex, images: ImageSource,
                   n_components: int = EIGENFACES_COMPONENTS) -> Eigenfaces:
    """The eigenfaces baseline fitted on every image of ``index`` (the model's preprocessing,
    in grey)."""
    pixels = images.embed(GreyPixels(), index, torch.device("cpu"))
    return Eigenfaces.fit(torch.from_numpy(pixels), n_components)
