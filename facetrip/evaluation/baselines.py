"""The baselines a trained model must beat on the same pairs, each a module that runs through
the embedding loop of evaluation: raw pixels (:class:`PixelEmbedder`) and eigenfaces (Turk &
Pentland, 1991: whitened PCA of grey face images, fitted on training images; what a face tool scored
before learned embeddings).
"""

from __future__ import annotations

import torch
from torch import nn

from facetrip.data.transforms import GREY_WEIGHTS


def grey_pixels(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` normalised images -> ``(B, H W)`` float32 grey values (the channels
    weighted as in :data:`GREY_WEIGHTS`; a grey image's three equal channels give itself)."""
    weights = torch.tensor(GREY_WEIGHTS, dtype=torch.float32, device=images.device)
    return torch.einsum("bchw,c->bhw", images.float(), weights).flatten(1)


class GreyPixels(nn.Module):
    """:func:`grey_pixels` as a module, to collect the images an :class:`Eigenfaces` fits."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return grey_pixels(images)


class Eigenfaces(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, n)``: the grey image's coordinates on the first ``n``
    principal axes of the fitting images, each divided by its standard deviation (whitened),
    then L2-normalised (so euclidean distances rank pairs as cosine ones).

    Build with :meth:`fit`; the buffers ``mean (H W,)``, ``components (n, H W)`` and
    ``scale (n,)`` (1 / standard deviation) are the fitted model.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)
        self.register_buffer("scale", scale)

    @classmethod
    def fit(cls, pixels: torch.Tensor, n_components: int = 100) -> Eigenfaces:
        """Fit on ``pixels (N, H W)`` (from :class:`GreyPixels`): ``min(n_components, N - 1,
        H W)`` axes, the unbiased variance of each (as scikit-learn's ``PCA(whiten=True)``).

        Raises:
            ValueError: fewer than 2 images.
        """
        if pixels.ndim != 2 or pixels.shape[0] < 2:
            raise ValueError(f"eigenfaces need at least 2 images, got {tuple(pixels.shape)}")
        x = pixels.double()
        mean = x.mean(0)
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        n = min(n_components, x.shape[0] - 1, x.shape[1])
        std = s[:n] / (x.shape[0] - 1) ** 0.5
        return cls(mean.float(), vh[:n].float(), (1.0 / std.clamp_min(1e-12)).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = (grey_pixels(images) - self.mean) @ self.components.T * self.scale
        return nn.functional.normalize(z, dim=1)


class PixelEmbedder(nn.Module):
    """The raw-pixel baseline as an embedder: each image flattened, standardised (zero mean,
    unit variance per image) and L2-normalised, so its distances compare image content.

    ``(B, 3, H, W)`` float -> ``(B, 3 H W)``.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.flatten(1).float()
        x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)
        return nn.functional.normalize(x, dim=1)
