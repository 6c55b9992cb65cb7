"""torch's antialiased bilinear resize of ``uint8`` images as two fixed-point matrices.

facetrip's preprocessing resizes ``uint8`` images with torchvision (``F.resize(...,
antialias=True)``), whose CPU kernel is separable and works in fixed point: per output pixel,
float weights of a triangle filter widened by the scale factor, normalised, rounded to
integers with ``precision`` fractional bits; each pass sums ``weight x pixel`` from
``2 ** (precision - 1)`` (rounding), shifts right by ``precision`` and clamps to ``0..255``;
the horizontal pass runs first and its result is ``uint8`` again.

:func:`resize_weights` computes those integer weights the same way (the same float64
operations in the same order), so an exported graph without torch's kernel (ONNX) resizes to
exactly the same pixels with two matrix products (tested against torchvision bit for bit,
``tests/deploy/test_resize.py``).
"""

from __future__ import annotations

import numpy as np

_MAX_PRECISION = 22  # as torch: weights use at most 22 fractional bits and fit in int16


def resize_weights(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
    """``(weights (n_out, n_in) int64, precision)`` of resizing one axis from ``n_in`` to
    ``n_out`` pixels (antialiased bilinear, ``align_corners=False``).

    Output pixel ``i`` is ``clamp((weights[i] @ x + 2 ** (precision - 1)) >> precision, 0,
    255)``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got {n_in} -> {n_out}")
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0  # bilinear: interp_size 2, times the scale
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    rows: list[tuple[int, list[float]]] = []
    wt_max = 0.0
    for i in range(n_out):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(int(center + support + 0.5), n_in) - xmin
        weights = []
        for j in range(xsize):
            x = abs((j + xmin - center + 0.5) * invscale)
            weights.append(1.0 - x if x < 1.0 else 0.0)
        total = 0.0
        for w in weights:  # sequential, as the C loop: the float sum depends on the order
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        wt_max = max([wt_max, *weights])
        rows.append((xmin, weights))
    precision = _MAX_PRECISION
    for p in range(_MAX_PRECISION):
        if int(0.5 + wt_max * (1 << (p + 1))) >= (1 << 15):
            precision = p
            break
    matrix = np.zeros((n_out, n_in), dtype=np.int64)
    for i, (xmin, weights) in enumerate(rows):
        for j, w in enumerate(weights):
            scaled = w * (1 << precision)
            matrix[i, xmin + j] = int(-0.5 + scaled) if w < 0 else int(0.5 + scaled)
    return matrix, precision
