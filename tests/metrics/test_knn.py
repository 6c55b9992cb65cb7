"""Exact chunked kNN against a full-matrix stable sort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facetrip.loss.distances import pairwise_distances
from facetrip.metrics.knn import knn
from tests.metrics.references import reference_knn


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


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "squared_euclidean"])
def test_knn_distances_are_bit_identical_to_pairwise_distances(metric: str) -> None:
    x = torch.randn(80, 16, generator=torch.Generator().manual_seed(7))
    full = pairwise_distances(x, x, metric)
    d, i = knn(x, k=10, metric=metric, chunk_size=80)  # one chunk: the same matrix product
    assert torch.equal(d, full.gather(1, i))


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 150])
def test_knn_long_rows_tied_at_the_kth_neighbour(metric: str, k: int) -> None:
    # 2,500 points on a tiny grid: nearly every row ties at the k-th distance, and the tied
    # rows are redone in several batches
    gen = torch.Generator().manual_seed(8)
    x = torch.randint(0, 4, (2500, 2), generator=gen).float() + (metric == "cosine")
    ref_d, ref_i = reference_knn(x, k, metric)
    d, i = knn(x, k=k, metric=metric, chunk_size=200)
    assert torch.equal(i, ref_i) and torch.equal(d, ref_d)
