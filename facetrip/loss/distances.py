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
        ``(N, M)`` distances in the dtype of ``x`` promoted to at least float32 (``y`` is cast
        to it; gradients flow back to both ``x`` and ``y``).  The euclidean distance has a
        finite (zero) gradient where two points coincide: ``sqrt`` is only evaluated on
        strictly positive squared distances.
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

    if distance == "squared_euclidean":
        x2 = (x * x).sum(1, keepdim=True)
        y2 = x2 if same else (y * y).sum(1, keepdim=True)
        sq = (x2 + y2.T - 2.0 * (x @ y.T)).clamp_min(0.0)
        return sq.fill_diagonal_(0.0) if same else sq
    return _Euclidean.apply(x, y, same)


class _Euclidean(torch.autograd.Function):
    """L2 distance matrix with a hand-written backward.

    Autograd of ``sqrt(x2 + y2 - 2 x y^T)`` keeps about ten ``(N, M)`` temporaries alive and
    needs masking to avoid ``sqrt'(0) = inf``; here the forward works in place on one buffer and
    the backward uses ``d/dx_i = sum_j g_ij (x_i - y_j) / d_ij`` with the ``j`` where
    ``d_ij = 0`` contributing nothing.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, same: bool) -> torch.Tensor:
        x2 = (x * x).sum(1, keepdim=True)
        y2 = x2 if same else (y * y).sum(1, keepdim=True)
        d = torch.addmm(x2, x, y.T, alpha=-2.0).add_(y2.T).clamp_min_(0.0)
        if same:
            d.fill_diagonal_(0.0)
        d.sqrt_()
        ctx.same = same
        ctx.save_for_backward(x, y, d)
        return d

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, y, d = ctx.saved_tensors
        g = torch.where(d > 0, grad / d, torch.zeros((), dtype=d.dtype, device=d.device))
        # d/dy_j = sum_i g_ij (y_j - x_i) / d_ij; skipped for a side that needs no gradient
        # (detached references cost no (M, N) x (N, D) product).
        need_x, need_y = ctx.same or ctx.needs_input_grad[0], ctx.same or ctx.needs_input_grad[1]
        grad_x = x * g.sum(1, keepdim=True) - g @ y if need_x else None
        grad_y = y * g.sum(0).unsqueeze(1) - g.T @ x if need_y else None
        if ctx.same:
            return grad_x + grad_y, None, None
        return grad_x, grad_y, None
