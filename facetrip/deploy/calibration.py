"""Operating points for a deployed model, from what ``facetrip eval`` measured.

``facetrip eval`` writes ``metrics.json`` with the best-accuracy threshold but not the
thresholds at a target false-accept rate. :func:`calibrate` recovers them exactly: it redraws
(or rereads) the same pairs from the ``dataset``, ``options`` and pair counts recorded there,
embeds the images in them with the checkpoint, checks that the result is what ``eval``
reported (so a metrics file of another model or of changed data is refused), and fits every
threshold on those pairs (:func:`~facetrip.metrics.verification.operating_points`).

Where ``eval`` chose its thresholds on other pairs (``--calibrate-held-out``: the run's
validation pairs, people it never trained on; or ``--calibration-pairs FILE``), the export's
thresholds are chosen on those same pairs, rebuilt and re-embedded, and the sidecar says so
(``in_sample: false``, ``chosen_on``). Otherwise they are fitted on the pairs eval scored:
the accuracy, TAR and FAR beside them are then in-sample, and the k-fold
``held_out_accuracy`` is the honest estimate. The calibration records the dataset, the pair
counts and the date of the ``eval`` run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facetrip.config import Config
from facetrip.data.index import ImageFolderIndex
from facetrip.data.source import scan_dataset
from facetrip.data.transforms import Preprocessing
from facetrip.errors import UserError
from facetrip.evaluation.evaluate import held_out_calibration
from facetrip.evaluation.sources import Loading, embed_index, load_pairs, pairs_from_file
from facetrip.metrics.pairs import PairIndexList, pair_distances
from facetrip.metrics.verification import operating_points, verification_metrics

FARS = (1e-2, 1e-3, 1e-4)
#: how far the re-embedded pairs may score from metrics.json (different BLAS, batches, device)
_AGREEMENT = 1e-3


def far_key(far: float) -> str:
    """The sidecar's key of a target FAR: ``1e-3`` -> ``"0.001"``."""
    return f"{float(far):g}"


def read_eval_metrics(path: str | Path) -> dict:
    """``facetrip eval``'s metrics.json (UserError when it is missing or not one)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration file not found: {path}")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(metrics, dict) and "bins" in metrics and "verification" not in metrics:
        raise UserError(f"{path} scores only .bin sets: no pairs of a data set to calibrate "
                        "on (evaluate DATA too)")
    if not isinstance(metrics, dict) or "verification" not in metrics:
        raise UserError(f"{path} is not the metrics.json of `facetrip eval`")
    return metrics


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths exist and name one file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def find_calibration(checkpoint: str | Path) -> tuple[Path | None, str]:
    """``CHECKPOINT_DIR/eval/metrics.json`` when it is an evaluation of ``checkpoint``:
    ``(path or None, why)``; ``why`` says what was found (for the CLI to print)."""
    path = Path(checkpoint).parent / "eval" / "metrics.json"
    if not path.is_file():
        return None, "no calibration: no eval/metrics.json beside the checkpoint"
    try:
        metrics = read_eval_metrics(path)
    except UserError as exc:
        return None, f"no calibration: {exc}"
    if not same_file(metrics.get("checkpoint") or "", checkpoint):
        return None, (f"no calibration: {path} evaluates {metrics.get('checkpoint')}, "
                      f"not {checkpoint}")
    return path, f"calibration from {path}"


def _eval_date(path: Path) -> str:
    stamp = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    return stamp.isoformat(timespec="seconds")


def _used_subset(index: ImageFolderIndex, used: np.ndarray) -> ImageFolderIndex:
    return ImageFolderIndex(index.root, [index.paths[i] for i in used], index.labels[used],
                            index.classes)


def _read_for_calibration(metrics_path: Path, checkpoint: str | Path) -> dict:
    """``facetrip eval``'s metrics.json, when it can calibrate ``checkpoint``'s export.

    Raises:
        UserError: it scores an embeddings file or flipped images, evaluates another
            checkpoint, or its dataset is gone.
    """
    metrics = read_eval_metrics(metrics_path)
    dataset, options = metrics.get("dataset") or {}, metrics.get("options") or {}
    where = f"calibration {metrics_path}"
    if "root" not in dataset:
        raise UserError(f"{where} scores an embeddings file, which cannot be tied to a model: "
                        "calibrate with `facetrip eval DIR --model CKPT`")
    if options.get("flip"):
        raise UserError(f"{where} was measured with --flip, which the exported model does not "
                        "do: evaluate again without --flip")
    named = metrics.get("checkpoint")
    if named and Path(named).exists() and not same_file(named, checkpoint):
        raise UserError(f"{where} evaluates {named}, not {checkpoint}")
    if not Path(dataset["root"]).is_dir():
        raise UserError(f"{where}: its dataset {dataset['root']} is not found (paths are "
                        "relative to where `facetrip eval` ran)")
    return metrics


def _pair_distances_again(
    metrics: dict, where: str, model: torch.nn.Module, cfg: Config,
    device: torch.device | str, batch_size: int, progress: Callable[[int], None] | None,
) -> tuple[list[tuple[np.ndarray, PairIndexList]], str | None]:
    """The pairs ``metrics`` scored (redrawn, or reread from its pairs file) and, when eval
    chose its thresholds on other pairs, those (rebuilt), every image in them embedded once
    with ``model``: ``([((P,) distances, pairs), ...], description of the calibration pairs or
    None)``."""
    ver, dataset = metrics["verification"], metrics["dataset"]
    options = metrics.get("options") or {}
    root = Path(dataset["root"])
    folds, n_pairs = int(ver["folds"]), int(ver["n_pairs"])
    index = scan_dataset(root)
    pairs = [load_pairs(index, dataset.get("pairs_file"), folds, n_pairs // folds,
                        int(options.get("seed", 0)))]
    if len(pairs[0]) != n_pairs:
        raise UserError(f"{where}: {root} now gives {len(pairs[0])} pairs, not the {n_pairs} "
                        "evaluated: the dataset changed; evaluate again")
    chosen_on = None
    if options.get("calibrate_held_out"):
        held_out, chosen_on = held_out_calibration(cfg, index)
        pairs.append(held_out)
    elif dataset.get("calibration_pairs"):
        chosen_on = str(dataset["calibration_pairs"])
        pairs.append(pairs_from_file(chosen_on, index.paths))
    used = np.unique(np.concatenate([np.concatenate([p.idx1, p.idx2]) for p in pairs]))
    transform = Preprocessing.from_config(cfg.data).for_images(root).transform()
    emb_used = embed_index(model, _used_subset(index, used), transform, torch.device(device),
                           Loading(batch_size), progress=progress)
    emb = np.zeros((len(index), emb_used.shape[1]), dtype=np.float32)
    emb[used] = emb_used
    distance = options.get("metric", "euclidean")
    return [(pair_distances(emb, p, distance), p) for p in pairs], chosen_on


def calibrate(
    metrics_path: str | Path,
    model: torch.nn.Module,
    cfg: Config,
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """The calibration block of the sidecar, from ``facetrip eval``'s ``metrics_path``.

    Args:
        metrics_path: metrics.json of ``facetrip eval DIR --model CHECKPOINT``.
        model, cfg: the checkpoint's network and run config (as ``model_from_checkpoint``).
        checkpoint: its path (checked against the one ``metrics.json`` names, when it exists).
        progress: ``progress(n)`` per batch of ``n`` embedded images.

    Returns:
        ``{"metrics", "dataset", "pairs_file", "pairs", "same", "different", "folds", "seed",
        "distance", "date", "in_sample", "chosen_on", "chosen_on_pairs",
        "held_out_accuracy", "auc", "best_accuracy":
        {"threshold", "accuracy"}, "far": {"0.01": {"threshold", "tar", "far"} | None, ...}}``.

    Raises:
        UserError: ``metrics.json`` scores an embeddings file or flipped images, evaluates
            another checkpoint, or its dataset is gone or no longer gives the same pairs and
            scores.
    """
    metrics_path = Path(metrics_path)
    where = f"calibration {metrics_path}"
    metrics = _read_for_calibration(metrics_path, checkpoint)
    ver, options = metrics["verification"], metrics.get("options") or {}
    root = Path(metrics["dataset"]["root"])
    measured, chosen_on = _pair_distances_again(metrics, where, model, cfg, device,
                                                batch_size, progress)
    (distances, pairs), fitting = measured[0], measured[-1]
    again = verification_metrics(
        distances, pairs.issame, folds=pairs.fold,
        calibration=(fitting[0], fitting[1].issame) if chosen_on else None)
    for key in ("auc", "accuracy"):
        old, new = ver.get(key), again.get(key)
        if old is not None and new is not None and abs(old - new) > _AGREEMENT + 2 / len(pairs):
            raise UserError(f"{where} reports {key} {old:.4f}, but this checkpoint on {root} "
                            f"gives {new:.4f}: another model or changed data; evaluate again")
    points = operating_points(fitting[0], fitting[1].issame, FARS)
    return {
        "metrics": str(metrics_path),
        "dataset": str(root),
        "pairs_file": metrics["dataset"].get("pairs_file"),
        "pairs": len(pairs),
        "same": int(again["n_same"]),
        "different": int(again["n_different"]),
        "folds": int(ver["folds"]),
        "seed": int(options.get("seed", 0)),
        "distance": options.get("metric", "euclidean"),
        "date": _eval_date(metrics_path),
        "in_sample": chosen_on is None,
        "chosen_on": chosen_on,  #: the pairs the thresholds were chosen on (None: the scored)
        "chosen_on_pairs": len(fitting[1]),
        "held_out_accuracy": ver.get("accuracy"),
        "auc": again.get("auc"),
        "best_accuracy": points["best_accuracy"],
        "far": {far_key(far): points["far"][far] for far in FARS},
    }


def checkpoint_calibration(checkpoint: str | Path) -> dict | None:
    """What a bare checkpoint knows of its operating points: the best-accuracy threshold of
    ``eval/metrics.json`` beside it when that evaluates this checkpoint (no FAR thresholds:
    those come with ``facetrip export``)."""
    path, _ = find_calibration(checkpoint)
    if path is None:
        return None
    metrics = read_eval_metrics(path)
    ver, options = metrics["verification"], metrics.get("options") or {}
    if options.get("flip"):
        return None
    return {
        "metrics": str(path),
        "dataset": (metrics.get("dataset") or {}).get("root"),
        "pairs": ver.get("n_pairs"),
        "distance": options.get("metric", "euclidean"),
        "date": _eval_date(path),
        "in_sample": True,
        "held_out_accuracy": ver.get("accuracy"),
        "best_accuracy": {"threshold": ver["threshold"]},
        "far": {},
    }


def optional_threshold(
    calibration: Mapping[str, Any] | None, far: float | None = None,
    threshold: float | None = None,
) -> tuple[float | None, str | None]:
    """:func:`choose_threshold`, or ``(None, None)`` when there is nothing to choose from (no
    calibration, no ``far``, no ``threshold``): for a ranking, which needs none."""
    if not calibration and far is None and threshold is None:
        return None, None
    return choose_threshold(calibration, far, threshold)


def choose_threshold(
    calibration: Mapping[str, Any] | None, far: float | None = None,
    threshold: float | None = None,
) -> tuple[float, str]:
    """``(threshold, where it came from)``: ``threshold`` when given, else the calibration's
    at ``far``, else its best-accuracy threshold. Same person iff ``distance < threshold``.

    Raises:
        UserError: both given, no calibration, or none at ``far`` (too few different pairs).
    """
    if threshold is not None and far is not None:
        raise UserError("give --far or --threshold, not both")
    if threshold is not None:
        if not math.isfinite(threshold):
            raise UserError(f"--threshold must be a finite number, got {threshold}")
        return float(threshold), "--threshold"
    if not calibration:
        raise UserError("this model has no calibration: pass --threshold, or export it with "
                        "--calibration EVAL/metrics.json")
    on = (f"{calibration.get('pairs')} pairs of {calibration.get('dataset')}, "
          f"{calibration.get('date')}")
    if calibration.get("chosen_on"):
        on = f"{calibration['chosen_on']}, {calibration.get('date')}"
    if far is None:
        return float(calibration["best_accuracy"]["threshold"]), f"best accuracy on {on}"
    point = (calibration.get("far") or {}).get(far_key(far))
    if point is None:
        known = ", ".join(k for k, v in (calibration.get("far") or {}).items() if v) or "none"
        raise UserError(f"no calibrated threshold at FAR {far:g} (calibrated: {known}); a FAR "
                        f"of {far:g} needs at least {math.ceil(1 / far)} different pairs")
    return float(point["threshold"]), f"FAR {far:g} on {on}"
