"""A map-style dataset over an :class:`ImageFolderIndex` that survives broken files."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageOps

from facetrip.data.folder import ImageFolderIndex

log = logging.getLogger(__name__)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB, applying its EXIF orientation.

    Grey, 16-bit, palette, RGBA (alpha dropped) and CMYK images are converted to 8-bit RGB.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            img = img.point(lambda v: v / 256).convert("L")
        return img.convert("RGB")


class FaceDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (image tensor, label)`` for the images of ``index``.

    A file that fails to decode (truncated, corrupted after the scan) is never fatal: it is
    logged, counted in ``failures`` (per process) and replaced by the next image of the same
    identity, so a PK batch keeps its shape.
    """

    def __init__(self, index: ImageFolderIndex, transform: Callable[[Image.Image], torch.Tensor]):
        self.index = index
        self.transform = transform
        self.failures = 0
        self._by_class: list[list[int]] = [[] for _ in index.classes]
        for i, label in enumerate(index.labels.tolist()):
            self._by_class[label].append(i)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label = int(self.index.labels[i])
        candidates = self._by_class[label]
        start = candidates.index(i)
        for offset in range(len(candidates)):
            j = candidates[(start + offset) % len(candidates)]
            path = self.index.root / self.index.paths[j]
            try:
                return self.transform(load_rgb(path)), label
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                self.failures += 1
                log.warning("skipping unreadable image %s (%s)", path, exc)
        raise RuntimeError(f"no image of identity {self.index.classes[label]!r} can be decoded")
