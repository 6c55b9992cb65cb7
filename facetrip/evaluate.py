"""``facetrip eval``: verification and retrieval metrics for a checkpoint (or raw pixels)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from facetrip.checkpoint import load_checkpoint, model_from_checkpoint
from facetrip.data.dataset import FaceDataset
from facetrip.data.folder import ImageFolderIndex, scan_identity_folder
from facetrip.data.transforms import build_transform
from facetrip.engine import embed_images
from facetrip.errors import UserError
from facetrip.metrics import retrieval_metrics, verification_metrics
from facetrip.pairs import PairIndexList, generate_pairs, read_pairs, resolve_pairs


def load_pairs(
    index: ImageFolderIndex, pairs_file: str | Path | None, folds: int, pairs_per_fold: int,
    seed: int,
) -> PairIndexList:
    """Pairs from an LFW-format file (folds as given) or drawn from ``index`` with ``seed``."""
    if pairs_file is not None:
        pairs = read_pairs(pairs_file)
        idx1, idx2 = resolve_pairs(pairs, index.paths)
        return PairIndexList(idx1, idx2, pairs.issame, pairs.fold)
    try:
        return generate_pairs(index.labels, n_folds=folds, pairs_per_fold=pairs_per_fold,
                              seed=seed)
    except ValueError as exc:
        msg = f"{index.root}: cannot draw {folds} folds x {pairs_per_fold} pairs: {exc}"
        raise UserError(msg) from None


def pair_distances(emb: np.ndarray, pairs: PairIndexList, metric: str) -> np.ndarray:
    """(P,) distances between the two items of each pair; ``emb`` is (N, D)."""
    a = torch.from_numpy(emb[pairs.idx1])
    b = torch.from_numpy(emb[pairs.idx2])
    if metric == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)).numpy()
    return (a - b).norm(dim=1).numpy()


def score_embeddings(
    emb: np.ndarray, labels: np.ndarray, pairs: PairIndexList, metric: str, ks: Sequence[int]
) -> dict:
    """``{"verification": ..., "retrieval": ...}`` for embeddings ``emb`` (N, D)."""
    verification = verification_metrics(pair_distances(emb, pairs, metric), pairs.issame,
                                         folds=pairs.fold)
    retrieval = retrieval_metrics(emb, labels, ks=tuple(ks), metric=metric)
    return {"verification": verification, "retrieval": retrieval}


def embed_index(
    model: torch.nn.Module,
    index: ImageFolderIndex,
    transform: Callable,
    device: torch.device,
    batch_size: int = 256,
    flip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(N, D) embeddings of every image of ``index``; with ``flip``, the mean of the image's and
    its mirror's embedding, re-normalised."""
    loader = torch.utils.data.DataLoader(FaceDataset(index, transform), batch_size=batch_size)
    out = []
    for images, _ in loader:
        emb = embed_images(model, images, device)
        if flip:
            emb = torch.nn.functional.normalize(
                emb + embed_images(model, images.flip(-1), device), dim=1
            )
        out.append(emb.numpy())
        if progress is not None:
            progress(len(images))
    return np.concatenate(out)


def pixel_embeddings(index: ImageFolderIndex, transform: Callable) -> np.ndarray:
    """The raw-pixel baseline: each preprocessed image flattened, standardised (zero mean,
    unit variance per image) and L2-normalised, so its distances compare image content."""
    loader = torch.utils.data.DataLoader(FaceDataset(index, transform), batch_size=256)
    out = []
    for images, _ in loader:
        x = images.flatten(1)
        x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)
        out.append(torch.nn.functional.normalize(x, dim=1).numpy())
    return np.concatenate(out)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_dir: str | Path,
    pairs_file: str | Path | None = None,
    metric: str = "euclidean",
    ks: Sequence[int] = (1, 5, 10),
    flip: bool = False,
    baseline: str | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    folds: int = 10,
    pairs_per_fold: int = 600,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Embed ``data_dir`` with the checkpoint's model and preprocessing, then score it.

    Returns the ``metrics.json`` content: ``verification``, ``retrieval``, ``baselines``
    (``{"pixels": {...}}`` when ``baseline == "pixels"``) and provenance (``dataset``,
    ``checkpoint``, ``config``, ``skipped``).
    """
    if baseline not in (None, "pixels"):
        raise UserError(f"unknown baseline {baseline!r}; the only baseline is 'pixels'")
    device = torch.device(device)
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, device)
    d = cfg.data
    transform = build_transform(d.image_size, d.mean, d.std, d.crop_fraction, augment=False)
    index = scan_identity_folder(data_dir)
    pairs = load_pairs(index, pairs_file, folds, pairs_per_fold, seed)
    emb = embed_index(model, index, transform, device, flip=flip, progress=progress)
    result = score_embeddings(emb, index.labels, pairs, metric, ks)
    if baseline == "pixels":
        result["baselines"] = {"pixels": score_embeddings(
            pixel_embeddings(index, transform), index.labels, pairs, metric, ks)}
    result.update(
        dataset={"root": str(data_dir), "images": len(index), "identities": len(index.classes),
                 "pairs_file": str(pairs_file) if pairs_file else None},
        checkpoint=str(checkpoint),
        config=ckpt.get("config"),
        skipped=[{"path": s.path, "reason": s.reason} for s in index.skipped],
        options={"metric": metric, "flip": flip, "ks": list(ks), "seed": seed},
    )
    return result

