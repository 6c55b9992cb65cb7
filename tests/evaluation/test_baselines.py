"""The eigenfaces baseline against an independent scikit-learn PCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from facetrip.data.transforms import GREY_WEIGHTS
from facetrip.evaluation.baselines import Eigenfaces, GreyPixels, grey_pixels


def faces(n: int, seed: int, size: int = 12) -> torch.Tensor:
    """``(n, 3, size, size)`` images with a low-rank structure plus noise, colour channels
    that differ (so the grey weights matter)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, 3, size, size, generator=g)
    coef = torch.randn(n, 5, generator=g) * torch.tensor([5.0, 4, 3, 2, 1])
    return torch.einsum("nk,kchw->nchw", coef, basis) + 0.1 * torch.randn(n, 3, size, size,
                                                                            generator=g)


def test_grey_pixels_weigh_the_channels_and_keep_grey_images() -> None:
    x = faces(4, 0)
    expected = sum(w * x[:, c] for c, w in enumerate(GREY_WEIGHTS)).flatten(1)
    torch.testing.assert_close(grey_pixels(x), expected)
    grey = x[:, :1].expand(-1, 3, -1, -1)
    torch.testing.assert_close(grey_pixels(grey), x[:, 0].flatten(1) * sum(GREY_WEIGHTS))
    assert GreyPixels()(x).shape == (4, 144)


@pytest.mark.parametrize(("n_fit", "n_components"), [(80, 10), (30, 100), (200, 144)])
def test_eigenfaces_equal_sklearn_whitened_pca_up_to_axis_signs(n_fit, n_components) -> None:
    fit, test = faces(n_fit, 1), faces(25, 2)
    model = Eigenfaces.fit(grey_pixels(fit), n_components)
    n = min(n_components, n_fit - 1, 144)
    assert model.components.shape == (n, 144)
    pca = PCA(n_components=n, whiten=True, svd_solver="full")
    pca.fit(grey_pixels(fit).double().numpy())
    ref = pca.transform(grey_pixels(test).double().numpy())
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ours = model(test).double().numpy()
    signs = np.sign(np.sum(ours * ref, axis=0))  # each axis is defined up to its sign
    np.testing.assert_allclose(ours * signs, ref, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_eigenfaces_need_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        Eigenfaces.fit(torch.zeros(1, 16))
