"""Where a data set's images are: files of an identity folder, or records of a RecordIO set
(``data.root`` naming a ``.rec``). The index, the split, the samplers, the decoded cache and
the datasets work on either through the three functions here.

An item of a data set is its ``path`` in :class:`~facetrip.data.index.ImageFolderIndex`:
a file relative to the folder, or a record key (as text) of the ``.rec``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from facetrip.data.decode import (
    decode_bytes,
    decode_pil,
    decode_rgb,
    display_path,
    header_size,
    probe_image,
)
from facetrip.data.index import (
    ImageFolderIndex,
    SourceFile,
    list_dataset,
    scan_identity_folder,
)
from facetrip.data.recordio import RecordFile, scan_record_file
from facetrip.errors import UserError


def is_record_file(root: str | Path) -> bool:
    """Whether the data set ``root`` is a RecordIO ``.rec`` (else an identity folder)."""
    return Path(root).suffix == ".rec"


def scan_dataset(root: str | Path, validate: bool = True) -> ImageFolderIndex:
    """The index of the data set ``root``: :func:`~facetrip.data.recordio.scan_record_file`
    for a ``.rec`` (which always checks the records' framing), else
    :func:`~facetrip.data.index.scan_identity_folder`.

    Raises:
        UserError: no data set there, or no identity with a usable image.
    """
    if is_record_file(root):
        return scan_record_file(root)
    return scan_identity_folder(root, validate)


def list_source(root: str | Path) -> tuple[list[SourceFile], list[str], list[str | None]]:
    """What the decoded cache lists and checks for staleness: ``(items, identity names,
    reasons known before decoding)``. A folder: its image files (see
    :func:`~facetrip.data.index.list_dataset`), no reason yet. A ``.rec``: every usable
    record with its identity, and the skipped ones (identity None) with their reason; size and
    modification time are the ``.rec``'s and ``.idx``'s, so any change rebuilds the cache.
    """
    if not is_record_file(root):
        files, identity_dirs = list_dataset(root)
        return files, identity_dirs, [None] * len(files)
    index = scan_record_file(root)
    rec, idx = os.stat(root), os.stat(Path(root).with_suffix(".idx"))
    size, mtime = rec.st_size, rec.st_mtime_ns + idx.st_mtime_ns  # either one changing
    names = index.classes + index.empty_classes
    files = [SourceFile(p, index.classes[label], size, mtime)
             for p, label in zip(index.paths, index.labels.tolist(), strict=True)]
    files += [SourceFile(s.path, None, size, mtime) for s in index.skipped]
    reasons: list[str | None] = [None] * len(index.paths) + [s.reason for s in index.skipped]
    return files, names, reasons


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to a PIL RGB image, applying its EXIF orientation.

    Grey, 16-bit, palette, RGBA (alpha dropped) and CMYK images are converted to 8-bit RGB.
    Decodes exactly as the training loader does (torchvision.io for JPEG/PNG, full scale).
    Raises :class:`~facetrip.data.decode.ImageError` (a ValueError) for unusable files.
    """
    return decode_pil(path)


def load_transformed(transform: Callable, path: str | Path) -> torch.Tensor:
    """``transform.load(path)`` when the transform has one (:class:`Preprocess` and
    ``build_transform``'s result: the fast decoder, reduced-scale large JPEGs), else
    ``transform(load_rgb(path))``. Raises what decoding raises for an unusable file."""
    load = getattr(transform, "load", None)
    return load(path) if load is not None else transform(load_rgb(path))


class ImageReader:
    """Loads the items of the data set ``root`` (picklable: a ``DataLoader`` worker opens its
    own ``.rec``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.records = RecordFile(root) if is_record_file(root) else None

    def describe(self, item: str) -> str:
        """``root/alice/1.jpg`` or ``train.rec record 17``, for messages."""
        if self.records is None:
            return display_path(self.root / item)
        return f"{display_path(self.root)} record {item}"

    def load(self, transform: Callable, item: str) -> torch.Tensor:
        """``transform`` applied to the decoded item: through ``transform.load(path)`` or
        ``transform.load_bytes(data)`` when it has them (the fast decoder, reduced-scale large
        JPEGs), else ``transform(PIL RGB image)``.

        Raises:
            ImageError: the item does not decode (a damaged record is a ``RecordError``).
        """
        if self.records is None:
            return load_transformed(transform, self.root / item)
        data = self.records.image(int(item))[1]
        load_bytes = getattr(transform, "load_bytes", None)
        return (load_bytes(data) if load_bytes is not None
                else transform(F.to_pil_image(decode_bytes(data))))

    def decode(self, item: str) -> torch.Tensor:
        """The item as ``uint8 (3, H, W)`` RGB, full size (raises as :meth:`load`)."""
        if self.records is None:
            return decode_rgb(self.root / item)
        return decode_bytes(self.records.image(int(item))[1])

    def size(self, item: str) -> tuple[int, int]:
        """``(width, height)`` from the item's header (raises as :meth:`load`)."""
        if self.records is None:
            return probe_image(self.root / item)[1:]
        return header_size(self.records.image(int(item))[1]) or (0, 0)

    def load_with_size(self, transform: Callable, item: str
                       ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(load(transform, item), (width, height) as stored)``; raises as :meth:`load`."""
        if self.records is None:
            _, width, height = probe_image(self.root / item)
            return self.load(transform, item), (width, height)
        data = self.records.image(int(item))[1]
        return transform.load_bytes(data), header_size(data) or (0, 0)


def dataset_items(root: str | Path | None) -> tuple[ImageReader | None, list[str]]:
    """``(reader, items)`` of the data set ``root`` (a folder's files in identity folders, a
    ``.rec``'s usable records), without checking the files; ``(None, [])`` when it is not
    there."""
    if root is None or not (Path(root).is_dir() or is_record_file(root)):
        return None, []
    try:
        if is_record_file(root):
            return ImageReader(root), scan_record_file(root).paths
        return ImageReader(root), [f.path for f in list_dataset(root)[0] if f.identity]
    except UserError:
        return None, []

