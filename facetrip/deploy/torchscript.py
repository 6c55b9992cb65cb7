"""The TorchScript export: :class:`ExportedEmbedder`, the module the file holds (the network and
the run's whole preprocessing, needing nothing but torch), its bytes and loading them back.

No ``from __future__ import annotations`` here: TorchScript reads the annotations at run time.
"""

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from facetrip.data.crop import crop_region
from facetrip.data.transforms import GREY_WEIGHTS, Normalize, Preprocess
from facetrip.errors import UserError
from facetrip.model import EmbeddingNet


class ExportedEmbedder(nn.Module):
    """The deployable TorchScript module.

    ``forward(images)``: ``(B, 3, S, S)`` float images already normalised with the sidecar's
    mean/std -> ``(B, D)`` L2-normalised embeddings.
    ``preprocess(images)``: ``(B, 3, H, W)`` uint8 RGB -> the normalised ``(B, 3, S, S)`` input,
    the same steps as facetrip's own :class:`~facetrip.data.transforms.Preprocess` (face box or
    centre crop, antialiased bilinear resize to 8 bits, optional grey, normalise), so a
    caller needs nothing but torch and a decoded image.
    ``embed(images)``: ``(B, 3, H, W)`` uint8 -> ``(B, D)``, both steps.
    ``embed_preprocessed(images)``: uint8 ``(B, 3, S, S)`` face crops already cropped, resized
    (and made grey) as the run's preprocessing does -> ``(B, D)``.
    """

    crop_box: list[float]  # TorchScript needs the element type of a possibly empty list
    grey_weights: list[float]

    def __init__(self, model: EmbeddingNet, preprocess: Preprocess, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.net = model
        self.image_size = preprocess.size
        self.crop_fraction = preprocess.crop_fraction
        self.crop_box = list(preprocess.crop_box or [])  # [] = centre crop
        self.grayscale = preprocess.grayscale
        self.grey_weights = list(GREY_WEIGHTS)
        self.normalize = Normalize(mean, std)  # the training path's own arithmetic

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    @torch.jit.export
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        top, left, h, w = crop_region(images.shape[-2], images.shape[-1],
                                      self.crop_fraction, self.crop_box)
        x = images[:, :, top : top + h, left : left + w]
        size = [self.image_size, self.image_size]
        if h != self.image_size or w != self.image_size:
            if x.device.type == "cpu":  # torch's native uint8 kernel, as torchvision uses
                x = nn.functional.interpolate(x, size=size, mode="bilinear",
                                              align_corners=False, antialias=True)
            else:  # no uint8 kernel: float, rounded back to 8 bits
                x = nn.functional.interpolate(x.float(), size=size, mode="bilinear",
                                              align_corners=False, antialias=True)
                x = x.round().clamp(0.0, 255.0)
        if self.grayscale:  # ITU-R 601 luma truncated to 8 bits, as torchvision
            r, g, b = self.grey_weights[0], self.grey_weights[1], self.grey_weights[2]
            f = x.float()
            grey = f[:, 0:1] * r + f[:, 1:2] * g + f[:, 2:3] * b
            x = grey.trunc().expand(-1, 3, -1, -1)
        return self.normalize(x)

    @torch.jit.export
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(images))

    @torch.jit.export
    def embed_preprocessed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


def torchscript_bytes(model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
                      std: Sequence[float]) -> bytes:
    """The TorchScript file of :class:`ExportedEmbedder` (CPU, eval mode)."""
    module = ExportedEmbedder(model.cpu().eval(), pre, mean, std).eval()
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; it still works
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(module)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def load_torchscript(source: str | Path | bytes,
                     device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load an exported TorchScript module (UserError when it cannot be read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
            return torch.jit.load(f, map_location=device).eval()
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = "" if isinstance(source, bytes) else f" {source}"
            raise UserError(f"cannot load TorchScript model{where}: {first}") from None
