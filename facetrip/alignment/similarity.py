"""Similarity transforms: the least-squares fit of five landmarks onto the template, and the
antialiased warp that cuts the aligned crop out of the photo.

A similarity transform is ``dst = s * R @ src + t`` (rotation ``R``, scale ``s > 0``, no
reflection, no shear), written as the (2, 3) matrix ``[s*R | t]``. Pixel coordinates have
integer values at pixel centres throughout (as the template and the detector's landmarks).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as tnf
from torchvision.transforms.v2 import functional as F


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform that maps ``src`` onto ``dst`` with the least squared error
    (Umeyama 1991, reflection excluded).

    Args:
        src: (N, 2) points, N >= 2, not all equal.
        dst: (N, 2) points they should land on.

    Returns:
        (2, 3) float64 matrix ``M`` with ``dst ~= src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N, 2) point sets, N >= 2; got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 0:
        raise ValueError("the source points are all the same point")
    u, sv, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = float((sv * d).sum() / src_var)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) ``points`` mapped by the (2, 3) affine ``matrix``."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])


def _crop_and_shrink(image: torch.Tensor, to_out: np.ndarray, size: int
                     ) -> tuple[torch.Tensor, np.ndarray]:
    """Cut the part of ``image`` the crop sees (with a margin) and, when the transform shrinks,
    resize it with antialiasing to about the crop's scale; returns the new image and the
    transform from its pixels to the crop's."""
    height, width = image.shape[-2:]
    inverse = np.linalg.inv(to_out)
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1],
                        [size - 0.5, size - 0.5, 1]]).T
    seen = (inverse @ corners)[:2]
    scale = float(np.sqrt(abs(np.linalg.det(to_out[:2, :2]))))
    margin = 2.0 + 2.0 / scale
    left = int(np.clip(np.floor(seen[0].min() - margin), 0, width - 1))
    top = int(np.clip(np.floor(seen[1].min() - margin), 0, height - 1))
    right = int(np.clip(np.ceil(seen[0].max() + margin), left + 1, width))
    bottom = int(np.clip(np.ceil(seen[1].max() + margin), top + 1, height))
    image = image[..., top:bottom, left:right]
    shift = np.array([[1.0, 0, left], [0, 1.0, top], [0, 0, 1.0]])  # crop pixels -> image
    to_out = to_out @ shift
    if scale < 1.0:
        h, w = image.shape[-2:]
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        image = F.resize(image, [new_h, new_w], antialias=True)
        fx, fy = new_w / w, new_h / h  # pixel centres: x' = (x + 0.5) * fx - 0.5
        resized = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])
        to_out = to_out @ np.linalg.inv(resized)
    return image, to_out


def warp(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """The ``size`` x ``size`` crop that ``matrix`` maps ``image`` onto: output pixel ``p``
    takes the (bilinear) value of the image at ``M^-1 p``; where the transform shrinks, the
    image is first resized with an antialiasing filter, so fine detail does not alias.
    Outside the image is black (as insightface's crops).

    Args:
        image: (C, H, W) uint8.
        matrix: (2, 3) transform from image pixels to crop pixels (e.g. :func:`fit_similarity`).
        size: side of the crop.

    Returns:
        (C, size, size) uint8.
    """
    source, to_out = _crop_and_shrink(image, _homogeneous(matrix), size)
    height, width = source.shape[-2:]
    inverse = torch.from_numpy(np.linalg.inv(to_out)[:2])  # crop pixels -> source pixels
    coords = torch.arange(size, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ inverse.T  # (S, S, 2): x, y
    grid[..., 0] = (2 * grid[..., 0] + 1) / width - 1  # align_corners=False normalisation
    grid[..., 1] = (2 * grid[..., 1] + 1) / height - 1
    out = tnf.grid_sample(source[None].float(), grid[None].float(), mode="bilinear",
                          padding_mode="zeros", align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)
