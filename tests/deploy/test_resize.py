"""The fixed-point resize matrices give torchvision's antialiased uint8 resize bit for bit."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from facetrip.deploy.resize import resize_weights


def resize_uint8(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 (..., H, W)`` -> ``uint8 (..., size[0], size[1])``, pixel for pixel as
    torchvision's antialiased bilinear ``resize`` (what the ONNX graph computes)."""
    x = images.astype(np.int64)
    if x.shape[-1] != size[1]:
        m, p = resize_weights(x.shape[-1], size[1])
        x = np.clip((x @ m.T + (1 << (p - 1))) >> p, 0, 255)
    if x.shape[-2] != size[0]:
        m, p = resize_weights(x.shape[-2], size[0])
        x = np.clip((m @ x + (1 << (p - 1))) >> p, 0, 255)
    return x.astype(np.uint8)


@pytest.mark.parametrize("h, w, size", [
    (250, 250, 112), (150, 150, 112), (64, 64, 32), (64, 64, 112), (37, 53, 32), (100, 80, 64),
    (13, 200, 17), (300, 9, 64), (112, 112, 112), (1000, 700, 112), (150, 151, 112), (24, 24, 16),
])
def test_resize_matches_torchvision_exactly(h, w, size):
    rng = np.random.default_rng(h * 1000 + w)
    noise = rng.integers(0, 256, (2, 3, h, w), dtype=np.uint8)
    ramp = np.broadcast_to((np.arange(w) * 255 // max(w - 1, 1)).astype(np.uint8), (1, 3, h, w))
    images = np.concatenate([noise, ramp])
    expected = F.resize(torch.from_numpy(images), [size, size], antialias=True).numpy()
    np.testing.assert_array_equal(resize_uint8(images, (size, size)), expected)


def test_weights_rows_sum_to_one_in_fixed_point():
    for n_in, n_out in ((250, 112), (32, 112), (7, 3)):
        m, p = resize_weights(n_in, n_out)
        assert m.shape == (n_out, n_in) and 0 < p <= 22
        assert np.all(np.abs(m.sum(1) - (1 << p)) <= n_in)  # rounding of each weight
        with pytest.raises(ValueError):
            resize_weights(0, n_out)
