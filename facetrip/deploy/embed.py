"""``facetrip embed``: embeddings for every image under a folder, streamed to an ``.npz``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facetrip.data.dataset import load_transformed
from facetrip.data.index import IMAGE_EXTENSIONS, SkippedFile
from facetrip.errors import UserError
from facetrip.evaluation.embedding import iter_embeddings
from facetrip.io import atomic_write


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
    """``dataset[i] -> (image tensor or None, i)``; ``None`` marks a file that failed to load."""

    def __init__(self, root: Path, paths: list[str], transform: Callable) -> None:
        self.root, self.paths, self.transform = root, paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        try:  # decoded as training and eval decode (load_transformed)
            return load_transformed(self.transform, self.root / self.paths[i]), i
        except Exception:  # any decode failure: reported by the caller, never fatal
            return None, i


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack the loadable items; return ``(images, indices, failed indices)``."""
    good = [(x, i) for x, i in items if x is not None]
    failed = [i for x, i in items if x is None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), failed
    return torch.stack([x for x, _ in good]), torch.tensor([i for _, i in good]), failed


@dataclass
class EmbedResult:
    """What ``embed_folder`` wrote."""

    out: Path
    count: int
    dim: int
    skipped: list[SkippedFile] = field(default_factory=list)


def iter_folder_embeddings(
    model: torch.nn.Module,
    root: Path,
    paths: list[str],
    transform: Callable,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor, list[int], list[int]]]:
    """Stream ``(embeddings (b, D), their path indices, failed path indices)`` per batch."""
    loader = torch.utils.data.DataLoader(
        PathDataset(root, paths, transform), batch_size=batch_size, num_workers=workers,
        collate_fn=collate_skipping, pin_memory=device.type == "cuda",
    )
    for emb, (idx, failed) in iter_embeddings(model, loader, device):
        yield emb, idx.tolist(), failed


def embed_folder(
    model: torch.nn.Module,
    root: str | Path,
    out: str | Path,
    transform: Callable,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    paths: list[str] | None = None,
) -> EmbedResult:
    """Embed every image under ``root`` into ``out`` (npz, written atomically).

    The npz holds ``embeddings`` (N, D) float32, ``paths`` (N,) relative to ``root`` and, when
    images sit in sub-folders, ``labels`` (N,) int64 indexing ``classes`` (the first folder of
    each path). Rows are written to a memory-mapped scratch file as they are computed, so
    memory does not grow with N. Files that fail to decode are left out and listed in
    ``skipped``. ``progress(n)`` is called with the number of files handled per batch.
    ``paths`` (relative to ``root``) skips the directory walk when the caller listed it already.
    """
    root, out = Path(root), Path(out)
    paths = list_images(root) if paths is None else paths
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[SkippedFile] = []
    kept: list[str] = []
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        store = None
        for emb, idx, failed in iter_folder_embeddings(
            model, root, paths, transform, device, batch_size, workers
        ):
            skipped += [SkippedFile(paths[i], "cannot be decoded") for i in failed]
            if len(idx):
                if store is None:
                    store = np.lib.format.open_memmap(
                        os.path.join(scratch, "emb.npy"), mode="w+", dtype=np.float32,
                        shape=(len(paths), emb.shape[1]),
                    )
                store[len(kept) : len(kept) + len(idx)] = emb.numpy()
                kept += [paths[i] for i in idx]
            if progress is not None:
                progress(len(idx) + len(failed))
        if store is None:
            raise UserError(f"none of the {len(paths)} images under {root} could be decoded")
        arrays = {"embeddings": store[: len(kept)], "paths": np.asarray(kept)}
        tops = [p.split(os.sep)[0] if os.sep in p else "" for p in kept]
        if all(tops):
            classes, labels = np.unique(np.asarray(tops), return_inverse=True)
            arrays.update(labels=labels.astype(np.int64), classes=classes)
        atomic_write(out, lambda f, a=arrays: np.savez(f, **a))
        dim = store.shape[1]
        del store, arrays
    return EmbedResult(out, len(kept), dim, skipped)
