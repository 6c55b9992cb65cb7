"""Pair verification metrics (LFW protocol): accuracy over folds, ROC, AUC, EER, TAR@FAR.

Pure functions in the "functional" style: numpy arrays or torch tensors in, plain Python
numbers (JSON-serialisable dicts) out. Nothing here prints or keeps state.

Conventions:

* A pair is predicted *same* iff ``distance < threshold`` (strict). Candidate thresholds are
  the midpoints between consecutive distinct distances, so equal distances are always
  classified together (ties are consistent), plus "reject all" (below the minimum) and
  "accept all" (above the maximum, which also accepts larger held-out distances).
* Scores for ROC/AUC are ``-distance``; ties are handled as in scikit-learn (a tie between a
  positive and a negative pair counts one half).

ROC and AUC come from the same sweep as the exact threshold search rather than from
scikit-learn (tests/evaluation/test_verification.py checks them against ``roc_curve`` and
``roc_auc_score``): on 1,000,000 pairs ``roc_curve`` (thresholds are scores, not midpoints
as here) is ~25% slower than the sweep, ``roc_auc_score`` sorts again (~0.5 s more), and
even ``sklearn.metrics.auc`` on the swept curve, bit-identical, costs a ~1.4 s import of
``sklearn.metrics`` in every process that evaluates (nothing else in facetrip imports it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facetrip.metrics.arrays import to_numpy

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)


def _as_pairs(distances: Any, issame: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert pair inputs to ``(P,) float64`` distances and ``(P,) bool`` labels."""
    d = to_numpy(distances).astype(np.float64)
    same = to_numpy(issame)
    if d.ndim != 1 or same.ndim != 1 or d.shape != same.shape:
        raise ValueError(
            f"distances and issame must be 1-D of equal length, got {d.shape} and {same.shape}"
        )
    if d.size == 0:
        raise ValueError("no pairs given")
    if not np.isfinite(d).all():
        raise ValueError("distances contain NaN or infinite values")
    if same.dtype != np.bool_ and not np.isin(same, (0, 1)).all():
        raise ValueError("issame must be boolean (or 0/1)")
    return d, same.astype(bool)


def _fold_ids(n_pairs: int, folds: Any, n_folds: int) -> np.ndarray:
    """``(P,)`` fold id per pair: the given ``folds`` or contiguous blocks ``i * n_folds // P``."""
    if folds is None:
        if n_folds < 1:
            raise ValueError(f"n_folds must be >= 1, got {n_folds}")
        return np.arange(n_pairs, dtype=np.int64) * n_folds // n_pairs
    f = to_numpy(folds)
    if f.shape != (n_pairs,) or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"folds must be an integer array of shape ({n_pairs},), got {f.shape}")
    return f.astype(np.int64)


# --------------------------------------------------------------------------- threshold sweep


def _threshold_sweep(
    d_sorted: np.ndarray, same_sorted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confusion counts at every candidate threshold.

    Args:
        d_sorted: ``(n,)`` distances sorted ascending, ``n >= 1``.
        same_sorted: ``(n,)`` bool labels in the same order.

    Returns:
        ``thresholds (m+1,)`` ascending, where ``m`` is the number of distinct distances:
        ``-inf`` (reject every pair), the midpoints between consecutive distinct distances, and
        ``+inf`` (accept every pair, also unseen larger distances); ``tp (m+1,)`` and
        ``fp (m+1,)``: numbers of positive / negative pairs with ``distance < threshold``.
    """
    n = d_sorted.size
    group_ends = np.flatnonzero(np.diff(d_sorted) > 0) + 1  # first index of each later group
    n_below = np.concatenate(([0], group_ends, [n]))
    cum_pos = np.concatenate(([0], np.cumsum(same_sorted, dtype=np.int64)))
    tp = cum_pos[n_below]
    fp = n_below - tp
    lo = d_sorted[group_ends - 1]
    hi = d_sorted[group_ends]
    mid = lo + (hi - lo) / 2
    mid = np.where(mid > lo, mid, hi)  # adjacent floats: ``hi`` still splits the two groups
    thresholds = np.concatenate(([-np.inf], mid, [np.inf]))
    return thresholds, tp, fp


def _finite_threshold(threshold: float, d: np.ndarray) -> float:
    """Replace an infinite threshold by the nearest float beyond the distances ``d``."""
    if threshold == np.inf:
        return float(np.nextafter(d.max(), np.inf))
    if threshold == -np.inf:
        return float(np.nextafter(d.min(), -np.inf))
    return float(threshold)


# --------------------------------------------------------------------------- ROC family


def _full_roc(d: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, each ``(m+1,)``, over all candidate thresholds ascending."""
    order = np.argsort(d, kind="stable")
    thresholds, tp, fp = _threshold_sweep(d[order], same[order])
    n_pos = int(same.sum())
    return fp / (same.size - n_pos), tp / n_pos, thresholds


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC polyline (trapezoidal rule, as scikit-learn)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FPR = FNR, linearly interpolated along the ROC polyline."""
    gap = (1 - tpr) - fpr  # non-increasing from 1 to -1
    k = int(np.argmax(gap <= 0))
    if k == 0:
        return float(fpr[0])
    t = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def _subsample(n: int, max_points: int | None) -> np.ndarray:
    """At most ``max_points`` evenly spread indices into ``range(n)``, keeping both ends."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def roc_curve(
    distances: Any, issame: Any, max_points: int | None = 1000
) -> dict[str, list[float]] | None:
    """ROC curve of pair verification with score ``-distance``, for plotting.

    Args:
        distances: ``(P,)`` pair distances, smaller means more similar.
        issame: ``(P,)`` bool, True for same-identity pairs.
        max_points: keep at most this many points, evenly spaced along the curve and always
            including ``(0, 0)`` and ``(1, 1)``; ``None`` keeps all of them.

    Returns:
        ``{"fpr", "tpr", "thresholds"}`` lists of equal length (ascending thresholds; a pair is
        accepted iff ``distance < threshold``; the end points lie just outside the
        distances). Unsubsampled, ``fpr``/``tpr`` equal scikit-learn's
        ``roc_curve(issame, -distances, drop_intermediate=False)``.
        ``None`` when only one class is present (the curve is undefined).
    """
    d, same = _as_pairs(distances, issame)
    if same.all() or not same.any():
        return None
    fpr, tpr, thresholds = _full_roc(d, same)
    keep = _subsample(fpr.size, max_points)
    return {
        "fpr": fpr[keep].tolist(),
        "tpr": tpr[keep].tolist(),
        "thresholds": [_finite_threshold(t, d) for t in thresholds[keep]],
    }


# --------------------------------------------------------------------------- verification


Sweep = tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int, np.ndarray, np.ndarray]
"""``((thresholds, tp, fp) of the fitting pairs, their negatives, test distances, test issame)``."""


def _fold_sweeps(d: np.ndarray, same: np.ndarray, fold: np.ndarray, held_out: bool
                 ) -> Iterator[Sweep]:
    """For each fold: the sweep of the pairs its thresholds are fitted on (the other folds, or
    all pairs when ``held_out`` is False), and the fold's test pairs."""
    order = np.argsort(d, kind="stable")
    ds, ss, fs = d[order], same[order], fold[order]
    for f in np.unique(fs):
        test = fs == f
        train = ~test if held_out else np.ones_like(test)
        n_neg = int(train.sum() - ss[train].sum())
        yield _threshold_sweep(ds[train], ss[train]), n_neg, ds[test], ss[test]


def _best_accuracy_index(tp: np.ndarray, fp: np.ndarray, n_neg: int) -> int:
    """Index of the threshold maximising accuracy; the smallest threshold among ties."""
    return int(np.argmax(tp + (n_neg - fp)))


def _far_index(fp: np.ndarray, n_neg: int, far: float) -> int:
    """Index of the largest threshold whose false-accept rate is ``<= far``."""
    return int(np.searchsorted(fp, far * n_neg * (1 + 1e-12), side="right")) - 1


def _too_few_negatives(n_neg: int, far: float) -> bool:
    """True when ``n_neg < 1 / far`` (a FAR of ``far`` cannot be resolved)."""
    return n_neg * far < 1 - 1e-9


def _mean_or_none(values: Sequence[float]) -> float | None:
    """Mean of the finite values, or None when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _rate(accept: np.ndarray) -> float:
    """Fraction of True in ``accept``; NaN when empty."""
    return float(accept.mean()) if accept.size else math.nan


def _kfold_metrics(
    sweeps: Iterator[Sweep], fars: Sequence[float]
) -> tuple[list[float], dict[float, dict[str, float | None] | None]]:
    """Per-fold test accuracies at the fitted best-accuracy threshold, and FaceNet VAL@FAR
    (mean over folds) per target FAR at the fitted FAR thresholds."""
    accuracies: list[float] = []
    vals: dict[float, list[float]] = {float(far): [] for far in fars}
    fars_seen: dict[float, list[float]] = {float(far): [] for far in fars}
    too_few: set[float] = set()
    for (thresholds, tp, fp), n_neg, d_test, s_test in sweeps:
        best = thresholds[_best_accuracy_index(tp, fp, n_neg)]
        accuracies.append(float(np.mean((d_test < best) == s_test)))
        for far in vals:
            if _too_few_negatives(n_neg, far):
                too_few.add(far)
                continue
            accept = d_test < thresholds[_far_index(fp, n_neg, far)]
            vals[far].append(_rate(accept[s_test]))
            fars_seen[far].append(_rate(accept[~s_test]))
    val_at_far: dict[float, dict[str, float | None] | None] = {}
    for far, v in vals.items():
        finite = [x for x in v if math.isfinite(x)]
        val_at_far[far] = (
            None
            if far in too_few
            else {
                "val": _mean_or_none(v),
                "val_std": float(np.std(finite)) if len(finite) > 1 else None,
                "far": _mean_or_none(fars_seen[far]),
            }
        )
    return accuracies, val_at_far


def verification_metrics(
    distances: Any,
    issame: Any,
    folds: Any = None,
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
    calibration: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Pair-verification metrics (LFW protocol), JSON-serialisable.

    Args:
        distances: ``(P,)`` pair distances (numpy or tensor); smaller means more similar.
        issame: ``(P,)`` bool, True for same-identity pairs.
        folds: ``(P,)`` int fold id of each pair (e.g. ``PairList.fold``), used as given; or
            ``None``: pair ``i`` goes to fold ``i * n_folds // P`` (contiguous, as LFW).
        n_folds: number of folds when ``folds`` is None.
        fars: target false-accept rates for ``val_at_far`` and ``tar_at_far``.
        calibration: ``(distances (Q,), issame (Q,))`` of other pairs (LFW View 1: DevTrain
            for DevTest) on which the thresholds are chosen; the scored pairs then form one
            fold and ``folds`` is ignored.

    Returns:
        A dict with

        * ``protocol``: how thresholds met the scored pairs: ``"k-fold"`` (each fold's
          thresholds fitted on the other folds), ``"calibrated"`` (fitted on ``calibration``)
          or ``"in-sample"`` (a single fold and no calibration: fitted on the very pairs they
          score, an optimistic figure); ``held_out`` is False only for ``"in-sample"``.
        * ``accuracy``, ``accuracy_std``: mean and (population) std over folds of the test
          accuracy at the best-accuracy threshold of the fitting pairs (exact search over all
          candidate thresholds, the smallest among equally good ones); ``accuracy_std`` is
          None when a single fold is scored.
        * ``threshold``: the best-accuracy threshold of all the fitting pairs (same iff
          ``d < threshold``): the scored pairs', or the calibration pairs'. "accept all" /
          "reject all" are reported as the nearest float beyond the distances.
        * ``auc``: ROC AUC of score ``-distance`` (ties count 1/2, as scikit-learn).
        * ``eer``: equal error rate (FPR = FNR, interpolated on the ROC).
        * ``val_at_far``: ``{far: {"val", "val_std", "far"}}``: per fold, the largest threshold
          with FAR <= target on the fitting pairs; mean VAL (TAR) and mean FAR on the test
          pairs. ``None`` for a target when some fold's fitting negatives are fewer than 1/far.
        * ``tar_at_far``: ``{far: TAR}`` read off the ROC of the scored pairs (the largest
          threshold with FAR <= target on them); ``None`` with fewer than 1/far negatives.
        * ``n_pairs``, ``n_same``, ``n_different``, ``folds`` (number of folds), ``held_out``;
          with calibration also ``calibration``: ``{n_pairs, n_same, n_different}``.

        ``auc``, ``eer`` and every ``val_at_far``/``tar_at_far`` entry are ``None`` when only
        one class is present. Keys of the far dicts are the given floats (``json.dumps`` writes
        them as strings). For the ROC curve itself see :func:`roc_curve`.
    """
    d, same = _as_pairs(distances, issame)
    n_pos = int(same.sum())
    n_neg = d.size - n_pos
    order = np.argsort(d, kind="stable")
    thresholds, tp, fp = _threshold_sweep(d[order], same[order])
    fitting = _Fitting.of(d, same, (thresholds, tp, fp), folds, n_folds, calibration)
    accuracies, val_at_far = _kfold_metrics(fitting.sweeps, fars)
    fit = fitting.sweep
    best_threshold = fit[0][_best_accuracy_index(fit[1], fit[2], fitting.negatives)]
    result: dict[str, Any] = {
        "protocol": fitting.protocol,
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)) if len(accuracies) > 1 else None,
        "threshold": _finite_threshold(best_threshold, fitting.distances),
        "auc": None, "eer": None,
        "val_at_far": {float(far): None for far in fars},
        "tar_at_far": {float(far): None for far in fars},
        "n_pairs": int(d.size),
        "n_same": n_pos,
        "n_different": n_neg,
        "folds": fitting.n_folds,
        "held_out": fitting.protocol != "in-sample",
    }
    if calibration is not None:
        n_cal_same = int(fitting.same.sum())
        result["calibration"] = {"n_pairs": int(fitting.distances.size), "n_same": n_cal_same,
                                 "n_different": int(fitting.distances.size) - n_cal_same}
    if n_pos > 0 and n_neg > 0:
        result.update(_roc_fields(tp, fp, n_pos, n_neg, fars), val_at_far=val_at_far)
    return result


def _roc_fields(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int,
                fars: Sequence[float]) -> dict[str, Any]:
    """``auc``, ``eer`` and ``tar_at_far`` from the threshold sweep's TP / FP counts."""
    fpr, tpr = fp / n_neg, tp / n_pos
    return {"auc": _auc(fpr, tpr), "eer": _eer(fpr, tpr),
            "tar_at_far": {float(far): None if _too_few_negatives(n_neg, far)
                           else float(tpr[_far_index(fp, n_neg, far)]) for far in fars}}


@dataclass
class _Fitting:
    """Where :func:`verification_metrics` fits its thresholds: the calibration pairs (one
    "fold": every scored pair), or the scored pairs' own folds (k-fold, or in-sample with one
    fold). ``sweep`` is the threshold sweep of all the fitting pairs."""

    protocol: str
    n_folds: int
    sweeps: Iterator[Sweep]  #: per scored fold: (fitting sweep, negatives, test d, test same)
    distances: np.ndarray  #: (Q,) the fitting pairs' distances
    same: np.ndarray  #: (Q,) and their labels
    sweep: tuple[np.ndarray, np.ndarray, np.ndarray]  #: (thresholds, TP, FP) of all of them
    negatives: int

    @classmethod
    def of(cls, d: np.ndarray, same: np.ndarray, sweep: tuple[np.ndarray, np.ndarray, np.ndarray],
           folds: Any, n_folds: int,
           calibration: tuple[Any, Any] | None) -> _Fitting:
        if calibration is not None:
            fit_d, fit_same = _as_pairs(*calibration)
            fit_order = np.argsort(fit_d, kind="stable")
            fit = _threshold_sweep(fit_d[fit_order], fit_same[fit_order])
            fit_neg = int(fit_same.size - fit_same.sum())
            return cls("calibrated", 1, iter([(fit, fit_neg, d, same)]), fit_d, fit_same, fit,
                       fit_neg)
        fold = _fold_ids(d.size, folds, n_folds)
        found = int(np.unique(fold).size)
        protocol = "k-fold" if found > 1 else "in-sample"
        return cls(protocol, found, _fold_sweeps(d, same, fold, protocol == "k-fold"), d, same,
                   sweep, int(same.size - same.sum()))


def operating_points(
    distances: Any, issame: Any, fars: Sequence[float] = DEFAULT_FARS
) -> dict[str, Any]:
    """The thresholds a deployed model decides with, fitted on all the given pairs.

    The same choices as :func:`verification_metrics` (``threshold`` and ``tar_at_far``), with
    the thresholds themselves for every target FAR.

    Args:
        distances: ``(P,)`` pair distances; smaller means more similar.
        issame: ``(P,)`` bool, True for same-identity pairs.
        fars: target false-accept rates.

    Returns:
        ``{"best_accuracy": {"threshold", "accuracy"}, "far": {far: {"threshold", "tar",
        "far"} or None}}`` (same iff ``d < threshold``): the best-accuracy threshold (the
        smallest among equally good ones, equal to ``verification_metrics``' ``threshold``)
        and its accuracy on these pairs; per target, the largest threshold whose FAR on these
        pairs is ``<= far``, its TAR (``verification_metrics``' ``tar_at_far``) and its FAR.
        A target is None when there are fewer than ``1 / far`` negative pairs, or only one
        class. Fitted and scored on the same pairs: in-sample figures.
    """
    d, same = _as_pairs(distances, issame)
    order = np.argsort(d, kind="stable")
    thresholds, tp, fp = _threshold_sweep(d[order], same[order])
    n_pos = int(same.sum())
    n_neg = d.size - n_pos
    best = _best_accuracy_index(tp, fp, n_neg)
    points: dict[str, Any] = {
        "best_accuracy": {
            "threshold": _finite_threshold(thresholds[best], d),
            "accuracy": float((tp[best] + n_neg - fp[best]) / d.size),
        },
        "far": {float(far): None for far in fars},
    }
    if n_pos > 0 and n_neg > 0:
        for far in fars:
            if _too_few_negatives(n_neg, far):
                continue
            i = _far_index(fp, n_neg, far)
            points["far"][float(far)] = {
                "threshold": _finite_threshold(thresholds[i], d),
                "tar": float(tp[i] / n_pos),
                "far": float(fp[i] / n_neg),
            }
    return points
