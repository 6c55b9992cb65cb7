"""Image preprocessing in two stages.

1. :class:`Preprocess` (per image, deterministic, cacheable): decode, optionally align the
   face (detect, warp onto the five-point template: :mod:`facetrip.alignment`), crop (centre
   or box crop), resize to the model input, optional greyscale -> ``uint8 (3, S, S)``. This is
   what the decoded cache stores.
2. :class:`BatchAugment` (per batch, in the DataLoader worker, ``uint8`` in and out): random
   resized crop and flip (one ``grid_sample``), colour jitter and random erasing, vectorised
   over the batch. Its randomness depends only on ``(seed, epoch, batch number)``, never on
   which worker ran it.
3. :class:`Normalize` (per batch, on the training device): ``uint8`` -> ``float32``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F

from facetrip.alignment.crop import AlignSpec, align_tensors, folder_alignment
from facetrip.alignment.detect import shared_detector
from facetrip.config import DataConfig
from facetrip.data.crop import crop_region
from facetrip.data.decode import ImageError, decode_bytes, decode_rgb

NO_FACE = "no face"
"""The skip reason of a photo in which alignment found no face."""

GREY_WEIGHTS = (0.2989, 0.587, 0.114)
"""ITU-R 601 luma weights of R, G, B, as torchvision (the exported module reads them)."""


@dataclass(frozen=True)
class Preprocess:
    """Crop the face, resize to ``size x size``, optionally make it grey.

    ``crop_box = (left, top, right, bottom)`` in fractions of the image width/height selects a
    fixed face box; otherwise a square centre crop of ``crop_fraction`` of the shorter side.
    With ``align``, the face is first detected and warped onto the five-point template
    (``align.size`` square) and the crop applies to that aligned crop.
    """

    size: int
    crop_fraction: float = 1.0
    crop_box: tuple[float, float, float, float] | None = None
    grayscale: bool = False
    align: AlignSpec | None = None

    def with_align(self, align: AlignSpec | None) -> Preprocess:
        """The same preprocessing with another alignment (``None``: the image as it is)."""
        return replace(self, align=align)

    def region(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(top, left, crop_height, crop_width)`` in pixels of a ``width x height`` image."""
        return crop_region(height, width, self.crop_fraction, list(self.crop_box or []))

    def reduction(self, width: int, height: int) -> int:
        """How many times larger than needed the crop of a ``width x height`` image is (1 when
        aligning: where the face is, and so how large, is not known before detection)."""
        if self.align is not None:
            return 1
        _, _, h, w = self.region(width, height)
        return max(1, min(h, w) // self.size)

    def __call__(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        """RGB image (PIL or ``uint8 (3, H, W)``) -> ``uint8 (3, size, size)``.

        Raises:
            ImageError: ``no face``, when aligning and the detector finds none.
        """
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(image.convert("RGB"))
        if self.align is not None:
            image = self._aligned(image)
        top, left, h, w = self.region(image.shape[-1], image.shape[-2])
        x = image[..., top : top + h, left : left + w]
        if (h, w) != (self.size, self.size):
            x = F.resize(x, [self.size, self.size], antialias=True)
        if self.grayscale:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        return x.contiguous()

    def _aligned(self, image: torch.Tensor) -> torch.Tensor:
        spec = self.align
        found = align_tensors([image], shared_detector(spec.method, spec.min_face), spec)[0]
        if found.crop is None:
            raise ImageError(NO_FACE)
        return found.crop

    def load(self, path: str | Path) -> torch.Tensor:
        """Decode ``path`` (at reduced scale when it is far larger than needed) and preprocess:
        ``uint8 (3, size, size)``. Raises :class:`~facetrip.data.decode.ImageError`."""
        return self(decode_rgb(path, self.reduction))

    def load_bytes(self, data: bytes | bytearray) -> torch.Tensor:
        """:meth:`load` of an encoded image held in memory (a RecordIO record, a ``.bin``
        image): ``uint8 (3, size, size)``. Raises :class:`~facetrip.data.decode.ImageError`."""
        return self(decode_bytes(data, self.reduction))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crop_box"] = list(self.crop_box) if self.crop_box is not None else None
        d["align"] = self.align.to_dict() if self.align is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """What :meth:`to_dict` wrote (a decoded cache's index)."""
        box = d.get("crop_box")
        return cls(int(d["size"]), float(d["crop_fraction"]),
                   tuple(float(v) for v in box) if box is not None else None,
                   bool(d["grayscale"]), align_from_dict(d.get("align")))


def choose_align(recorded: AlignSpec | None, align: bool | None) -> AlignSpec | None:
    """The alignment to apply: as the model ``recorded`` it (``align`` None), none
    (``False``: inputs already aligned), or forced (``True``: the recorded one, else the
    default 112-pixel one); a forced one checks the detector is installed."""
    if align is None:
        return recorded
    if not align:
        return None
    return recorded or align_from_dict(AlignSpec().to_dict())


def align_from_dict(d: dict | None) -> AlignSpec | None:
    """A recorded alignment (``None`` stays ``None``), its detector checked installed, so a
    missing ``align`` extra is one line before any image is read."""
    if d is None:
        return None
    spec = AlignSpec.from_dict(d)
    shared_detector(spec.method, spec.min_face)
    return spec


def preprocess_from_config(data: DataConfig) -> Preprocess:
    """The deterministic per-image preprocessing of a run's ``data`` section (what the
    decoded cache stores)."""
    box = tuple(data.crop_box) if data.crop_box is not None else None
    align = (align_from_dict(AlignSpec(data.align, data.align_size).to_dict())
             if data.align else None)
    return Preprocess(data.image_size, data.crop_fraction, box, data.grayscale, align)


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a model's input file into its input tensor, as one value: the
    per-image :class:`Preprocess` (crop, size, grey) and the normalisation ``mean``/``std``.
    It comes from a run's config (:meth:`from_config`), travels in checkpoints (their config)
    and in every export's sidecar (:meth:`to_fields` / :meth:`from_fields`)."""

    crop: Preprocess
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_config(cls, data: DataConfig) -> Preprocessing:
        """What a model trained with ``data`` expects of an input photo: its crop, and the
        alignment of ``data.align`` or of the ``facetrip align`` folder it was trained on."""
        crop = preprocess_from_config(data)
        if crop.align is None and data.root:
            crop = crop.with_align(folder_alignment(data.root))
        return cls(crop, tuple(float(v) for v in data.mean), tuple(float(v) for v in data.std))

    @classmethod
    def from_checkpoint(cls, ckpt: dict, data: DataConfig) -> Preprocessing:
        """What checkpoint ``ckpt`` records (``preprocessing``), else what its config says."""
        recorded = ckpt.get("preprocessing")
        return cls.from_fields(recorded) if recorded else cls.from_config(data)

    def for_images(self, root: str | Path | None) -> Preprocessing:
        """For the images under ``root``: not aligned again when ``root`` is a
        ``facetrip align`` output (its crops are aligned already)."""
        if root is not None and folder_alignment(root) is not None:
            return self.aligned(False)
        return self

    def aligned(self, align: bool | None) -> Preprocessing:
        """As recorded (``None``), forced to align (``True``: the recorded alignment, else the
        default one at 112 px), or on crops already aligned (``False``: no detection)."""
        spec = choose_align(self.crop.align, align)
        return self if spec == self.crop.align else replace(self,
                                                            crop=self.crop.with_align(spec))

    def normalize(self) -> Normalize:
        """``uint8 (B, 3, S, S)`` -> the model's normalised float input."""
        return Normalize(self.mean, self.std)

    def transform(self, augment: bool = False) -> FaceTransform:
        """One image -> normalised ``float32 (3, S, S)`` (see :class:`FaceTransform`)."""
        return FaceTransform(self.crop, self.normalize(),
                             BatchAugment(self.mean) if augment else None)

    def to_fields(self) -> dict:
        """The sidecar's preprocessing fields (plain JSON types); ``align`` only when the
        model aligns, so the fields (and fingerprints) of every other model stay as before."""
        fields = {
            "input_size": self.crop.size,
            "colour_order": "RGB",
            "crop_fraction": self.crop.crop_fraction,
            "crop_box": list(self.crop.crop_box) if self.crop.crop_box is not None else None,
            "grayscale": self.crop.grayscale,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }
        if self.crop.align is not None:
            fields["align"] = self.crop.align.to_dict()
        return fields

    @classmethod
    def from_fields(cls, meta: dict) -> Preprocessing:
        """What :meth:`to_fields` wrote (a sidecar), exactly as in training."""
        box = tuple(float(v) for v in meta["crop_box"]) if meta.get("crop_box") else None
        crop = Preprocess(int(meta["input_size"]), float(meta["crop_fraction"]), box,
                          bool(meta["grayscale"]), align_from_dict(meta.get("align")))
        return cls(crop, tuple(float(v) for v in meta["mean"]),
                   tuple(float(v) for v in meta["std"]))


def batch_seed(seed: int, epoch: int, batch: int, rank: int | None = None) -> int:
    """The augmentation seed of one batch: a function of ``(seed, epoch, batch number)`` only
    (and of the rank, for one rank's share of a distributed batch)."""
    key = [seed, epoch, batch, 0xA06] + ([] if rank is None else [rank])
    state = np.random.SeedSequence(key).generate_state(1, np.uint64)
    return int(state[0] >> 1)


class Normalize(nn.Module):
    """``uint8 (B, 3, H, W)`` (0..255) -> ``float32 (B, 3, H, W)``: ``(x / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        # buffers, so the exported TorchScript module carries them; not in any state dict
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift.to(images.device), images.float(),
                             self.scale.to(images.device))


class BatchAugment(nn.Module):
    """Augment a batch: ``uint8 (B, 3, H, W)`` -> ``uint8 (B, 3, H, W)``.

    Per image: random resized crop keeping ``area`` (default 80-100%) of the image with aspect
    ratio 0.9-1.1 (``transforms.v2`` ``resized_crop`` on the uint8 image, its fast path),
    horizontal flip (p=0.5), brightness and contrast x[0.8, 1.2] and saturation x[0.9, 1.1]
    (hue is left alone: skin and hair colour are identity cues), then random erasing
    (probability ``erase_p``, default 0.25) of a 2-20% rectangle filled with ``fill`` (the
    normalisation mean, so it becomes 0). The three colour
    changes are linear, so they are applied together as one 3x3 colour matrix per image for
    the whole batch (one clamp at the end instead of one per step).

    ``forward(images, seed)`` draws from a generator seeded with ``seed`` (see
    :func:`batch_seed`), or from torch's global generator when ``seed`` is None: the result
    never depends on which worker ran it.
    """

    RATIO = (0.9, 1.1)
    JITTER = (0.2, 0.2, 0.1)  # brightness, contrast, saturation
    ERASE_AREA, ERASE_RATIO = (0.02, 0.2), (0.3, 3.3)

    def __init__(self, fill: Sequence[float] = (0.5, 0.5, 0.5),
                 area: Sequence[float] = (0.8, 1.0), erase_p: float = 0.25) -> None:
        super().__init__()
        self.fill = torch.tensor(list(fill), dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.area = (float(area[0]), float(area[1]))
        self.erase_p = float(erase_p)

    def forward(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        u = torch.rand(len(images), 13, generator=generator)
        x = self._colour(self._crop_flip(images, u[:, :5]).float(), u[:, 5:8].to(images.device))
        x = x.add_(0.5).clamp_(0, 255).to(torch.uint8)  # round half up
        return self._erase(x, u[:, 8:])

    @staticmethod
    def _box(u_area: torch.Tensor, u_ratio: torch.Tensor, area_range: tuple[float, float],
             ratio_range: tuple[float, float], height: int, width: int,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Box heights and widths (pixels) of random area fraction and aspect ratio."""
        lo, hi = area_range
        area = (lo + (hi - lo) * u_area) * height * width
        ratio = torch.exp(math.log(ratio_range[0])
                          + math.log(ratio_range[1] / ratio_range[0]) * u_ratio)
        h = torch.sqrt(area / ratio).round().clamp(1, height)
        w = torch.sqrt(area * ratio).round().clamp(1, width)
        return h, w

    def _crop_flip(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        h, w = self._box(u[:, 0], u[:, 1], self.area, self.RATIO, height, width)
        top = (u[:, 2] * (height - h + 1)).floor().clamp(max=height - h)
        left = (u[:, 3] * (width - w + 1)).floor().clamp(max=width - w)
        out = torch.empty_like(images)
        boxes = torch.stack([top, left, h, w], 1).long().tolist()
        for i, (box, flip) in enumerate(zip(boxes, (u[:, 4] < 0.5).tolist(), strict=True)):
            crop = F.resized_crop(images[i], *box, [height, width], antialias=True)
            out[i] = crop.flip(-1) if flip else crop
        return out

    def _colour(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Brightness b, contrast c (around the mean grey m), saturation s (around each
        pixel's grey g = w.x): ``x' = s c b x + (1 - s) c b g + (1 - c) b m``."""
        n, _, height, width = x.shape
        b, c, s = (1 + j * (2 * u[:, i] - 1) for i, j in enumerate(self.JITTER))
        w = torch.tensor(GREY_WEIGHTS, device=x.device)
        flat = x.view(n, 3, height * width)
        mean_grey = flat.mean(2) @ w  # (n,)
        eye = torch.eye(3, device=x.device)
        matrix = ((s * c * b).view(n, 1, 1) * eye
                  + ((1 - s) * c * b).view(n, 1, 1) * w.view(1, 1, 3).expand(n, 3, 3))
        offset = ((1 - c) * b * mean_grey).view(n, 1, 1)
        return torch.baddbmm(offset, matrix, flat).view(n, 3, height, width)

    def _erase(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Fill a random rectangle of the chosen images (in place on uint8 ``x``)."""
        _, _, height, width = x.shape
        eh, ew = self._box(u[:, 1], u[:, 2], self.ERASE_AREA, self.ERASE_RATIO, height, width)
        top = (u[:, 3] * (height - eh + 1)).floor().clamp(max=height - eh)
        left = (u[:, 4] * (width - ew + 1)).floor().clamp(max=width - ew)
        fill = self.fill.add(0.5).to(torch.uint8).view(3, 1, 1).to(x.device)
        boxes = torch.stack([top, left, eh, ew], 1).long().tolist()
        chosen = (u[:, 0] < self.erase_p).tolist()
        for i, ((t, lf, h, w), erase) in enumerate(zip(boxes, chosen, strict=True)):
            if erase:
                x[i, :, t : t + h, lf : lf + w] = fill
        return x


class FaceTransform:
    """One image -> normalised ``float32 (3, S, S)``: :class:`Preprocess`, optionally
    :class:`BatchAugment` (global generator), :class:`Normalize`. ``load(path)`` decodes with
    the fast path."""

    def __init__(
        self, preprocess: Preprocess, normalize: Normalize, augment: BatchAugment | None = None
    ) -> None:
        self.preprocess, self.normalize, self.augment = preprocess, normalize, augment

    def _finish(self, image: torch.Tensor) -> torch.Tensor:
        x = image[None] if self.augment is None else self.augment(image[None])
        return self.normalize(x)[0]

    def __call__(self, image: torch.Tensor | Image.Image) -> torch.Tensor:
        return self._finish(self.preprocess(image))

    def load(self, path: str | Path) -> torch.Tensor:
        return self._finish(self.preprocess.load(path))

    def load_bytes(self, data: bytes | bytearray) -> torch.Tensor:
        return self._finish(self.preprocess.load_bytes(data))


def build_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    augment: bool = False,
    crop_box: Sequence[float] | None = None,
    grayscale: bool = False,
) -> FaceTransform:
    """PIL RGB image or ``uint8 (3, H, W)`` -> normalised ``float32 (3, S, S)``.

    For evaluation and embedding one image at a time; training uses :class:`Preprocess` per
    image and :class:`BatchAugment` per batch in the loader, :class:`Normalize` on the device.
    ``augment`` here draws from torch's global generator.
    """
    box = tuple(float(v) for v in crop_box) if crop_box is not None else None
    return FaceTransform(Preprocess(image_size, crop_fraction, box, grayscale),
                         Normalize(mean, std), BatchAugment(mean) if augment else None)
