"""Retrieval metrics against a brute-force loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facetrip.metrics.knn import knn
from facetrip.metrics.retrieval import retrieval_metrics, retrieval_metrics_and_top1
from tests.metrics.references import brute_retrieval

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
    result = retrieval_metrics(x, labels, ks=(1, 3, 10), metric="cosine", chunk_size=16)
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


# --------------------------------------------------------------------------- top-1 of the pass


def _grid_and_labels(metric: str, n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Exactly representable distances (many exact ties), singleton classes at the front."""
    gen = torch.Generator().manual_seed(seed)
    if metric == "cosine":  # +-e_i: every cosine is exactly -1, 0 or 1
        axes = torch.randint(0, 4, (n,), generator=gen)
        signs = torch.randint(0, 2, (n,), generator=gen) * 2.0 - 1.0
        x = torch.eye(4)[axes] * signs[:, None]
    else:
        x = torch.randint(0, 3, (n, 3), generator=gen).float()
    labels = np.random.default_rng(seed).integers(0, 9, n)
    labels[:4] = [100, 101, 102, 103]
    return x, labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_top1_of_the_retrieval_pass_equals_knn_k1_with_ties(metric: str) -> None:
    x, labels = _grid_and_labels(metric, 90, 5)
    expected = knn(x, k=1, metric=metric)[1][:, 0].numpy()
    ks = (1, 3, 8)
    for chunk in (1, 7, 90):
        metrics, top1 = retrieval_metrics_and_top1(x, labels, ks, metric=metric, chunk_size=chunk)
        assert top1.dtype == np.int64 and top1.shape == (90,)
        np.testing.assert_array_equal(top1, expected)  # singletons included
        assert metrics == retrieval_metrics(x, labels, ks, metric=metric, chunk_size=chunk)


def test_top1_ties_go_to_the_lower_index_and_edge_cases() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2, 3])
    metrics, top1 = retrieval_metrics_and_top1(torch.ones(7, 4), labels, ks=(1,))
    np.testing.assert_array_equal(top1, [1, 0, 0, 0, 0, 0, 0])  # all at distance 0
    assert metrics["n_excluded"] == 2 and metrics["precision_at_1"] == 0.0  # 0 is nobody's mate
    # float embeddings with duplicates, long rows (two-stage selection), all singletons
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1500, 8, generator=gen)
    x[1000:1100] = x[:100]
    for metric in ("euclidean", "cosine"):
        expected = knn(x, k=1, metric=metric, chunk_size=256)[1][:, 0].numpy()
        for labels in (np.arange(1500) % 37, np.arange(1500)):
            _, top1 = retrieval_metrics_and_top1(x, labels, (1, 2), metric, chunk_size=256)
            np.testing.assert_array_equal(top1, expected)
    metrics, top1 = retrieval_metrics_and_top1(torch.randn(1, 3), [0], ks=(1,))
    assert top1.tolist() == [-1] and metrics["n_queries"] == 0
