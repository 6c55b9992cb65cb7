"""``facetrip eval``, the workflow: one :class:`EvalRequest` in, one :class:`Evaluation` out.

Embed a dataset with a checkpoint (or read an npz of embeddings), read or draw the pairs and
where their thresholds come from (:class:`PairProtocol`), score verification and retrieval,
and the baselines on the same pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facetrip.config import Config
from facetrip.data.bins import VerificationBin, read_bins
from facetrip.data.cache import load_or_build_cache
from facetrip.data.index import ImageFolderIndex
from facetrip.data.source import scan_dataset
from facetrip.data.transforms import Preprocessing
from facetrip.errors import UserError
from facetrip.evaluation.baselines import PixelEmbedder
from facetrip.evaluation.sources import (
    ImageSource,
    Loading,
    draw_pairs,
    fit_eigenfaces,
    load_pairs,
    pair_identities,
    pairs_from_file,
    people,
)
from facetrip.metrics.bins import embed_bin, score_bin
from facetrip.metrics.pairs import PairIndexList, pair_distances
from facetrip.metrics.retrieval import retrieval_metrics, retrieval_metrics_and_top1
from facetrip.metrics.verification import verification_metrics
from facetrip.training.build import run_identities, run_validation_pairs
from facetrip.training.checkpoint import load_checkpoint, model_from_checkpoint

BASELINES = ("pixels", "eigenfaces")
DISTANCES = ("euclidean", "cosine")


@dataclass(frozen=True)
class PairProtocol:
    """Which pairs are scored and where their thresholds come from.

    ``pairs_file``: an LFW-format file, scored by its own folds; without one,
    ``folds x pairs_per_fold`` pairs are drawn with ``seed``. Thresholds: chosen on
    ``calibration_pairs`` (a file of other people), on the checkpoint's run's validation pairs
    (``calibrate_held_out``: people held out of its training), or else by k-fold (in-sample
    for a single-fold file). ``also_pairs``: more files, each scored by its own folds.
    """

    pairs_file: Path | None = None
    seed: int = 0
    folds: int = 10
    pairs_per_fold: int = 600
    calibration_pairs: Path | None = None
    calibrate_held_out: bool = False
    also_pairs: tuple[Path, ...] = ()

    def check(self) -> None:
        """UserError for a protocol that contradicts itself."""
        if self.calibration_pairs is not None and self.pairs_file is None:
            raise UserError("--calibration-pairs chooses the thresholds for --pairs: give both")
        if self.calibration_pairs is not None and self.calibrate_held_out:
            raise UserError("give --calibration-pairs or --calibrate-held-out, not both")


@dataclass(frozen=True)
class EvalRequest:
    """What ``facetrip eval`` is asked: a checkpoint (``model``) and the images in ``data``
    and/or ``.bin`` verification sets (``bins``, each scored by the 10-fold protocol of the
    published tables), or an npz of ``embeddings`` (``data``, if given, is where its paths
    point, for the report's images); the pairs; the distance and Recall@k; test-time
    ``flip``; baselines (``pixels``, ``eigenfaces``, fitted on the run's training images or
    ``baseline_fit``); a decoded-image ``cache`` for ``data``; and how to embed (device,
    batch size, workers)."""

    model: Path | None = None
    data: Path | None = None
    embeddings: Path | None = None
    protocol: PairProtocol = PairProtocol()
    distance: str = "euclidean"
    ks: tuple[int, ...] = (1, 5, 10)
    flip: bool = False
    baselines: tuple[str, ...] = ()
    baseline_fit: Path | None = None
    cache: Path | None = None
    device: torch.device | str = "cpu"
    loading: Loading = Loading()
    bins: tuple[Path, ...] = ()
    #: detect and align each image: None as the checkpoint records, True/False to force
    align: bool | None = None

    def check(self) -> None:
        """UserError for a request that cannot be run, naming the options."""
        if self.bins and self.model is None:
            raise UserError("--bin needs --model: the checkpoint that embeds its images")
        if (self.model is None) == (self.embeddings is None):
            raise UserError("give either --model (a checkpoint) with DATA, or --embeddings")
        if self.model is not None and self.data is None and not self.bins:
            raise UserError("--model needs DATA: the identity-folder dataset to embed (or "
                            "--bin sets to score)")
        if self.distance not in DISTANCES:
            raise UserError(f"--distance must be euclidean or cosine, got {self.distance!r}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise UserError(f"unknown baseline {unknown[0]!r}; choose from "
                            f"{', '.join(BASELINES)}")
        self.protocol.check()
        p = self.protocol
        if self.data is None and self.model is not None and (
                self.baselines or self.baseline_fit or p.also_pairs or self.cache
                or p.pairs_file or p.calibration_pairs or p.calibrate_held_out):
            raise UserError("--pairs, --baseline, --also-pairs, --cache and calibration score "
                            "the images of DATA: give DATA with --bin")
        if self.embeddings is not None and (self.baselines or self.flip or self.baseline_fit
                                            or p.also_pairs or self.cache
                                            or p.calibrate_held_out or self.align is not None):
            raise UserError("--baseline, --baseline-fit, --also-pairs, --cache, --flip, "
                            "--calibrate-held-out and --align need images: use --model and "
                            "DATA")


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


def evaluate(request: EvalRequest, progress: Callable[[int], None] | None = None
             ) -> Evaluation:
    """Score ``request`` (see :class:`EvalRequest`); ``progress(n)`` after each embedded batch.

    ``metrics`` holds ``verification``, ``retrieval``, ``baselines`` (``{name: {...}}``),
    ``also``, ``pair_identities`` (how many of the pairs' people the training run saw; with
    calibration, ``calibration_identities`` likewise, with ``shared_with_scored``: how many of
    them are in the scored pairs too) and provenance (``dataset``, ``checkpoint``, ``config``,
    ``skipped``, ``options``).

    Raises:
        UserError: a request that cannot be run, unreadable inputs, pairs that do not resolve.
    """
    request.check()
    if request.embeddings is not None:
        return _evaluate_npz(request)
    return _evaluate_images(request, progress)


def score_embeddings(
    emb: np.ndarray, labels: np.ndarray, pairs: PairIndexList, distance: str,
    ks: Sequence[int], calibration: PairIndexList | None = None,
) -> tuple[dict, np.ndarray]:
    """``({"verification": ..., "retrieval": ...}, pair distances (P,))`` for ``emb`` (N, D);
    with ``calibration`` pairs, the thresholds are chosen on them."""
    verification, distances = _verification(emb, pairs, distance, calibration)
    retrieval = retrieval_metrics(emb, labels, ks=tuple(ks), metric=distance)
    return {"verification": verification, "retrieval": retrieval}, distances


def _verification(emb: np.ndarray, pairs: PairIndexList, distance: str,
                  calibration: PairIndexList | None = None) -> tuple[dict, np.ndarray]:
    """``(verification metrics, pair distances (P,))``."""
    distances = pair_distances(emb, pairs, distance)
    cal = (None if calibration is None
           else (pair_distances(emb, calibration, distance), calibration.issame))
    return verification_metrics(distances, pairs.issame, folds=pairs.fold,
                                calibration=cal), distances


def _evaluation(
    emb: np.ndarray, labels: np.ndarray, pairs: PairIndexList, distance: str,
    ks: Sequence[int], calibration: PairIndexList | None = None, **context,
) -> Evaluation:
    """:func:`score_embeddings` plus each item's top-1 for the report, from the same kNN pass
    as the retrieval metrics."""
    if max(ks) >= len(emb) or min(ks) < 1:
        raise UserError(f"Recall@k needs 1 <= k < {len(emb)} (the number of items), got {ks}")
    verification, distances = _verification(emb, pairs, distance, calibration)
    retrieval, top1 = retrieval_metrics_and_top1(emb, labels, ks=tuple(ks), metric=distance)
    metrics = {"verification": verification, "retrieval": retrieval}
    return Evaluation(metrics, distances, pairs, labels, top1, **context)


@dataclass
class _Pairs:
    """The pairs of one evaluation, resolved against its images."""

    scored: PairIndexList
    calibration: PairIndexList | None
    calibration_source: str | None
    also: dict[str, PairIndexList]


def _resolve_pairs(protocol: PairProtocol, index: ImageFolderIndex, cfg: Config,
                   recorded_val: dict | None) -> _Pairs:
    """The scored, calibration and extra pairs of ``protocol`` as indices into ``index``."""
    scored = load_pairs(index, protocol.pairs_file, protocol.folds, protocol.pairs_per_fold,
                        protocol.seed)
    calibration, source = None, None
    if protocol.calibration_pairs:
        calibration = pairs_from_file(protocol.calibration_pairs, index.paths)
        source = str(protocol.calibration_pairs)
    if protocol.calibrate_held_out:
        calibration, source = held_out_calibration(cfg, index, recorded_val)
    also = {str(f): pairs_from_file(f, index.paths) for f in protocol.also_pairs}
    return _Pairs(scored, calibration, source, also)


def _open_images(request: EvalRequest, cfg: Config, recorded: Preprocessing
                 ) -> tuple[ImageSource, ImageFolderIndex]:
    """The images to embed (decoded, or from the decoded cache) and their index."""
    data = Path(request.data)
    d = cfg.data
    if request.protocol.calibrate_held_out and not _same_root(cfg, data):
        raise UserError(f"calibrating on the run's held-out identities needs the run's data: "
                        f"evaluate its data.root ({d.root or 'not recorded'}, relative to where "
                        f"it was trained), not {data}")
    preprocessing = (recorded.for_images(data) if request.align is None
                     else recorded.aligned(request.align))
    images = ImageSource(preprocessing.transform(), loading=request.loading)
    if request.cache is None:
        return images, scan_dataset(data)
    decoded, _ = load_or_build_cache(data, request.cache, preprocessing.crop)
    return (ImageSource(images.transform, decoded, data.resolve(), request.loading),
            decoded.index)


def _same_root(cfg: Config, data: Path) -> bool:
    """True when ``data`` is the run's ``data.root``."""
    return bool(cfg.data.root) and Path(cfg.data.root).resolve() == data.resolve()


def _evaluate_images(request: EvalRequest, progress: Callable[[int], None] | None
                     ) -> Evaluation:
    """Embed ``request.data`` with the checkpoint's model and preprocessing, then score it
    (and the ``.bin`` sets)."""
    device = torch.device(request.device)
    ckpt = load_checkpoint(request.model)
    model, cfg = model_from_checkpoint(ckpt, device)
    bin_sets = read_bins(request.bins)  # before the long part: a bad file fails at once
    if request.data is None:
        return _evaluate_bins_only(request, ckpt, model, cfg, bin_sets, progress)
    images, index = _open_images(request, cfg, Preprocessing.from_checkpoint(ckpt, cfg.data))
    pairs = _resolve_pairs(request.protocol, index, cfg, ckpt.get("val"))
    need_training_images = "eigenfaces" in request.baselines and request.baseline_fit is None
    trained_on, seen = _run_identities(
        cfg, index if _same_root(cfg, Path(request.data)) else None, need_training_images)
    emb = images.embed(model, index, device, flip=request.flip, progress=progress)
    run_dir = Path(request.model).parent
    result = _evaluation(emb, index.labels, pairs.scored, request.distance, request.ks,
                         pairs.calibration, paths=index.paths, root=Path(request.data),
                         run_dir=run_dir if (run_dir / "metrics.jsonl").is_file() else None)
    result.metrics["pair_identities"] = pair_identities(index, pairs.scored, seen)
    if pairs.calibration is not None:
        # trained on, not merely validated on: held-out calibration people count as unseen
        who = pair_identities(index, pairs.calibration,
                              None if trained_on is None else trained_on.classes)
        who["shared_with_scored"] = len(people(index, pairs.calibration)
                                        & people(index, pairs.scored))
        result.metrics["calibration_identities"] = who
    result.metrics["also"] = {
        name: {"verification": _verification(emb, p, request.distance)[0], "baselines": {},
               "pair_identities": pair_identities(index, p, seen)}
        for name, p in pairs.also.items()}
    fitted_on = _score_baselines(result, request, images, index, pairs, trained_on, cfg)
    result.metrics.update(
        dataset={"root": str(request.data), "images": len(index),
                 "identities": len(index.classes), **_pair_files(request.protocol,
                                                                 pairs.calibration_source)},
        checkpoint=str(request.model), config=ckpt.get("config"),
        skipped=[{"path": s.path, "reason": s.reason} for s in index.skipped],
        options={**_options(request), "baselines": list(request.baselines),
                 "eigenfaces_fit": fitted_on})
    if bin_sets:
        result.metrics["bins"] = _score_bins(request, model, cfg, bin_sets, progress)
    return result


def _score_bins(request: EvalRequest, model: torch.nn.Module, cfg: Config,
                bin_sets: list[VerificationBin], progress: Callable[[int], None] | None
                ) -> dict[str, dict]:
    """``{name: metrics}`` of each ``.bin`` set (the fields of ``verification``, plus
    ``file`` and ``skipped_pairs``), embedded with the checkpoint's preprocessing."""
    device = torch.device(request.device)
    preprocessing = Preprocessing.from_config(cfg.data)
    scores = {}
    for bin_set in bin_sets:
        emb, decoded = embed_bin(model, bin_set, preprocessing.crop, device,
                                 preprocessing.normalize().to(device), flip=request.flip,
                                 batch_size=request.loading.batch_size,
                                 workers=request.loading.workers, progress=progress)
        scores[bin_set.name] = score_bin(bin_set, emb, decoded, request.distance).metrics
    return scores


def _evaluate_bins_only(request: EvalRequest, ckpt: dict, model: torch.nn.Module, cfg: Config,
                        bin_sets: list[VerificationBin],
                        progress: Callable[[int], None] | None) -> Evaluation:
    """``--model`` with ``--bin`` sets and no DATA: only ``metrics["bins"]`` (no pairs or
    items of a data set, so the report has no curves or image grids)."""
    none = np.zeros(0, np.int64)
    metrics = {"bins": _score_bins(request, model, cfg, bin_sets, progress), "dataset": None,
               "checkpoint": str(request.model), "config": ckpt.get("config"), "skipped": [],
               "options": _options(request)}
    run_dir = Path(request.model).parent
    return Evaluation(metrics, np.zeros(0), PairIndexList(none, none, none.astype(bool), none),
                      none, none,
                      run_dir=run_dir if (run_dir / "metrics.jsonl").is_file() else None)


def _score_baselines(result: Evaluation, request: EvalRequest, images: ImageSource,
                     index: ImageFolderIndex, pairs: _Pairs,
                     trained_on: ImageFolderIndex | None, cfg: Config) -> dict | None:
    """Score each requested baseline on the same pairs (into ``result``); returns what
    eigenfaces was fitted on (None when it was not asked for)."""
    fitted_on = None
    if request.baselines:
        result.metrics["baselines"] = {}
    for name in request.baselines:
        if name == "pixels":
            embedder: torch.nn.Module = PixelEmbedder()
        else:
            fit = request.baseline_fit
            fit_index = scan_dataset(fit) if fit else trained_on
            embedder = fit_eigenfaces(fit_index, images)
            fitted_on = {"root": str(fit or cfg.data.root), "images": len(fit_index),
                         "identities": len(fit_index.classes),
                         "components": int(embedder.components.shape[0])}
        b_emb = images.embed(embedder, index, torch.device("cpu"))
        scores, result.baseline_distances[name] = score_embeddings(
            b_emb, index.labels, pairs.scored, request.distance, request.ks, pairs.calibration)
        result.metrics["baselines"][name] = scores
        for protocol, p in pairs.also.items():
            result.metrics["also"][protocol]["baselines"][name] = {
                "verification": _verification(b_emb, p, request.distance)[0]}
    return fitted_on


def _pair_files(protocol: PairProtocol, calibration_source: str | None) -> dict:
    return {"pairs_file": str(protocol.pairs_file) if protocol.pairs_file else None,
            "calibration_pairs": calibration_source}


def _options(request: EvalRequest) -> dict:
    """The request's scoring options as metrics.json records them (``metric``: the
    distance, under the name earlier files used)."""
    return {"metric": request.distance, "flip": request.flip, "ks": list(request.ks),
            "seed": request.protocol.seed,
            "calibrate_held_out": request.protocol.calibrate_held_out}


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


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """``(embeddings (N, D) float32, labels (N,) as 0..C-1, paths or None)`` of an npz."""
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
    return emb, np.unique(labels, return_inverse=True)[1].astype(np.int64), paths


def _evaluate_npz(request: EvalRequest) -> Evaluation:
    """Score embeddings from any model: an npz with ``embeddings`` (N, D) and ``labels``
    (N,), and optionally ``paths`` (N,), against which pairs files resolve. ``request.data``
    (optional) is where ``paths`` point, for the report's image grids."""
    path, protocol = Path(request.embeddings), request.protocol
    emb, labels, paths = _read_npz(path)
    for option, given in (("a pairs file", protocol.pairs_file),
                          ("calibration pairs", protocol.calibration_pairs)):
        if given is not None and paths is None:
            raise UserError(f"{path} has no 'paths' array, so {option} cannot resolve")
    if protocol.pairs_file is not None:
        pairs = pairs_from_file(protocol.pairs_file, paths)
    else:
        pairs = draw_pairs(labels, protocol.folds, protocol.pairs_per_fold, protocol.seed,
                           str(path))
    calibration = (pairs_from_file(protocol.calibration_pairs, paths)
                   if protocol.calibration_pairs is not None else None)
    result = _evaluation(emb, labels, pairs, request.distance, request.ks, calibration,
                         paths=paths, root=Path(request.data) if request.data else None)
    result.metrics.update(
        dataset={"embeddings": str(path), "items": len(emb),
                 "identities": int(labels.max()) + 1 if len(labels) else 0,
                 **_pair_files(protocol, str(protocol.calibration_pairs)
                               if protocol.calibration_pairs else None)},
        checkpoint=None, config=None, skipped=[], options=_options(request),
    )
    return result
