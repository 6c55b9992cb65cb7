"""Metrics against scikit-learn and plain-Python brute-force references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from facetrip.evaluation.knn import knn
from facetrip.evaluation.retrieval import retrieval_metrics
from facetrip.evaluation.verification import roc_curve, verification_metrics
from facetrip.loss.distances import pairwise_distances

# --------------------------------------------------------------------------- references


def brute_candidates(train_d: np.ndarray) -> list[float]:
    """Reject all, midpoints of consecutive distinct values, accept all."""
    u = sorted(set(train_d.tolist()))
    mids = [(u[i] + u[i + 1]) / 2 for i in range(len(u) - 1)]
    return [-np.inf, *mids, np.inf]


def brute_best_threshold(d: np.ndarray, same: np.ndarray) -> float:
    """Loop over every candidate; first (smallest) threshold with the best accuracy."""
    best_t, best_acc = None, -1.0
    for t in brute_candidates(d):
        acc = np.mean((d < t) == same)
        if acc > best_acc:
            best_t, best_acc = t, acc
    return best_t


def brute_kfold(d: np.ndarray, same: np.ndarray, fold: np.ndarray) -> list[float]:
    accs = []
    for f in np.unique(fold):
        t = brute_best_threshold(d[fold != f], same[fold != f])
        accs.append(float(np.mean((d[fold == f] < t) == same[fold == f])))
    return accs


def brute_far_threshold(d: np.ndarray, same: np.ndarray, far: float) -> float:
    """Largest candidate threshold with false-accept rate <= far."""
    neg = d[~same]
    return max(t for t in brute_candidates(d) if np.mean(neg < t) <= far)


def brute_retrieval(x: torch.Tensor, labels: np.ndarray, ks, metric: str) -> dict:
    """Plain Python per query: full sort of all other items by (distance, index)."""
    dist = pairwise_distances(x, x, metric).numpy()
    n = len(labels)
    hits = {k: 0 for k in ks}
    p1 = rp = map_r = 0.0
    n_q = 0
    for q in range(n):
        r = int(np.sum(labels == labels[q])) - 1
        if r == 0:
            continue
        n_q += 1
        order = sorted((j for j in range(n) if j != q), key=lambda j: (dist[q, j], j))
        rel = [labels[j] == labels[q] for j in order]
        for k in ks:
            hits[k] += any(rel[:k])
        p1 += rel[0]
        rp += sum(rel[:r]) / r
        ap, found = 0.0, 0
        for i in range(r):
            if rel[i]:
                found += 1
                ap += found / (i + 1)
        map_r += ap / r
    return {
        "recall_at_k": {k: hits[k] / n_q for k in ks},
        "precision_at_1": p1 / n_q,
        "r_precision": rp / n_q,
        "map_at_r": map_r / n_q,
        "n_queries": n_q,
        "n_excluded": n - n_q,
    }


def tied_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances on a coarse grid (many ties), positives slightly closer."""
    same = rng.random(n) < 0.5
    d = rng.integers(0, 12, n) / 4.0 - same * rng.integers(0, 3, n) / 4.0
    return d, same


# --------------------------------------------------------------------------- ROC / AUC


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_auc_and_roc_match_sklearn(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    if kind == "ties":
        d, same = tied_pairs(rng, 500)
    else:
        same = rng.random(500) < 0.4
        d = rng.normal(1.0 - 0.5 * same, 0.4)
    result = verification_metrics(d, same)
    assert result["auc"] == pytest.approx(roc_auc_score(same, -d), abs=1e-12)
    fpr, tpr, _ = sk_roc_curve(same, -d, drop_intermediate=False)
    curve = roc_curve(d, same, max_points=None)
    np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(curve["tpr"], tpr, atol=1e-12)
    for j, t in enumerate(curve["thresholds"]):
        assert np.mean(d[same] < t) == pytest.approx(curve["tpr"][j])
        assert np.mean(d[~same] < t) == pytest.approx(curve["fpr"][j])


@pytest.mark.parametrize(
    ("distances", "issame", "expected"),
    [
        ([0.5] * 6, [True, False] * 3, 0.5),  # all equal
        ([0.1, 0.2, 0.8, 0.9], [True, True, False, False], 1.0),  # separable
        ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 0.0),  # inverted
        ([0.3, 0.3, 0.3, 0.9], [True, False, False, False], 2 / 3),  # tie across classes
    ],
)
def test_auc_adversarial_cases(distances, issame, expected) -> None:
    d, same = np.array(distances), np.array(issame)
    assert roc_auc_score(same, -d) == pytest.approx(expected)
    assert verification_metrics(d, same, n_folds=2)["auc"] == pytest.approx(expected)


@pytest.mark.parametrize("label", [True, False])
def test_single_class_gives_null_auc_but_accuracy(label: bool) -> None:
    d = np.linspace(0, 1, 40)
    result = verification_metrics(d, np.full(40, label))
    assert result["auc"] is None and result["eer"] is None
    assert all(v is None for v in result["tar_at_far"].values())
    assert all(v is None for v in result["val_at_far"].values())
    assert result["accuracy"] == 1.0
    assert roc_curve(d, np.full(40, label)) is None
    json.dumps(result, allow_nan=False)


def test_roc_is_subsampled_with_endpoints() -> None:
    rng = np.random.default_rng(0)
    same = rng.random(5000) < 0.5
    curve = roc_curve(rng.random(5000), same)
    assert 2 <= len(curve["fpr"]) <= 1000
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)


# --------------------------------------------------------------------------- k-fold accuracy


@pytest.mark.parametrize("seed", range(3))
def test_kfold_accuracy_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d, same = tied_pairs(rng, 300)
    fold = np.arange(300) * 10 // 300
    result = verification_metrics(d, same)
    expected = brute_kfold(d, same, fold)
    assert result["accuracy"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(np.std(expected), abs=1e-12)
    best = brute_best_threshold(d, same)
    assert np.isfinite(best)
    assert result["threshold"] == pytest.approx(best, abs=1e-12)
    assert result["folds"] == 10 and result["n_pairs"] == 300 and result["held_out"]


def test_kfold_uses_given_folds() -> None:
    rng = np.random.default_rng(7)
    same = rng.random(200) < 0.5
    d = rng.normal(1.0 - 0.6 * same, 0.5)
    fold = rng.integers(3, 8, 200)  # interleaved, non-contiguous ids
    result = verification_metrics(d, same, folds=fold)
    assert result["folds"] == 5
    assert result["accuracy"] == pytest.approx(np.mean(brute_kfold(d, same, fold)), abs=1e-12)
    contiguous = verification_metrics(d, same, n_folds=5)
    assert contiguous["accuracy"] != result["accuracy"]


def test_accuracy_with_all_distances_equal_and_single_fold() -> None:
    same = np.array([True] * 7 + [False] * 3)
    result = verification_metrics(np.full(10, 0.4), same, folds=np.zeros(10, dtype=int))
    assert not result["held_out"] and result["folds"] == 1
    assert result["accuracy"] == pytest.approx(0.7)  # everything predicted "same"
    assert result["threshold"] > 0.4
    assert result["eer"] == pytest.approx(0.5)


def test_ties_are_classified_together() -> None:
    d = np.array([0.1, 0.5, 0.5, 0.5, 0.9])
    same = np.array([True, True, False, False, False])
    t = verification_metrics(d, same, n_folds=1)["threshold"]
    assert t < 0.5 or t > 0.5  # never splits the tied group
    assert 0.1 < t < 0.5


def test_held_out_distance_equal_to_threshold_is_rejected() -> None:
    # fold 1's training (fold 0) has distances 0 and 1 only: threshold 0.5, and fold 1
    # holds a different pair at exactly 0.5, which "d < threshold" rejects.
    d = np.array([0.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0])
    same = np.array([True, True, False, False, False, True, False])
    fold = np.array([0, 0, 0, 0, 1, 1, 1])
    assert verification_metrics(d, same, folds=fold)["accuracy"] == 1.0


# --------------------------------------------------------------------------- EER, FAR


def test_eer_sanity() -> None:
    rng = np.random.default_rng(0)
    same = np.arange(20000) % 2 == 0
    separable = np.where(same, rng.random(20000), 2 + rng.random(20000))
    assert verification_metrics(separable, same)["eer"] == pytest.approx(0.0, abs=1e-12)
    identical = rng.random(20000)
    assert verification_metrics(identical, same)["eer"] == pytest.approx(0.5, abs=0.02)


def test_tar_and_val_at_far_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    d, same = tied_pairs(rng, 600)
    d = d + rng.normal(0, 0.05, 600)  # break most ties
    fold = np.arange(600) * 5 // 600
    fars = (0.1, 0.05, 1e-3)
    result = verification_metrics(d, same, n_folds=5, fars=fars)
    n_neg = int((~same).sum())
    assert n_neg < 1000  # 1e-3 is not resolvable
    assert result["tar_at_far"][1e-3] is None and result["val_at_far"][1e-3] is None
    for far in fars[:2]:
        t = brute_far_threshold(d, same, far)
        assert result["tar_at_far"][far] == pytest.approx(np.mean(d[same] < t))
        vals, fars_seen = [], []
        for f in range(5):
            tf = brute_far_threshold(d[fold != f], same[fold != f], far)
            test_d, test_s = d[fold == f], same[fold == f]
            vals.append(np.mean(test_d[test_s] < tf))
            fars_seen.append(np.mean(test_d[~test_s] < tf))
        assert result["val_at_far"][far]["val"] == pytest.approx(np.mean(vals))
        assert result["val_at_far"][far]["far"] == pytest.approx(np.mean(fars_seen))
    text = json.dumps(result, allow_nan=False)
    assert '"0.1"' in text


def test_verification_input_errors() -> None:
    with pytest.raises(ValueError, match="equal length"):
        verification_metrics(np.zeros(3), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        verification_metrics(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="no pairs"):
        verification_metrics(np.zeros(0), np.zeros(0, dtype=bool))


def test_verification_accepts_tensors() -> None:
    d = torch.tensor([0.1, 0.2, 0.7, 0.9])
    same = torch.tensor([True, True, False, False])
    assert verification_metrics(d, same, n_folds=2)["auc"] == 1.0


# --------------------------------------------------------------------------- knn


def reference_knn(x: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Full matrix, self masked, stable sort: ties by lower index."""
    full = pairwise_distances(x, x, metric)
    full.fill_diagonal_(float("inf"))
    d, i = torch.sort(full, dim=1, stable=True)
    return d[:, :k], i[:, :k]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_chunked_matches_full_matrix(metric: str) -> None:
    x = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    x[10] = x[20]  # a duplicate pair
    ref_d, ref_i = reference_knn(x, 9, metric)
    for chunk in (1, 7, 60):
        d, i = knn(x, k=9, metric=metric, chunk_size=chunk)
        assert torch.equal(i, ref_i), chunk
        torch.testing.assert_close(d, ref_d, atol=1e-6, rtol=0)
    _, i = knn(x, k=1, metric=metric)
    assert i[10, 0] == 20 and i[20, 0] == 10  # duplicates stay, only self is excluded


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
def test_knn_exact_ties_identical_for_any_chunk_size(metric: str) -> None:
    gen = torch.Generator().manual_seed(1)
    if metric == "cosine":  # +-e_i: every cosine is exactly -1, 0 or 1
        axes = torch.randint(0, 4, (50,), generator=gen)
        signs = torch.randint(0, 2, (50,), generator=gen) * 2.0 - 1.0
        x = torch.eye(4)[axes] * signs[:, None]
    else:  # integer grid: exact arithmetic, many duplicates and ties
        x = torch.randint(-1, 2, (50, 3), generator=gen).float()
    ref_d, ref_i = reference_knn(x, 12, metric)
    for chunk in (1, 7, 50):
        d, i = knn(x, k=12, metric=metric, chunk_size=chunk)
        assert torch.equal(i, ref_i), chunk
        assert torch.equal(d, ref_d), chunk


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_long_rows_two_stage_selection_is_exact(metric: str) -> None:
    # 2,001 gallery columns: long enough for the blocked first stage (and a ragged tail)
    gen = torch.Generator().manual_seed(4)
    if metric == "cosine":
        x = torch.randn(2001, 8, generator=gen)
        x[1500:1600] = x[:100]  # duplicates
    else:
        x = torch.randint(0, 40, (2001, 2), generator=gen).float()  # many exact ties
    ref_d, ref_i = reference_knn(x, 6, metric)
    d, i = knn(x, k=6, metric=metric, chunk_size=300)
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(d, ref_d, atol=1e-6, rtol=0)


def test_knn_all_points_equal_orders_by_index() -> None:
    x = torch.ones(6, 4)
    d, i = knn(x, k=5, metric="euclidean", chunk_size=4)
    expected = torch.tensor([[j for j in range(6) if j != q] for q in range(6)])
    assert torch.equal(i, expected) and torch.all(d == 0)


def test_knn_with_gallery_and_errors() -> None:
    q = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    d, i = knn(q, g, k=3, metric="euclidean", chunk_size=1)
    assert i.tolist() == [[1, 0, 2], [2, 0, 1]]
    assert d.tolist() == [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="k must be"):
        knn(q, k=2)  # only one other item
    with pytest.raises(ValueError, match="metric"):
        knn(q, g, k=1, metric="manhattan")


# --------------------------------------------------------------------------- retrieval


def test_retrieval_matches_brute_force_with_ties_and_singletons() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (90, 3), generator=gen).float()  # integer grid: exact ties
    labels = np.random.default_rng(2).integers(0, 12, 90)
    labels[:5] = [100, 101, 102, 103, 104]  # singleton classes
    ks = (1, 2, 4, 8, 200)
    expected = brute_retrieval(x, labels, ks, "euclidean")
    for chunk in (1, 7, 90):
        result = retrieval_metrics(x, labels, ks=ks, metric="euclidean", chunk_size=chunk)
        assert result["n_excluded"] == 5 and result["n_queries"] == 85
        assert result["recall_at_k"][200] == 1.0
        for key in ("precision_at_1", "r_precision", "map_at_r"):
            assert result[key] == pytest.approx(expected[key], abs=1e-12), key
        for k in ks:
            assert result["recall_at_k"][k] == pytest.approx(expected["recall_at_k"][k])


def test_retrieval_matches_brute_force_cosine() -> None:
    gen = torch.Generator().manual_seed(3)
    labels = np.random.default_rng(3).integers(0, 8, 120)
    centres = torch.randn(8, 16, generator=gen)
    x = centres[labels] + 1.5 * torch.randn(120, 16, generator=gen)
    x[7] = x[3]  # a duplicate
    expected = brute_retrieval(x, labels, (1, 3, 10), "cosine")
    result = retrieval_metrics(x, labels, ks=(1, 3, 10), chunk_size=16)
    for key in ("precision_at_1", "r_precision", "map_at_r"):
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    assert result["recall_at_k"] == pytest.approx(expected["recall_at_k"])
    assert 0 < result["map_at_r"] < 1
    json.dumps(result, allow_nan=False)


def test_retrieval_perfect_clusters_and_all_singletons() -> None:
    labels = np.repeat(np.arange(4), 5)
    x = torch.eye(4)[labels] + 0.01 * torch.randn(20, 4, generator=torch.Generator())
    result = retrieval_metrics(x, labels, ks=(1, 4))
    assert result["map_at_r"] == pytest.approx(1.0) and result["r_precision"] == 1.0
    none = retrieval_metrics(torch.randn(5, 3), np.arange(5))
    assert none["n_queries"] == 0 and none["n_excluded"] == 5 and none["map_at_r"] is None
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(torch.randn(5, 3), np.arange(4))
