"""Pairwise distances between embeddings, safe to differentiate at zero distance."""

from __future__ import annotations

import torch

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def pairwise_distances(
    x: torch.Tensor, y: torch.Tensor | None = None, distance: str = "euclidean"
) -> torch.Tensor:
    """Distance matrix between the rows of ``x`` and the rows of ``y``.

    Args:
        x: ``(N, D)`` embeddings.
        y: ``(M, D)`` embeddings; ``None`` means ``x`` (then the diagonal is exactly 0).
        distance: ``"euclidean"`` (L2), ``"squared_euclidean"`` or ``"cosine"`` (1 - cos).

    Returns:
        ``(N, M)`` distances in the dtype of ``x`` promoted to at least float32.
        The euclidean distance has a finite (zero) gradient where two points coincide:
        ``sqrt`` is only evaluated on strictly positive squared distances.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    if x.dim() != 2 or (y is not None and (y.dim() != 2 or y.shape[1] != x.shape[1])):
        raise ValueError("pairwise_distances expects (N, D) and (M, D) tensors")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    same = y is None
    y = x if same else y.to(x.dtype)

    if distance == "cosine":
        xn = torch.nn.functional.normalize(x, dim=1)
        yn = xn if same else torch.nn.functional.normalize(y, dim=1)
        d = (1.0 - xn @ yn.T).clamp_min(0.0)
        if same:
            d = d.fill_diagonal_(0.0)
        return d

    x2 = (x * x).sum(1, keepdim=True)
    y2 = x2 if same else (y * y).sum(1, keepdim=True)
    sq = (x2 + y2.T - 2.0 * (x @ y.T)).clamp_min(0.0)
    if same:
        sq = sq.fill_diagonal_(0.0)
    if distance == "squared_euclidean":
        return sq
    zero = sq == 0
    # sqrt'(0) is infinite; evaluate it on 1 where the distance is 0, then zero those entries.
    return torch.sqrt(torch.where(zero, torch.ones_like(sq), sq)).masked_fill(zero, 0.0)
