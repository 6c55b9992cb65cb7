"""Image preprocessing: centre crop, resize, normalise, and light training augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2


class CenterCropFraction(torch.nn.Module):
    """Square centre crop whose side is ``fraction`` of the image's shorter side."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def forward(self, img: Image.Image) -> Image.Image:
        if self.fraction >= 1.0:
            return img
        side = max(1, int(round(min(img.size) * self.fraction)))
        return v2.functional.center_crop(img, [side, side])


def build_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    augment: bool = False,
) -> v2.Compose:
    """PIL RGB image -> normalised float tensor ``(3, image_size, image_size)``.

    With ``augment``: random horizontal flip, random resized crop keeping 80-100% of the face
    area, and mild brightness/contrast/saturation jitter (hue is left alone: skin and hair
    colour are identity cues).
    """
    steps: list[torch.nn.Module] = [CenterCropFraction(crop_fraction)]
    if augment:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
        ]
    else:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]
    return v2.Compose(steps)
