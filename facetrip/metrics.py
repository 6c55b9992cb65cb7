"""Evaluation metrics for face embeddings: pair verification and leave-one-out retrieval.

Pure functions in the "functional" style: numpy arrays or torch tensors in, plain Python
numbers (JSON-serialisable dicts) out. Nothing here prints or keeps state.

Conventions used throughout:

* A pair is predicted *same* iff ``distance < threshold`` (strict). Candidate thresholds are
  the midpoints between consecutive distinct distances, so equal distances are always
  classified together (ties are consistent), plus "reject all" (below the minimum) and
  "accept all" (above the maximum, which also accepts larger held-out distances).
* Scores for ROC/AUC are ``-distance``; ties are handled as in scikit-learn (a tie between a
  positive and a negative pair counts one half).
* Nearest-neighbour ties are broken by the lower gallery index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from facetrip.distances import DISTANCES, pairwise_distances

DEFAULT_CHUNK_SIZE = 512
DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)
_SELECT_BLOCK = 32  # columns per block in the two-stage top-k selection


# --------------------------------------------------------------------------- conversions


def _to_numpy(x: Any) -> np.ndarray:
    """Array-like or tensor -> numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_pairs(distances: Any, issame: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert pair inputs to ``(P,) float64`` distances and ``(P,) bool`` labels."""
    d = _to_numpy(distances).astype(np.float64)
    same = _to_numpy(issame)
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
    f = _to_numpy(folds)
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


def _fold_sweeps(
    d: np.ndarray, same: np.ndarray, fold: np.ndarray, held_out: bool
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int, np.ndarray, np.ndarray]]:
    """For each fold: the training sweep, training negatives, and the fold's test pairs.

    Yields ``((thresholds, tp, fp), n_train_negatives, test_distances, test_issame)``; the
    training pairs are the other folds, or all pairs when ``held_out`` is False.
    """
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
    d: np.ndarray, same: np.ndarray, fold: np.ndarray, fars: Sequence[float], held_out: bool
) -> tuple[list[float], dict[float, dict[str, float | None] | None]]:
    """Per-fold held-out accuracies and FaceNet VAL@FAR (mean over folds) per target FAR."""
    accuracies: list[float] = []
    vals: dict[float, list[float]] = {float(far): [] for far in fars}
    fars_seen: dict[float, list[float]] = {float(far): [] for far in fars}
    too_few: set[float] = set()
    for (thresholds, tp, fp), n_neg, d_test, s_test in _fold_sweeps(d, same, fold, held_out):
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
                "val_std": float(np.std(finite)) if finite else None,
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
) -> dict[str, Any]:
    """Pair-verification metrics (LFW protocol), JSON-serialisable.

    Args:
        distances: ``(P,)`` pair distances (numpy or tensor); smaller means more similar.
        issame: ``(P,)`` bool, True for same-identity pairs.
        folds: ``(P,)`` int fold id of each pair (e.g. ``PairList.fold``), used as given; or
            ``None``: pair ``i`` goes to fold ``i * n_folds // P`` (contiguous, as LFW).
        n_folds: number of folds when ``folds`` is None.
        fars: target false-accept rates for ``val_at_far`` and ``tar_at_far``.

    Returns:
        A dict with

        * ``accuracy``, ``accuracy_std``: mean and (population) std over folds of the held-out
          accuracy; each fold's threshold maximises accuracy on the *other* folds (exact search
          over all candidate thresholds, the smallest among equally good ones). With a single
          fold there is nothing to hold out: the threshold is fitted on all pairs and
          ``held_out`` is False.
        * ``threshold``: the best-accuracy threshold on all pairs (same iff ``d < threshold``);
          "accept all" / "reject all" are reported as the nearest float beyond the distances.
        * ``auc``: ROC AUC of score ``-distance`` (ties count 1/2, as scikit-learn).
        * ``eer``: equal error rate (FPR = FNR, interpolated on the ROC).
        * ``val_at_far``: ``{far: {"val", "val_std", "far"}}``: per fold, the largest threshold
          with FAR <= target on the training folds; mean VAL (TAR) and mean FAR on the held-out
          folds. ``None`` for a target when some fold's training negatives are fewer than 1/far.
        * ``tar_at_far``: ``{far: TAR}`` over all pairs at the largest threshold with
          FAR <= target; ``None`` when there are fewer than 1/far negative pairs.
        * ``n_pairs``, ``n_same``, ``n_different``, ``folds`` (number of folds), ``held_out``.

        ``auc``, ``eer`` and every ``val_at_far``/``tar_at_far`` entry are ``None`` when only
        one class is present. Keys of the far dicts are the given floats (``json.dumps`` writes
        them as strings). For the ROC curve itself see :func:`roc_curve`.
    """
    d, same = _as_pairs(distances, issame)
    fold = _fold_ids(d.size, folds, n_folds)
    n_folds_found = int(np.unique(fold).size)
    held_out = n_folds_found > 1
    accuracies, val_at_far = _kfold_metrics(d, same, fold, fars, held_out)
    n_pos = int(same.sum())
    n_neg = d.size - n_pos
    order = np.argsort(d, kind="stable")
    thresholds, tp, fp = _threshold_sweep(d[order], same[order])
    result: dict[str, Any] = {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "threshold": _finite_threshold(thresholds[_best_accuracy_index(tp, fp, n_neg)], d),
        "auc": None,
        "eer": None,
        "val_at_far": {float(far): None for far in fars},
        "tar_at_far": {float(far): None for far in fars},
        "n_pairs": int(d.size),
        "n_same": n_pos,
        "n_different": n_neg,
        "folds": n_folds_found,
        "held_out": held_out,
    }
    if n_pos > 0 and n_neg > 0:
        fpr, tpr = fp / n_neg, tp / n_pos
        result["auc"] = _auc(fpr, tpr)
        result["eer"] = _eer(fpr, tpr)
        result["val_at_far"] = val_at_far
        result["tar_at_far"] = {
            float(far): None
            if _too_few_negatives(n_neg, far)
            else float(tpr[_far_index(fp, n_neg, far)])
            for far in fars
        }
    return result


# --------------------------------------------------------------------------- nearest neighbours


def _as_embeddings(x: Any, device: torch.device | None) -> torch.Tensor:
    """``(N, D)`` array or tensor -> float tensor on ``device`` (default: its own device)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(t.shape)}")
    if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    t = t.detach().to(device) if device is not None else t.detach()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    return t


def _stable_smallest(d: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidate rows by ``(distance, index)``.

    Args:
        d: ``(c, L)`` candidate distances; ``idx``: ``(c, L)`` their gallery indices.

    Returns:
        ``(c, L)`` distances ascending and the matching indices, equal distances by index.
    """
    by_index = torch.argsort(idx, dim=1)
    d, idx = d.gather(1, by_index), idx.gather(1, by_index)
    d, by_dist = torch.sort(d, dim=1, stable=True)
    return d, idx.gather(1, by_dist)


def _top_candidates(key: torch.Tensor, n: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` best columns of each row: largest keys if ``largest``, else smallest.

    Two stages when rows are long: the best ``n`` blocks of ``_SELECT_BLOCK`` columns by
    their best key (a vectorised reduction), then an exact top-``n`` among the columns of
    those blocks (and the ragged tail). Each chosen block contributes its best key, so any
    column left out is no better than the ``n``-th candidate: the result is an exact top-``n``
    (which of several equal keys is kept is arbitrary, as for ``torch.topk``). This avoids
    ``torch.topk`` over the full rows, which is the slow part on CPU.

    Args:
        key: ``(c, M)``; ``n <= M``.

    Returns:
        ``(c, n)`` keys and ``(c, n)`` int64 column indices, unordered.
    """
    c, m = key.shape
    n_blocks = m // _SELECT_BLOCK
    if n_blocks < 4 * n:  # too few blocks for the first stage to pay off
        return torch.topk(key, n, dim=1, largest=largest, sorted=False)
    body = key[:, : n_blocks * _SELECT_BLOCK].view(c, n_blocks, _SELECT_BLOCK)
    block_best = body.amax(2) if largest else body.amin(2)
    blocks = torch.topk(block_best, n, dim=1, largest=largest, sorted=False).indices
    offsets = torch.arange(_SELECT_BLOCK, device=key.device)
    cols = (blocks[:, :, None] * _SELECT_BLOCK + offsets).view(c, -1)
    if m > n_blocks * _SELECT_BLOCK:  # the ragged tail is always a candidate
        tail = torch.arange(n_blocks * _SELECT_BLOCK, m, device=key.device).expand(c, -1)
        cols = torch.cat([cols, tail], dim=1)
    vals, pick = torch.topk(key.gather(1, cols), n, dim=1, largest=largest, sorted=False)
    return vals, cols.gather(1, pick)


def _select_rows(
    key: torch.Tensor, k: int, largest: bool, to_dist: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest columns of each row of a chunk, exact ties by lower index.

    Args:
        key: ``(c, M)`` chunk of the matrix; distance is a monotone non-increasing function of
            it when ``largest`` (similarities) and non-decreasing otherwise.
        k: neighbours wanted, ``k <= M``.
        to_dist: maps key values to distances (elementwise, monotone as above).

    Returns:
        ``(c, k)`` distances ascending and ``(c, k)`` int64 column indices.
    """
    c, m = key.shape
    n_cand = min(k + 1, m)
    vals, idx = _top_candidates(key, n_cand, largest)
    d, idx = _stable_smallest(to_dist(vals), idx)
    if n_cand == k:  # every column is a candidate: nothing outside can tie
        return d, idx
    # A column outside the candidates has distance >= d[:, k]; a tie with the k-th distance
    # means the set itself depends on tie-breaking: redo those rows with a full stable sort.
    tied = torch.nonzero(d[:, k - 1] == d[:, k]).flatten()
    if tied.numel():
        full_d = to_dist(key[tied])
        full_idx = torch.arange(m, device=key.device).expand(tied.numel(), m)
        sub_d, sub_idx = _stable_smallest(full_d, full_idx)
        d[tied, : k + 1], idx[tied, : k + 1] = sub_d[:, : k + 1], sub_idx[:, : k + 1]
    return d[:, :k], idx[:, :k]


def _cosine_distance(similarity: torch.Tensor) -> torch.Tensor:
    """Cosine distance from cosine similarity, bit-identical to ``pairwise_distances``."""
    return (1.0 - similarity).clamp_min(0.0)


def _identity(d: torch.Tensor) -> torch.Tensor:
    return d


def _iter_knn(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    metric: str,
    chunk_size: int,
    exclude: torch.Tensor | None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, distances (c, k), indices (c, k))`` for consecutive query chunks.

    ``exclude`` is ``(N,)`` int64: the gallery index each query must not return (itself), or
    None. Only one ``(c, M)`` block of the distance matrix exists at a time; for cosine it is
    a single buffer reused by every chunk (fresh large allocations are slow to page in).
    """
    cosine = metric == "cosine"
    to_dist = _cosine_distance if cosine else _identity
    if cosine:
        gallery_n = torch.nn.functional.normalize(gallery, dim=1)
        buffer = gallery_n.new_empty(min(chunk_size, queries.shape[0]), gallery.shape[0])
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]
        if cosine:  # same arithmetic as pairwise_distances, without its (c, M) temporaries
            key = buffer[: q.shape[0]]
            torch.mm(torch.nn.functional.normalize(q, dim=1), gallery_n.T, out=key)
        else:
            key = pairwise_distances(q, gallery, metric)
        if exclude is not None:
            rows = torch.arange(q.shape[0], device=key.device)
            key[rows, exclude[start : start + chunk_size]] = -math.inf if cosine else math.inf
        d, idx = _select_rows(key, k, largest=cosine, to_dist=to_dist)
        del key
        yield start, d, idx


def _check_knn_args(metric: str, k: int, n_available: int, chunk_size: int) -> None:
    if metric not in DISTANCES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {DISTANCES}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 1 <= k <= n_available:
        raise ValueError(f"k must be in [1, {n_available}] (gallery size), got {k}")


def knn(
    queries: Any,
    gallery: Any = None,
    k: int = 10,
    metric: str = "cosine",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    exclude_self: bool = True,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-nearest-neighbour search, chunked over the queries.

    Args:
        queries: ``(N, D)`` embeddings (numpy or tensor).
        gallery: ``(M, D)`` embeddings, or None to search the queries themselves.
        k: neighbours per query, at most ``M`` (``N - 1`` when excluding self).
        metric: ``"cosine"`` (1 - cos), ``"euclidean"`` or ``"squared_euclidean"``, computed
            exactly as :func:`facetrip.distances.pairwise_distances`.
        chunk_size: queries per block; memory is bounded by a few ``chunk_size x M`` floats.
        exclude_self: with ``gallery=None``, never return a query's own index (duplicates
            of it at other indices are returned normally). Ignored when a gallery is given.
        device: where to compute (e.g. ``"cuda"``); default: the queries' device (CPU for
            numpy input).

    Returns:
        ``distances (N, k)`` ascending and ``indices (N, k)`` int64 into the gallery, on
        ``device``. Equal distances are ordered by lower gallery index, so the result does not
        depend on ``chunk_size`` as long as the matrix product gives the same bits for a row
        whatever the chunk shape; CPU BLAS may round the last bit differently for different
        shapes, so only exactly representable products (e.g. integer embeddings) are
        guaranteed bit-identical, others agree to ~1 ulp.
    """
    dev = torch.device(device) if device is not None else None
    q = _as_embeddings(queries, dev)
    g = q if gallery is None else _as_embeddings(gallery, q.device).to(q.dtype)
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]} but gallery has dim {g.shape[1]}")
    exclude = None
    if gallery is None and exclude_self:
        exclude = torch.arange(q.shape[0], device=q.device)
    _check_knn_args(metric, k, g.shape[0] - (exclude is not None), chunk_size)
    out_d = torch.empty(q.shape[0], k, dtype=q.dtype, device=q.device)
    out_i = torch.empty(q.shape[0], k, dtype=torch.int64, device=q.device)
    for start, d, idx in _iter_knn(q, g, k, metric, chunk_size, exclude):
        out_d[start : start + d.shape[0]] = d
        out_i[start : start + d.shape[0]] = idx
    return out_d, out_i


# --------------------------------------------------------------------------- retrieval


def _retrieval_sums(rel: np.ndarray, r: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    """Per-chunk sums of the retrieval metrics.

    Args:
        rel: ``(c, K)`` bool, neighbour ``j`` of query ``i`` has the query's label.
        r: ``(c,)`` number of other items of each query's class, ``1 <= r <= K``.
        ks: the k of Recall@k (``k > K`` counts as ``K``).

    Returns:
        ``{"recall": {k: hits}, "p1": hits, "r_precision": sum, "map_at_r": sum}``.
    """
    pos = np.arange(1, rel.shape[1] + 1)
    within_r = pos[None, :] <= r[:, None]
    hits_r = (rel & within_r).sum(1)
    precision_at_i = np.cumsum(rel, axis=1) / pos[None, :]
    ap = (precision_at_i * (rel & within_r)).sum(1) / r
    return {
        "recall": {k: int(rel[:, :k].any(1).sum()) for k in ks},
        "p1": int(rel[:, 0].sum()),
        "r_precision": float((hits_r / r).sum()),
        "map_at_r": float(ap.sum()),
    }


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    ks: Sequence[int] = (1, 2, 4, 8, 16),
    metric: str = "cosine",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Leave-one-out retrieval metrics: every item queries all the others.

    Args:
        embeddings: ``(N, D)`` embeddings (numpy or tensor).
        labels: ``(N,)`` class labels (any hashable values numpy can sort).
        ks: the k of Recall@k (positive ints).
        metric: see :func:`knn`.
        chunk_size: queries per block; memory is bounded by a few ``chunk_size x N`` floats
            plus ``N x K`` results are never kept: only per-chunk sums are.
        device: where to compute; default the embeddings' device.

    Returns:
        ``recall_at_k`` ``{k: fraction of queries with >= 1 same-label item in the top k}``,
        ``precision_at_1``, ``r_precision`` (mean of hits in the top R / R), ``map_at_r``
        (Musgrave et al. 2020: mean over queries of ``(1/R) sum_{i<=R} P(i) rel(i)``) where R
        is the number of other items of the query's class; ``n_queries``; ``n_excluded``:
        items whose class has no other item, excluded from every metric. Metrics are ``None``
        when no query remains. Neighbour ties are broken by lower index.
    """
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    ks = [int(k) for k in ks]
    emb = _as_embeddings(embeddings, torch.device(device) if device is not None else None)
    _, codes, counts = np.unique(_to_numpy(labels), return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    if codes.shape[0] != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} embeddings but {codes.shape[0]} labels")
    r_all = counts[codes] - 1
    keep = np.flatnonzero(r_all > 0)
    result: dict[str, Any] = {
        "recall_at_k": {k: None for k in ks},
        "precision_at_1": None,
        "r_precision": None,
        "map_at_r": None,
        "n_queries": int(keep.size),
        "n_excluded": int(emb.shape[0] - keep.size),
    }
    if keep.size == 0:
        return result
    k_needed = min(emb.shape[0] - 1, max(max(ks), int(r_all[keep].max())))
    _check_knn_args(metric, k_needed, emb.shape[0] - 1, chunk_size)
    keep_t = torch.as_tensor(keep, device=emb.device)
    totals = {"recall": dict.fromkeys(ks, 0), "p1": 0, "r_precision": 0.0, "map_at_r": 0.0}
    queries = emb if keep.size == emb.shape[0] else emb[keep_t]
    chunks = _iter_knn(queries, emb, k_needed, metric, chunk_size, exclude=keep_t)
    for start, _, idx in chunks:
        rows = keep[start : start + idx.shape[0]]
        rel = codes[idx.cpu().numpy()] == codes[rows][:, None]
        sums = _retrieval_sums(rel, r_all[rows], ks)
        for k in ks:
            totals["recall"][k] += sums["recall"][k]
        for name in ("p1", "r_precision", "map_at_r"):
            totals[name] += sums[name]
    n = keep.size
    result["recall_at_k"] = {k: totals["recall"][k] / n for k in ks}
    result["precision_at_1"] = totals["p1"] / n
    result["r_precision"] = totals["r_precision"] / n
    result["map_at_r"] = totals["map_at_r"] / n
    return result
