"""The images every export is checked on, and facetrip's own embeddings of them.

:func:`parity_images`: up to :data:`PARITY_IMAGES` images of the run's dataset when it is
there, else seeded synthetic ones; :func:`reference_embeddings`: what the checkpoint makes of
them with facetrip's own preprocessing (the figure an exported file must match).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from facetrip.alignment.crop import AlignSpec
from facetrip.data.decode import ImageError
from facetrip.data.source import dataset_items
from facetrip.data.transforms import Normalize, Preprocess
from facetrip.model import EmbeddingNet

PARITY_IMAGES = 16


def run_images(root: str | Path | None, n: int = PARITY_IMAGES,
               size: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """Up to ``n`` decoded ``uint8 (3, H, W)`` images of the dataset ``root`` (a folder or a
    ``.rec``), spread over it (only those of ``size = (H, W)`` when given); [] when ``root``
    is not there."""
    reader, items = dataset_items(root)
    step = max(1, len(items) // (4 * n))
    found: list[torch.Tensor] = []
    for item in items[::step]:
        try:
            image = reader.decode(item)
        except ImageError:
            continue
        if size is None or tuple(image.shape[-2:]) == tuple(size):
            found.append(image)
        if len(found) == n:
            break
    return found


def synthetic_images(n: int, sizes: Sequence[tuple[int, int]],
                     seed: int = 0) -> list[torch.Tensor]:
    """``n`` seeded ``uint8 (3, H, W)`` test images cycling through ``sizes``: smooth
    gradients plus noise, so the crop and resize have structure to preserve."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        coarse = torch.rand(1, 3, 4, 4, generator=gen) * 255
        smooth = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
        noise = torch.randn(3, h, w, generator=gen) * 20
        images.append((smooth + noise).round().clamp(0, 255).to(torch.uint8))
    return images


def aligned_images(images: Sequence[torch.Tensor], align: AlignSpec) -> list[torch.Tensor]:
    """The aligned crops of ``images`` (those with a face)."""
    crops = []
    for image in images:
        try:
            crops.append(Preprocess(align.size, align=align)(image))
        except ImageError:
            continue
    return crops


def parity_images(root: str | Path | None, input_size: int,
                  size: tuple[int, int] | None = None, align: AlignSpec | None = None
                  ) -> tuple[list[torch.Tensor], str]:
    """``(images, where they come from)``: :data:`PARITY_IMAGES` of the dataset ``root`` (of
    ``size = (H, W)`` only, when given), else seeded synthetic ones of ``size`` or of two
    sizes around the model's ``input_size``. With ``align`` (a model trained on aligned
    crops, whose exports take aligned crops), the dataset's images aligned, else synthetic
    ones of the aligned side."""
    if align is not None:
        images = aligned_images(run_images(root, PARITY_IMAGES), align)
        if len(images) >= 2:
            return images, f"aligned images of the run's dataset {root}"
        size = (align.size, align.size)
    else:
        images = run_images(root, PARITY_IMAGES, size)
    if len(images) >= 2:
        return images, f"images of the run's dataset {root}"
    sizes = [size] if size else [(input_size * 3 // 2, input_size * 5 // 4), (input_size,) * 2]
    return (synthetic_images(PARITY_IMAGES, sizes),
            "synthetic images (the run's dataset is not here)")


def source_size(root: str | Path | None, default: int) -> tuple[int, int]:
    """The most common ``(H, W)`` among up to 64 images of the dataset ``root`` (a folder or
    a ``.rec``; headers only); ``(default, default)`` when it is not there."""
    reader, items = dataset_items(root)
    sizes: Counter = Counter()
    for item in items[:: max(1, len(items) // 64)][:64]:
        try:
            width, height = reader.size(item)
        except ImageError:
            continue
        sizes[(height, width)] += 1
    return sizes.most_common(1)[0][0] if sizes else (default, default)


@torch.inference_mode()
def reference_embeddings(model: EmbeddingNet, pre: Preprocess, mean: Sequence[float],
                         std: Sequence[float], images: Sequence[torch.Tensor]) -> torch.Tensor:
    """facetrip's own path: :class:`Preprocess` each ``uint8 (3, H, W)`` image, normalise, run
    the network on the CPU -> ``(N, D)``."""
    x = Normalize(mean, std)(torch.stack([pre(img) for img in images]))
    return model.cpu().eval()(x)


def by_size(images: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """Images grouped into batches of one size: ``[(positions, uint8 (b, 3, H, W))]``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    return [(idx, torch.stack([images[i] for i in idx])) for idx in groups.values()]
