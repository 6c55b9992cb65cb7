"""The decoded cache: every image of a dataset decoded, cropped and resized once, stored as
``uint8`` in a memory-mapped array, so training epochs never decode a JPEG again.

A cache is a directory::

    CACHE/index.json           format, preprocessing, dataset listing (paths, identities,
                               sizes, mtimes, skip reasons), original image sizes
    CACHE/images-<id>.npy      uint8 (N, 3, S, S), row i = listed file i (zeros if skipped)

``index.json`` is written last (temp file + rename), so a crash mid-build leaves the previous
cache intact. A cache is only used when the dataset still lists exactly the same files with
the same sizes and modification times, and was built with the same preprocessing; otherwise
:func:`load_or_build_cache` rebuilds it, so a changed dataset is never served stale. Checking
and building happen under an exclusive lock on ``CACHE/.lock`` (:func:`facetrip.io.locked`),
so two runs started on the same cache build it once and the second reuses it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facetrip.data.decode import ImageError, display_path
from facetrip.data.index import ImageFolderIndex, SourceFile, build_index
from facetrip.data.source import ImageReader, list_source
from facetrip.data.transforms import Preprocess
from facetrip.errors import UserError
from facetrip.io import atomic_write, locked

log = logging.getLogger(__name__)

FORMAT, VERSION = "facetrip-decoded-cache", 1
INDEX_NAME = "index.json"
LOCK_NAME = ".lock"


@dataclass
class DecodedCache:
    """An opened cache. ``images`` is memory-mapped lazily in each process (workers too)."""

    path: Path
    spec: Preprocess
    sources: list[SourceFile]  #: the dataset listing the cache was built from
    identity_dirs: list[str]
    reasons: list[str | None]  #: per source: None (cached) or why it was skipped
    original_sizes: np.ndarray  #: (N, 2) int64 width, height as stored in the file (0 if skipped)
    index: ImageFolderIndex  #: the usable images, as :func:`scan_identity_folder` would give
    images_file: str
    _images: np.ndarray | None = field(default=None, repr=False)
    _rows: dict[str, int] | None = field(default=None, repr=False)

    @property
    def images(self) -> np.ndarray:
        """``uint8 (N, 3, S, S)`` read-only memory map; row ``i`` is ``sources[i]``."""
        if self._images is None:
            self._images = np.load(self.path / self.images_file, mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:  # DataLoader workers re-open the map instead of copying it
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def rows(self, paths: list[str]) -> np.ndarray:
        """``(len(paths),) int64`` rows of ``images`` holding these (relative) paths."""
        if self._rows is None:
            self._rows = {s.path: i for i, s in enumerate(self.sources)}
        try:
            return np.asarray([self._rows[p] for p in paths], dtype=np.int64)
        except KeyError as exc:
            missing = display_path(exc.args[0])
            raise UserError(f"{missing} is not in the cache {self.path}") from None

    def staleness(self, files: list[SourceFile], identity_dirs: list[str]) -> str | None:
        """``None`` if ``files`` (a fresh :func:`list_dataset`) match the cache, else what
        changed, e.g. ``"2 files changed, 1 added"``."""
        old = {s.path: (s.size, s.mtime_ns) for s in self.sources}
        new = {f.path: (f.size, f.mtime_ns) for f in files}
        changed = sum(1 for p, v in new.items() if p in old and old[p] != v)
        added = sum(1 for p in new if p not in old)
        removed = sum(1 for p in old if p not in new)
        parts = [f"{n} file{'s' * (n != 1)} {what}" for n, what in
                 ((changed, "changed"), (added, "added"), (removed, "removed")) if n]
        if identity_dirs != self.identity_dirs and not parts:
            parts.append("identity folders changed")
        return ", ".join(parts) or None


def open_cache(path: str | Path, root: str | Path | None = None) -> DecodedCache:
    """Open the cache directory ``path`` (no staleness check; see :func:`load_or_build_cache`).

    Raises:
        UserError: ``path`` holds no readable facetrip cache.
    """
    path = Path(path)
    try:
        meta = json.loads((path / INDEX_NAME).read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION}")
        sources = [SourceFile(p, ident, int(size), int(mtime))
                   for p, ident, size, mtime in meta["sources"]]
        reasons = list(meta["reasons"])
        spec = Preprocess.from_dict(meta["spec"])
        shape = tuple(meta["shape"])
        if len(sources) != len(reasons) or shape != (len(sources), 3, spec.size, spec.size):
            raise ValueError("inconsistent index")
        if not (path / meta["images_file"]).is_file():
            raise ValueError(f"{meta['images_file']} is missing")
    except FileNotFoundError:
        raise UserError(f"no decoded cache in {path} ({INDEX_NAME} not found)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a readable facetrip cache: {exc}") from None
    root = Path(root if root is not None else meta["root"])
    index = build_index(root, sources, list(meta["identity_dirs"]), reasons)
    return DecodedCache(path, spec, sources, list(meta["identity_dirs"]), reasons,
                        np.asarray(meta["original_sizes"], dtype=np.int64).reshape(-1, 2),
                        index, meta["images_file"])


class _DecodeFiles(torch.utils.data.Dataset):
    """Item ``i``: ``(i, uint8 (3, S, S) or None, reason or None, (width, height))``."""

    def __init__(self, root: Path, files: list[SourceFile], spec: Preprocess) -> None:
        self.reader, self.files, self.spec = ImageReader(root), files, spec

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple:
        f = self.files[i]
        if f.identity is None:  # outside identities: reported by build_index, not decoded
            return i, None, None, (0, 0)
        try:
            image, size = self.reader.load_with_size(self.spec, f.path)
            return i, image, None, size
        except ImageError as exc:
            return i, None, str(exc), (0, 0)


def build_cache(
    root: str | Path,
    out: str | Path,
    spec: Preprocess,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> DecodedCache:
    """Decode every image under ``root`` with ``spec`` into the cache directory ``out``.

    Unusable files are recorded with their reason (same categories as the scan, but found by
    a full decode). ``workers`` decoding processes; ``progress(n)`` after every n files.

    Raises:
        UserError: ``root`` has no usable identity, ``out`` is inside ``root``, or ``out`` is
            a non-empty directory that is not a facetrip cache.
    """
    root, out = Path(root), Path(out)
    _check_cache_dir(root, out)
    with locked(out / LOCK_NAME):
        return _build(root, out, spec, workers, progress)


def _check_cache_dir(root: Path, out: Path) -> None:
    """UserError unless ``out`` is outside ``root`` and is absent, empty or a facetrip cache."""
    if out.resolve().is_relative_to(root.resolve()):
        raise UserError(f"put the cache outside the dataset: {display_path(out)} is inside "
                        f"{display_path(root)}, where it would look like an identity folder")
    if out.exists() and (not out.is_dir() or (
            any(p.name != LOCK_NAME for p in out.iterdir()) and not (out / INDEX_NAME).is_file())):
        raise UserError(f"{out} exists and is not a facetrip cache; choose another --out")


def _build(root: Path, out: Path, spec: Preprocess, workers: int,
           progress: Callable[[int], None] | None) -> DecodedCache:
    files, identity_dirs, reasons = list_source(root)  # stat first: a later edit is stale
    token = uuid.uuid4().hex[:12]
    images_file = f"images-{token}.npy"
    tmp_images = out / f".{images_file}.tmp"
    shape = (len(files), 3, spec.size, spec.size)
    sizes = np.zeros((len(files), 2), dtype=np.int64)
    try:
        array = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8,
                                          shape=shape)
        loader = torch.utils.data.DataLoader(
            _DecodeFiles(root, files, spec), batch_size=64, num_workers=workers,
            collate_fn=list,
        )
        for items in loader:
            for i, image, reason, size in items:
                reasons[i] = reason or reasons[i]
                sizes[i] = size
                if image is not None:
                    array[i] = image.numpy()
            if progress is not None:
                progress(len(items))
        array.flush()
        del array
        with open(tmp_images, "rb+") as fh:
            os.fsync(fh.fileno())
        index = build_index(root, files, identity_dirs, reasons)  # raises if nothing usable
        os.replace(tmp_images, out / images_file)
        meta = {
            "format": FORMAT, "version": VERSION, "root": os.path.abspath(root),
            "spec": spec.to_dict(), "images_file": images_file, "shape": list(shape),
            "identity_dirs": identity_dirs,
            "sources": [[f.path, f.identity, f.size, f.mtime_ns] for f in files],
            "reasons": reasons, "original_sizes": sizes.tolist(),
        }
        atomic_write(out / INDEX_NAME, json.dumps(meta))  # the commit point
    except BaseException:
        tmp_images.unlink(missing_ok=True)
        if not (out / INDEX_NAME).is_file():
            (out / images_file).unlink(missing_ok=True)
        raise
    for old in out.glob("images-*.npy"):  # previous builds (open maps stay valid on POSIX)
        if old.name != images_file:
            old.unlink(missing_ok=True)
    return DecodedCache(out, spec, files, identity_dirs, reasons, sizes, index, images_file)


def load_or_build_cache(
    root: str | Path,
    path: str | Path,
    spec: Preprocess,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[DecodedCache, str | None]:
    """Open the cache at ``path`` if it is fresh for ``root`` and ``spec``, else (re)build it.

    Returns ``(cache, why)``: ``why`` is ``None`` when the existing cache was used, otherwise
    why it was built, e.g. ``"3 files changed"`` or ``"no cache yet"``.
    """
    root, path = Path(root), Path(path)
    _check_cache_dir(root, path)
    with locked(path / LOCK_NAME):  # a concurrent build finishes first; then this one may reuse it
        return _open_or_build(root, path, spec, workers, progress)


def _open_or_build(root: Path, path: Path, spec: Preprocess, workers: int,
                   progress: Callable[[int], None] | None) -> tuple[DecodedCache, str | None]:
    why: str | None
    if not (path / INDEX_NAME).is_file():
        why = "no cache yet"
    else:
        try:
            cache = open_cache(path, root)
        except UserError as exc:
            why = str(exc)
        else:
            files, identity_dirs, _ = list_source(root)
            why = cache.staleness(files, identity_dirs)
            if cache.spec != spec:
                why = (f"built for {cache.spec.to_dict()}, need {spec.to_dict()}"
                       + (f"; {why}" if why else ""))
            if why is None:
                return cache, None
    log.info("building the decoded cache %s (%s)", display_path(path), why)
    return _build(root, path, spec, workers, progress), why
