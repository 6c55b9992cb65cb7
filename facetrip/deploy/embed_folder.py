"""``facetrip embed``: embeddings of every image under a folder, streamed to ``.npz`` or ``.npy``.

Rows go to a scratch file as they are computed, so memory does not grow with the number of
images; the output is written from it at the end, atomically. Files that cannot be used are
skipped and listed (``OUT.skipped.txt``), never fatal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facetrip.data.dataset import load_transformed
from facetrip.data.decode import ImageError, display_path
from facetrip.data.index import IMAGE_EXTENSIONS, SkippedFile
from facetrip.errors import UserError
from facetrip.io import atomic_write

OUTPUT_FORMATS = ("npz", "npy")


def list_images(root: str | Path) -> list[str]:
    """Relative paths of every image file under ``root`` (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image directory not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    if not found:
        raise UserError(f"no images found under {root}")
    return found


class PathDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (uint8 image or None, i, skip reason or None)`` for ``root/paths[i]``,
    decoded with ``loader`` (anything with ``load(path)``, e.g. a ``Preprocess``)."""

    def __init__(self, root: Path, paths: list[str], loader: Any) -> None:
        self.root, self.paths, self.loader = root, paths, loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:  # decoded as training and eval decode (load_transformed)
            return load_transformed(self.loader, self.root / self.paths[i]), i, None
        except ImageError as exc:
            return None, i, str(exc)
        except Exception as exc:  # any other decode failure: reported, never fatal
            return None, i, f"cannot be decoded: {type(exc).__name__}"


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Stack the loadable items: ``(images (b, 3, S, S), indices (b,), [(index, reason)])``."""
    good = [(x, i) for x, i, _ in items if x is not None]
    failed = [(i, reason) for x, i, reason in items if x is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), failed
    return torch.stack([x for x, _ in good]), torch.tensor([i for _, i in good]), failed


def iter_folder_embeddings(
    embedder: Any, root: Path, paths: list[str], batch_size: int = 256, workers: int = 0,
) -> Iterator[tuple[np.ndarray, list[int], list[tuple[int, str]]]]:
    """Stream ``(embeddings (b, D) float32, their path indices, [(failed index, reason)])``
    per batch; ``embedder`` is a :class:`~facetrip.deploy.embedder.Embedder`."""
    loader = torch.utils.data.DataLoader(
        PathDataset(root, paths, embedder.loader), batch_size=batch_size, num_workers=workers,
        collate_fn=collate_skipping, pin_memory=embedder.device.type == "cuda",
    )
    for images, idx, failed in loader:
        emb = embedder.embed(images).numpy() if len(idx) else np.empty((0, 0), np.float32)
        yield emb, idx.tolist(), failed


@dataclass
class Rows:
    """Embeddings streamed to a scratch file (``float32``, row after row): the indices of the
    paths they embed, in order, the files skipped, and the dimension."""

    file: Path
    kept: list[int]
    skipped: list[SkippedFile]
    dim: int

    def array(self) -> np.memmap:
        """The ``(len(kept), dim)`` rows, memory-mapped (read-only)."""
        return np.memmap(self.file, dtype=np.float32, mode="r", shape=(len(self.kept), self.dim))


def stream_rows(
    embedder: Any, root: Path, paths: list[str], file: Path, batch_size: int = 256,
    workers: int = 0, progress: Callable[[int], None] | None = None,
) -> Rows:
    """Embed ``root/paths[i]`` with ``embedder`` into the scratch ``file`` (memory does not
    grow with the number of images); ``progress(n)`` after each batch of ``n`` files."""
    kept: list[int] = []
    skipped: list[SkippedFile] = []
    dim = 0
    with open(file, "wb") as rows:
        for emb, idx, failed in iter_folder_embeddings(embedder, root, paths, batch_size,
                                                       workers):
            skipped += [SkippedFile(paths[i], reason) for i, reason in failed]
            if idx:
                rows.write(np.ascontiguousarray(emb, dtype=np.float32).tobytes())
                kept += idx
                dim = emb.shape[1]
            if progress is not None:
                progress(len(idx) + len(failed))
    return Rows(file, kept, skipped, dim)


def first_skipped(skipped: list[SkippedFile]) -> str:
    """`` (e.g. PATH: REASON)`` of the first skipped file, or nothing."""
    if not skipped:
        return ""
    return f" (e.g. {display_path(skipped[0].path)}: {skipped[0].reason})"


@dataclass
class EmbedResult:
    """What ``embed_folder`` wrote."""

    out: Path
    count: int
    dim: int
    skipped: list[SkippedFile] = field(default_factory=list)
    skipped_list: Path | None = None  #: ``OUT.skipped.txt`` when files were skipped
    paths_file: Path | None = None  #: ``OUT.paths.txt`` (``.npy`` output)


def skipped_list_path(out: Path) -> Path:
    return out.with_name(out.name + ".skipped.txt")


def paths_file_path(out: Path) -> Path:
    return out.with_name(out.name + ".paths.txt")


def _write_npy(out: Path, rows: Rows, kept: list[str]) -> Path:
    """``out``: the rows as one ``(N, D)`` float32 array; returns ``OUT.paths.txt``."""

    def write(f) -> None:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False, "shape": (len(kept), rows.dim)})
        with open(rows.file, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 22)

    atomic_write(out, write)
    return atomic_write(paths_file_path(out), "".join(f"{display_path(p)}\n" for p in kept))


def _write_npz(out: Path, rows: Rows, kept: list[str]) -> None:
    """``out``: ``embeddings``, ``paths`` and, when every path has a first folder, ``labels``
    into ``classes`` (those folders)."""
    store = rows.array()
    arrays = {"embeddings": store, "paths": np.asarray(kept)}
    tops = [p.split(os.sep)[0] if os.sep in p else "" for p in kept]
    if all(tops):
        classes, labels = np.unique(np.asarray(tops), return_inverse=True)
        arrays.update(labels=labels.astype(np.int64), classes=classes)
    atomic_write(out, lambda f, a=arrays: np.savez(f, **a))
    del store, arrays  # the memory map, before its scratch directory goes


def _list_skipped(out: Path, skipped: list[SkippedFile]) -> Path | None:
    """``OUT.skipped.txt``: one ``reason<TAB>path`` line per skipped file; a stale list of an
    earlier run is removed (it would mislead)."""
    listing = skipped_list_path(out)
    if not skipped:
        listing.unlink(missing_ok=True)
        return None
    return atomic_write(listing,
                        "".join(f"{s.reason}\t{display_path(s.path)}\n" for s in skipped))


def embed_folder(
    embedder: Any,
    root: str | Path,
    out: str | Path,
    batch_size: int = 256,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    paths: list[str] | None = None,
    fmt: str | None = None,
) -> EmbedResult:
    """Embed every image under ``root`` into ``out`` with ``embedder`` (any model file, see
    :func:`~facetrip.deploy.embedder.load_embedder`).

    ``fmt`` (default: ``out``'s suffix, else npz):

    * ``npz``: ``embeddings`` (N, D) float32, ``paths`` (N,) relative to ``root`` and, when
      every image sits in a sub-folder, ``labels`` (N,) int64 indexing ``classes`` (the first
      folder of each path: what ``facetrip eval --embeddings`` reads);
    * ``npy``: the (N, D) float32 array, and ``OUT.paths.txt``, its paths one per line.

    Memory does not grow with N (rows stream to a scratch file beside ``out``). Unusable files
    are left out, returned in ``skipped`` and listed in ``OUT.skipped.txt``. ``progress(n)``
    after each batch of ``n`` files; ``paths`` (relative to ``root``) skips the directory
    walk when the caller listed it already.

    Raises:
        UserError: ``root`` has no images, or none of them can be used.
    """
    root, out = Path(root), Path(out)
    fmt = fmt or (out.suffix.lstrip(".") if out.suffix in (".npz", ".npy") else "npz")
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"--format must be npz or npy, got {fmt!r}")
    paths = list_images(root) if paths is None else paths
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        rows = stream_rows(embedder, root, paths, Path(tmp) / "rows.f32", batch_size, workers,
                           progress)
        if not rows.kept:
            raise UserError(f"none of the {len(paths)} images under {root} could be used"
                            + first_skipped(rows.skipped))
        kept = [paths[i] for i in rows.kept]
        result = EmbedResult(out, len(kept), rows.dim, rows.skipped)
        if fmt == "npy":
            result.paths_file = _write_npy(out, rows, kept)
        else:
            _write_npz(out, rows, kept)
    result.skipped_list = _list_skipped(out, rows.skipped)
    return result
