"""Identity-folder datasets: ``root/<identity>/<image>`` -> paths, integer labels, skip report."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from facetrip.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp"})


@dataclass(frozen=True)
class SkippedFile:
    """A file that looked like an image but could not be used."""

    path: str  #: relative to the dataset root
    reason: str


@dataclass
class ImageFolderIndex:
    """The images of a dataset, one identity label per image.

    ``paths[i]`` is relative to ``root`` and has label ``labels[i]``, an index into ``classes``.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray  #: (N,) int64
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def images_per_class(self) -> np.ndarray:
        """(C,) number of images of each class."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def select_classes(self, keep: np.ndarray) -> ImageFolderIndex:
        """A new index with only the classes whose ids are in ``keep``, relabelled 0..len-1."""
        keep = np.unique(np.asarray(keep, dtype=np.int64))
        remap = np.full(len(self.classes), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        mask = remap[self.labels] >= 0
        return ImageFolderIndex(
            root=self.root,
            paths=[p for p, m in zip(self.paths, mask, strict=False) if m],
            labels=remap[self.labels[mask]],
            classes=[self.classes[i] for i in keep],
            skipped=list(self.skipped),
        )

    def skip_summary(self) -> str:
        """One line such as ``skipped 3 files: 2 not an image, 1 unreadable`` ('' if none)."""
        if not self.skipped:
            return ""
        counts = Counter(s.reason.split(":")[0] for s in self.skipped)
        parts = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
        return f"skipped {len(self.skipped)} file{'s' * (len(self.skipped) != 1)}: {parts}"


def check_image(path: Path) -> str | None:
    """``None`` if ``path`` opens as an image (header only, fast), else the reason it does not."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except PermissionError:
        return "unreadable: permission denied"
    except (UnidentifiedImageError, SyntaxError):
        return "not an image"
    except Image.DecompressionBombError:
        return "too large"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if width < 1 or height < 1:
        return "not an image"
    return None


def scan_identity_folder(root: str | Path, validate: bool = True) -> ImageFolderIndex:
    """List ``root/<identity>/**/<image>`` files; each sub-folder of ``root`` is one identity.

    Files directly in ``root`` and files without an image extension are ignored. With
    ``validate``, every image header is opened once and files that are not images are recorded
    in ``skipped`` instead of failing later. Identities with no usable image are dropped.

    Raises:
        UserError: ``root`` is missing, not a directory, or holds no identity with an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset directory not found: {root}")
    paths: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    skipped: list[SkippedFile] = []
    identity_dirs = sorted((d for d in os.scandir(root) if d.is_dir()), key=lambda d: d.name)
    for entry in identity_dirs:
        found = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(os.path.join(dirpath, name))
        usable = []
        for full in found:
            rel = os.path.relpath(full, root)
            reason = check_image(Path(full)) if validate else None
            if reason is None:
                usable.append(rel)
            else:
                skipped.append(SkippedFile(rel, reason))
        if usable:
            paths.extend(usable)
            labels.extend([len(classes)] * len(usable))
            classes.append(entry.name)
    if not paths:
        raise UserError(
            f"no identities found in {root}: expected {root}/<identity>/<image> with images "
            f"of type {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return ImageFolderIndex(root, paths, np.asarray(labels, dtype=np.int64), classes, skipped)


def split_identities(
    index: ImageFolderIndex, val_fraction: float, seed: int
) -> tuple[ImageFolderIndex, ImageFolderIndex | None]:
    """Split identities (never images of one identity) into train and held-out validation.

    Returns ``(train, val)``; ``val`` is ``None`` when ``val_fraction`` is 0 or there are
    too few identities (fewer than 4) to hold any out.
    """
    n = len(index.classes)
    n_val = int(round(n * val_fraction))
    if n_val < 2 or n - n_val < 2:
        return index, None
    order = np.random.default_rng(seed).permutation(n)
    return index.select_classes(order[n_val:]), index.select_classes(order[:n_val])


def filter_min_images(index: ImageFolderIndex, min_images: int) -> ImageFolderIndex:
    """Drop identities with fewer than ``min_images`` images."""
    keep = np.flatnonzero(index.images_per_class() >= min_images)
    return index if len(keep) == len(index.classes) else index.select_classes(keep)
