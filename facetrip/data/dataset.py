"""Map-style datasets over an :class:`ImageFolderIndex`: from image files or RecordIO records
(surviving items that break mid-training) or from the decoded cache."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from facetrip.data.decode import ImageError, display_path
from facetrip.data.index import ImageFolderIndex
from facetrip.data.source import (  # noqa: F401  (load_rgb, load_transformed: re-exported)
    ImageReader,
    load_rgb,
    load_transformed,
)
from facetrip.errors import UserError

if TYPE_CHECKING:
    from facetrip.data.cache import DecodedCache

log = logging.getLogger(__name__)


class FaceDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (transform(image i), label)`` for the images of ``index`` (files of an
    identity folder, or records of a ``.rec``, decoded where the item is loaded: in the
    ``DataLoader`` workers).

    ``transform`` takes a PIL RGB image, or, when it has a ``load(path)`` method (like
    :class:`~facetrip.data.transforms.Preprocess` and ``build_transform``'s result), the path,
    so it can use the fast decoder. Training passes a ``Preprocess`` (``uint8 (3, S, S)`` out).

    An item that fails to decode (truncated, corrupted after the scan) is never fatal: it is
    logged, counted in ``failures`` (across DataLoader workers) and replaced by the next image
    of the same identity, so a PK batch keeps its shape.
    """

    def __init__(self, index: ImageFolderIndex, transform: Callable) -> None:
        self.index = index
        self.transform = transform
        self.reader = ImageReader(index.root)
        self._failures = multiprocessing.Value("q", 0)
        self._by_class: list[list[int]] = [[] for _ in index.classes]
        for i, label in enumerate(index.labels.tolist()):
            self._by_class[label].append(i)

    @property
    def failures(self) -> int:
        """Files that failed to decode so far, in this process and its workers."""
        return int(self._failures.value)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label = int(self.index.labels[i])
        candidates = self._by_class[label]
        start = candidates.index(i)
        for offset in range(len(candidates)):
            j = candidates[(start + offset) % len(candidates)]
            try:
                return self.reader.load(self.transform, self.index.paths[j]), label
            except (ImageError, OSError, ValueError) as exc:
                with self._failures.get_lock():
                    self._failures.value += 1
                log.warning("skipping unreadable image %s (%s); using another image of %s",
                            self.reader.describe(self.index.paths[j]), exc,
                            display_path(self.index.classes[label]))
        raise UserError(
            f"no image of identity {display_path(self.index.classes[label])!r} can be decoded "
            "any more: did the dataset change during training?"
        )


class CachedFaceDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (uint8 (3, S, S) image, label)`` for the images of ``index``, read from
    a :class:`~facetrip.data.cache.DecodedCache` (no decoding). ``index`` may be any subset of
    the cache's images (a split, a filtered set)."""

    def __init__(self, index: ImageFolderIndex, cache: DecodedCache) -> None:
        self.index = index
        self.cache = cache
        self.rows = cache.rows(index.paths)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = np.array(self.cache.images[self.rows[i]])  # copy out of the memory map
        return torch.from_numpy(image), int(self.index.labels[i])


class SeededItems(torch.utils.data.Dataset):
    """Adapts ``dataset`` to :class:`~facetrip.data.sampler.SeededBatchSampler` keys:
    ``items[(i, seed)] -> (*dataset[i], seed)``."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        i, seed = key
        return (*self.dataset[i], seed)

    @property
    def failures(self) -> int:
        """The wrapped dataset's decode failures (0 if it does not count them)."""
        return getattr(self.dataset, "failures", 0)


class AugmentCollate:
    """DataLoader ``collate_fn`` for :class:`SeededItems`: stacks ``uint8 (3, S, S)`` images
    into ``(B, 3, S, S)`` and applies ``augment(batch, seed)`` (in the worker process).
    Returns ``(images uint8 (B, 3, S, S), labels int64 (B,))``."""

    def __init__(self, augment: Callable[[torch.Tensor, int], torch.Tensor] | None) -> None:
        self.augment = augment

    def __call__(self, items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, ...]:
        images = torch.stack([item[0] for item in items])
        labels = torch.tensor([item[1] for item in items], dtype=torch.int64)
        if self.augment is not None:
            images = self.augment(images, items[0][2])
        return images, labels

