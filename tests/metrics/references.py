"""Slow, obviously correct references for the metric tests (brute-force loops)."""

from __future__ import annotations

import numpy as np
import torch

from facetrip.loss.distances import pairwise_distances


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




def reference_knn(x: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Full matrix, self masked, stable sort: ties by lower index."""
    full = pairwise_distances(x, x, metric)
    full.fill_diagonal_(float("inf"))
    d, i = torch.sort(full, dim=1, stable=True)
    return d[:, :k], i[:, :k]
