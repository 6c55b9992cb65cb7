"""``facetrip eval``, the workflow: embed a dataset (or read an npz), draw or read the pairs,
score verification and retrieval, with baselines on the same pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facetrip.config import Config
from facetrip.data.cache import DecodedCache, load_or_build_cache
from facetrip.data.dataset import CachedFaceDataset, FaceDataset
from facetrip.data.index import ImageFolderIndex, scan_identity_folder
from facetrip.data.transforms import FaceTransform, Normalize, build_transform
from facetrip.errors import UserError
from facetrip.evaluation.baselines import Eigenfaces, GreyPixels, PixelEmbedder
from facetrip.metrics.embedding import embed_all
from facetrip.metrics.pairs import (
    PairIndexList,
    generate_pairs,
    pair_distances,
    read_pairs,
    resolve_pairs,
)
from facetrip.metrics.retrieval import retrieval_metrics, retrieval_metrics_and_top1
from facetrip.metrics.verification import verification_metrics
from facetrip.training.build import run_identities, run_validation_pairs
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

BASELINES = ("pixels", "eigenfaces")
EIGENFACES_COMPONENTS = 100  #: principal axes kept by the eigenfaces baseline


def load_pairs(
    index: ImageFolderIndex, pairs_file: str | Path | None, folds: int, pairs_per_fold: int,
    seed: int,
) -> PairIndexList:
    """Pairs from an LFW-format file (folds as given) or drawn from ``index`` with ``seed``."""
    if pairs_file is not None:
        return pairs_from_file(pairs_file, index.paths)
    return _draw_pairs(index.labels, folds, pairs_per_fold, seed, str(index.root))


def pairs_from_file(pairs_file: str | Path, paths: list[str]) -> PairIndexList:
    """Read an LFW-format pairs file and resolve it against item ``paths`` (UserError if not)."""
    try:
        pairs = read_pairs(pairs_file)
        idx1, idx2 = resolve_pairs(pairs, paths)
    except (OSError, ValueError) as exc:
        raise UserError(f"pairs file {pairs_file}: {exc}") from None
    return PairIndexList(idx1, idx2, pairs.issame, pairs.fold)


def _draw_pairs(
    labels: np.ndarray, folds: int, pairs_per_fold: int, seed: int, where: str
) -> PairIndexList:
    try:
        return generate_pairs(labels, n_folds=folds, pairs_per_fold=pairs_per_fold, seed=seed)
    except ValueError as exc:
        msg = f"{where}: cannot draw {folds} folds x {pairs_per_fold} pairs: {exc}"
        raise UserError(msg) from None


@dataclass
class Evaluation:
    """Everything ``facetrip eval`` computed: the ``metrics.json`` content and the arrays the
    report draws from."""

    metrics: dict
    distances: np.ndarray  #: (P,) pair distances
    pairs: PairIndexList
    labels: np.ndarray  #: (N,) identity of each item
    top1: np.ndarray  #: (N,) index of each item's nearest other item
    paths: list[str] | None = None  #: (N,) item paths relative to ``root``
    root: Path | None = None
    run_dir: Path | None = None  #: the training run of the checkpoint, when known
    #: baseline name -> (P,) pair distances on the same pairs (``--baseline``)
    baseline_distances: dict[str, np.ndarray] = field(default_factory=dict)


def score_embeddings(
    emb: np.ndarray, labels: np.ndarray, pairs: PairIndexList, metric: str, ks: Sequence[int],
    calibration: PairIndexList | None = None,
) -> tuple[dict, np.ndarray]:
    """``({"verification": ..., "retrieval": ...}, pair distances (P,))`` for ``emb`` (N, D);
    with ``calibration`` pairs, the thresholds are chosen on them."""
    verification, distances = _verification(emb, pairs, metric, calibration)
    retrieval = retrieval_metrics(emb, labels, ks=tuple(ks), metric=metric)
    return {"verification": verification, "retrieval": retrieval}, distances


def _verification(emb: np.ndarray, pairs: PairIndexList, metric: str,
                  calibration: PairIndexList | None = None) -> tuple[dict, np.ndarray]:
    """``(verification metrics, pair distances (P,))``."""
    distances = pair_distances(emb, pairs, metric)
    cal = (None if calibration is None
           else (pair_distances(emb, calibration, metric), calibration.issame))
    return verification_metrics(distances, pairs.issame, folds=pairs.fold,
                                calibration=cal), distances


def _evaluation(
    emb: np.ndarray, labels: np.ndarray, pairs: PairIndexList, metric: str, ks: Sequence[int],
    calibration: PairIndexList | None = None, **context,
) -> Evaluation:
    """:func:`score_embeddings` plus each item's top-1 for the report, from the same kNN pass
    as the retrieval metrics."""
    if max(ks) >= len(emb) or min(ks) < 1:
        raise UserError(f"Recall@k needs 1 <= k < {len(emb)} (the number of items), got {ks}")
    verification, distances = _verification(emb, pairs, metric, calibration)
    retrieval, top1 = retrieval_metrics_and_top1(emb, labels, ks=tuple(ks), metric=metric)
    metrics = {"verification": verification, "retrieval": retrieval}
    return Evaluation(metrics, distances, pairs, labels, top1, **context)


def _people(index: ImageFolderIndex, pairs: PairIndexList) -> set[str]:
    """The names of the identities in ``pairs``."""
    return {index.classes[c] for c in index.labels[np.concatenate([pairs.idx1, pairs.idx2])]}


def pair_identities(index: ImageFolderIndex, pairs: PairIndexList, seen: Sequence[str] | None
                    ) -> dict:
    """``{"identities": n, "seen_in_training": m or None}``: the people in ``pairs`` and how
    many of them the model's training run saw (``seen``: its identity names, when known)."""
    names = _people(index, pairs)
    return {"identities": len(names),
            "seen_in_training": None if seen is None else len(names.intersection(seen))}


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
    return embed_all(model, loader, device, flip=flip, progress=progress)[0]


@dataclass
class ImageSource:
    """Where a workflow's preprocessed images come from: decoded from their files with
    ``transform``, or read from a decoded ``cache`` (the same preprocessing, decoded once for
    the model, every baseline and the eigenfaces fit) of the dataset at ``cache_root``."""

    transform: FaceTransform
    cache: DecodedCache | None = None
    cache_root: Path | None = None

    def embed(self, model: torch.nn.Module, index: ImageFolderIndex, device: torch.device,
              flip: bool = False, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(N, D) embeddings of every image of ``index`` (see :func:`embed_index`)."""
        if self.cache is None or Path(index.root).resolve() != self.cache_root:
            return embed_index(model, index, self.transform, device, flip=flip,
                               progress=progress)
        loader = torch.utils.data.DataLoader(CachedFaceDataset(index, self.cache),
                                             batch_size=256)
        normalize: Normalize = self.transform.normalize
        return embed_all(model, loader, device, batch_transform=normalize, flip=flip,
                         progress=progress)[0]


def fit_eigenfaces(index: ImageFolderIndex, images: ImageSource,
                   n_components: int = EIGENFACES_COMPONENTS) -> Eigenfaces:
    """The eigenfaces baseline fitted on every image of ``index`` (the model's preprocessing,
    in grey)."""
    pixels = images.embed(GreyPixels(), index, torch.device("cpu"))
    return Eigenfaces.fit(torch.from_numpy(pixels), n_components)


def _baseline_list(baseline: str | Sequence[str] | None) -> list[str]:
    names = [baseline] if isinstance(baseline, str) else list(baseline or [])
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    return list(dict.fromkeys(names))


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_dir: str | Path,
    pairs_file: str | Path | None = None,
    metric: str = "euclidean",
    ks: Sequence[int] = (1, 5, 10),
    flip: bool = False,
    baseline: str | Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    folds: int = 10,
    pairs_per_fold: int = 600,
    progress: Callable[[int], None] | None = None,
    calibration_pairs: str | Path | None = None,
    also_pairs: Sequence[str | Path] = (),
    baseline_fit: str | Path | None = None,
    cache: str | Path | None = None,
    calibrate_held_out: bool = False,
) -> Evaluation:
    """Embed ``data_dir`` with the checkpoint's model and preprocessing, then score it.

    ``calibration_pairs`` (a pairs file of other people, e.g. LFW ``pairsDevTrain.txt``)
    chooses the thresholds that score ``pairs_file``; so does ``calibrate_held_out``, with the
    checkpoint's run's validation pairs (people held out of its training; ``data_dir`` must be
    the run's ``data.root``). ``also_pairs`` files are scored too, each
    by its own folds (``metrics["also"]``), model and baselines. Baselines: ``pixels`` and
    ``eigenfaces``, fitted on the images the checkpoint's run trained on, or on every image of
    ``baseline_fit``. ``cache``: a decoded-image cache directory for ``data_dir`` (built when
    missing or stale; a training run's ``data.cache`` of the same folder is reused), so every
    image is decoded once.

    ``metrics`` holds ``verification``, ``retrieval``, ``baselines`` (``{name: {...}}``),
    ``also``, ``pair_identities`` (how many of the pairs' people the training run saw; with
    calibration, ``calibration_identities`` likewise, with ``shared_with_scored``: how many of
    them are in the scored pairs too) and provenance (``dataset``,
    ``checkpoint``, ``config``, ``skipped``, ``options``).
    """
    baselines = _baseline_list(baseline)
    device = torch.device(device)
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, device)
    d = cfg.data
    transform = build_transform(d.image_size, d.mean, d.std, d.crop_fraction,
                                crop_box=d.crop_box, grayscale=d.grayscale)
    same_root = bool(d.root) and Path(d.root).resolve() == Path(data_dir).resolve()
    if calibrate_held_out and calibration_pairs:
        raise UserError("give calibration pairs or the run's held-out identities, not both")
    if calibrate_held_out and not same_root:
        raise UserError(f"calibrating on the run's held-out identities needs the run's data: "
                        f"evaluate its data.root ({d.root or 'not recorded'}, relative to where "
                        f"it was trained), not {data_dir}")
    images = ImageSource(transform)
    if cache is not None:
        decoded, _ = load_or_build_cache(data_dir, cache, transform.preprocess)
        images = ImageSource(transform, decoded, Path(data_dir).resolve())
        index = decoded.index
    else:
        index = scan_identity_folder(data_dir)
    pairs = load_pairs(index, pairs_file, folds, pairs_per_fold, seed)
    calibration = pairs_from_file(calibration_pairs, index.paths) if calibration_pairs else None
    calibration_source = str(calibration_pairs) if calibration_pairs else None
    if calibrate_held_out:
        calibration, calibration_source = held_out_calibration(cfg, index, ckpt.get("val"))
    also = {str(f): pairs_from_file(f, index.paths) for f in also_pairs}
    trained_on, seen = _run_identities(cfg, index if same_root else None,
                                       need_images="eigenfaces" in baselines
                                       and baseline_fit is None)
    emb = images.embed(model, index, device, flip=flip, progress=progress)
    run_dir = Path(checkpoint).parent
    result = _evaluation(emb, index.labels, pairs, metric, ks, calibration, paths=index.paths,
                         root=Path(data_dir),
                         run_dir=run_dir if (run_dir / "metrics.jsonl").is_file() else None)
    result.metrics["pair_identities"] = pair_identities(index, pairs, seen)
    if calibration is not None:
        # trained on, not merely validated on: held-out calibration people count as unseen
        people = pair_identities(index, calibration,
                                 None if trained_on is None else trained_on.classes)
        people["shared_with_scored"] = len(_people(index, calibration) & _people(index, pairs))
        result.metrics["calibration_identities"] = people
    result.metrics["also"] = {
        name: {"verification": _verification(emb, p, metric)[0], "baselines": {},
               "pair_identities": pair_identities(index, p, seen)}
        for name, p in also.items()}
    fitted_on = None
    if baselines:
        result.metrics["baselines"] = {}
    for name in baselines:
        if name == "pixels":
            embedder: torch.nn.Module = PixelEmbedder()
        else:
            fit_index = scan_identity_folder(baseline_fit) if baseline_fit else trained_on
            embedder = fit_eigenfaces(fit_index, images)
            fitted_on = {"root": str(baseline_fit or d.root), "images": len(fit_index),
                         "identities": len(fit_index.classes),
                         "components": int(embedder.components.shape[0])}
        b_emb = images.embed(embedder, index, torch.device("cpu"))
        scores, result.baseline_distances[name] = score_embeddings(
            b_emb, index.labels, pairs, metric, ks, calibration)
        result.metrics["baselines"][name] = scores
        for protocol, p in also.items():
            result.metrics["also"][protocol]["baselines"][name] = {
                "verification": _verification(b_emb, p, metric)[0]}
    result.metrics.update(
        dataset={"root": str(data_dir), "images": len(index), "identities": len(index.classes),
                 "pairs_file": str(pairs_file) if pairs_file else None,
                 "calibration_pairs": calibration_source},
        checkpoint=str(checkpoint),
        config=ckpt.get("config"),
        skipped=[{"path": s.path, "reason": s.reason} for s in index.skipped],
        options={"metric": metric, "flip": flip, "ks": list(ks), "seed": seed,
                 "baselines": baselines, "eigenfaces_fit": fitted_on},
    )
    return result


def held_out_calibration(cfg: Config, index: ImageFolderIndex, recorded: dict | None = None
                         ) -> tuple[PairIndexList, str]:
    """``(pairs, description)``: the validation pairs of the run of ``cfg`` (its held-out
    identities, never trained on), as indices into ``index``, the run's ``data.root``.

    ``recorded``: the checkpoint's validation metrics; the rebuilt pairs must match their
    counts, or the split was rebuilt from other data than the run's.

    Raises:
        UserError: no held-out identities, or pairs that are not the ones the run drew.
    """
    val_idx, val_pairs, _ = run_validation_pairs(cfg, index)
    want = (recorded or {}).get("n_pairs"), (recorded or {}).get("folds")
    got = len(val_pairs), int(np.unique(val_pairs.fold).size)
    if want[0] is not None and want != got:
        hint = (f" (it trained from the decoded cache {cfg.data.cache}: give --cache "
                f"{cfg.data.cache})" if cfg.data.cache else "")
        raise UserError(f"the run's held-out identities cannot be rebuilt from this data: it "
                        f"validated on {want[0]} pairs in {want[1]} folds, this data gives "
                        f"{got[0]} in {got[1]}; evaluate the images it trained on{hint}")
    position = {path: i for i, path in enumerate(index.paths)}
    items = np.array([position[path] for path in val_idx.paths], dtype=np.int64)
    pairs = PairIndexList(items[val_pairs.idx1], items[val_pairs.idx2], val_pairs.issame,
                          val_pairs.fold)
    return pairs, (f"the run's validation pairs: {len(pairs)} pairs of its "
                   f"{len(val_idx.classes)} held-out identities")


def _run_identities(cfg, full: ImageFolderIndex | None, need_images: bool
                    ) -> tuple[ImageFolderIndex | None, list[str] | None]:
    """The checkpoint's training images and seen identity names, when its data is at hand
    (``full``: the evaluated dataset's index, when it is the run's ``data.root``).

    Raises:
        UserError: ``need_images`` (the eigenfaces fit) and the training data is gone.
    """
    try:
        return run_identities(cfg, full)
    except UserError as exc:
        if need_images:
            raise UserError(f"the eigenfaces baseline is fitted on the checkpoint's training "
                            f"images, which cannot be read ({exc}); give --baseline-fit DIR"
                            ) from None
        return None, None


def evaluate_npz(
    embeddings_file: str | Path,
    pairs_file: str | Path | None = None,
    metric: str = "euclidean",
    ks: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    folds: int = 10,
    pairs_per_fold: int = 600,
    images_root: str | Path | None = None,
    calibration_pairs: str | Path | None = None,
) -> Evaluation:
    """Score embeddings from any model: an npz with ``embeddings`` (N, D) and ``labels`` (N,),
    and optionally ``paths`` (N,), against which an LFW pairs file resolves.

    ``images_root`` (optional) is where ``paths`` point, for the report's image grids.
    """
    path = Path(embeddings_file)
    if not path.is_file():
        raise UserError(f"embeddings file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
        emb, labels = np.asarray(npz["embeddings"], np.float32), np.asarray(npz["labels"])
        paths = [str(p) for p in npz["paths"]] if "paths" in npz else None
    except KeyError as exc:
        raise UserError(f"{path} lacks the array {exc}; need 'embeddings' and 'labels'") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as npz: {exc}") from None
    if emb.ndim != 2 or labels.shape != (len(emb),):
        raise UserError(f"{path}: embeddings must be (N, D) and labels (N,), got "
                        f"{emb.shape} and {labels.shape}")
    labels = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    if pairs_file is not None:
        if paths is None:
            raise UserError(f"{path} has no 'paths' array, so a pairs file cannot resolve")
        pairs = pairs_from_file(pairs_file, paths)
    else:
        pairs = _draw_pairs(labels, folds, pairs_per_fold, seed, str(path))
    calibration = None
    if calibration_pairs is not None:
        if paths is None:
            raise UserError(f"{path} has no 'paths' array, so calibration pairs cannot resolve")
        calibration = pairs_from_file(calibration_pairs, paths)
    result = _evaluation(emb, labels, pairs, metric, ks, calibration, paths=paths,
                         root=Path(images_root) if images_root else None)
    result.metrics.update(
        dataset={"embeddings": str(path), "items": len(emb),
                 "identities": int(labels.max()) + 1 if len(labels) else 0,
                 "pairs_file": str(pairs_file) if pairs_file else None,
                 "calibration_pairs": str(calibration_pairs) if calibration_pairs else None},
        checkpoint=None, config=None, skipped=[],
        options={"metric": metric, "flip": False, "ks": list(ks), "seed": seed},
    )
    return result
