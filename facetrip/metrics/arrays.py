"""Array conversions shared by the metric functions: numpy or torch in, checked arrays out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: Any) -> np.ndarray:
    """Array-like or tensor -> numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_embeddings(x: Any, device: torch.device | None) -> torch.Tensor:
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
