"""Photos -> aligned face crops: ``facetrip align`` on a folder, :func:`align` in Python.

The detector, template and warp are :mod:`facetrip.alignment` (below ``data``, so the decoded
cache can align too); this module adds what needs ``data``: listing folders and decoding files.

``DST/<identity>/<stem>.png`` per image with a face; ``DST/align.jsonl`` one row per crop
(source, box, score, landmarks, transform); ``DST/skipped.txt`` every image without a crop and
why; ``DST/align.json`` the settings, so a re-run with other settings is refused. A re-run
only aligns what has no crop yet and rewrites the same bytes.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facetrip.alignment.crop import SETTINGS_NAME, Aligned, AlignSpec, align_tensors
from facetrip.alignment.detect import Detector
from facetrip.data.decode import ImageError, decode_rgb, display_path
from facetrip.data.index import list_dataset
from facetrip.data.transforms import NO_FACE
from facetrip.errors import UserError
from facetrip.io import atomic_write

ROWS_NAME = "align.jsonl"
SKIPPED_NAME = "skipped.txt"



@dataclass
class AlignSummary:
    """What :func:`align_folder` did."""

    images: int  #: image files found
    aligned: int  #: crops written by this run
    reused: int  #: crops kept from an earlier run
    skipped: list[tuple[str, str]] = field(default_factory=list)  #: (source, reason)
    several: int = 0  #: crops taken from an image with more than one face

    def skip_summary(self) -> str:
        """``skipped 3: 2 no face, 1 truncated`` ('' when none)."""
        if not self.skipped:
            return ""
        counts = Counter(reason.split(":")[0] for _, reason in self.skipped)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        parts = ", ".join(f"{n} {reason}" for reason, n in ordered)
        return f"skipped {len(self.skipped)}: {parts}"


def _round(values: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _row(source: str, out: str, result: Aligned) -> dict:
    face = result.face
    return {"source": source, "out": out, "faces": result.faces,
            "box": _round(face.box, 2), "score": round(face.score, 5),
            "landmarks": _round(face.landmarks, 2), "transform": _round(result.transform, 6)}


def _png(crop: torch.Tensor) -> bytes:
    buf = io.BytesIO()  # zlib level 3: 2.5x faster than Pillow's 6, files 5% larger
    Image.fromarray(crop.permute(1, 2, 0).numpy()).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


class _Chunks(torch.utils.data.Dataset):
    """``chunks[i]``: decode, detect, align and write the crops of one batch of images;
    returns ``(source, row or None, skip reason or None)`` per image. Runs in DataLoader
    workers (each loads its own detector once)."""

    def __init__(self, src: Path, dst: Path, jobs: list[tuple[str, str]], spec: AlignSpec,
                 batch_size: int) -> None:
        self.src, self.dst, self.spec = src, dst, spec
        self.chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
        self.detector: Detector | None = None

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> list[tuple[str, dict | None, str | None]]:
        if self.detector is None:
            self.detector = Detector(self.spec.min_face)
        results: dict[str, tuple[str, dict | None, str | None]] = {}
        decoded: list[tuple[str, str, torch.Tensor]] = []
        for source, out in self.chunks[i]:
            try:
                decoded.append((source, out, decode_rgb(self.src / source)))
            except ImageError as exc:
                results[source] = (source, None, str(exc))
        aligned = align_tensors([image for _, _, image in decoded], self.detector, self.spec)
        for (source, out, _), result in zip(decoded, aligned):
            if result.crop is None:
                results[source] = (source, None, NO_FACE)
                continue
            # committed by the durable align.jsonl after os.sync() (_write_reports)
            atomic_write(self.dst / out, _png(result.crop), durable=False)
            results[source] = (source, _row(source, out, result), None)
        return [results[source] for source, _ in self.chunks[i]]


def _first(items: list) -> object:
    return items[0]


def _check_settings(dst: Path, spec: AlignSpec) -> None:
    """Refuse to mix crops of other settings into ``dst``; record the settings."""
    path = dst / SETTINGS_NAME
    wanted = spec.to_dict()
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{display_path(path)} is unreadable; choose another --out") from None
        if before != wanted:
            diff = ", ".join(f"{k} {before.get(k)!r} (now {v!r})" for k, v in wanted.items()
                             if before.get(k) != v)
            raise UserError(f"{display_path(dst)} holds crops aligned with other settings: "
                            f"{diff}; choose another --out")
    elif dst.is_dir() and any(dst.iterdir()):
        raise UserError(f"{display_path(dst)} exists and is not an aligned folder; "
                        "choose another --out")
    atomic_write(path, json.dumps(wanted, indent=1) + "\n")


def _plan(src: Path, dst: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(jobs, clashes)``: (source, output) for every image under ``src``; sources whose
    output name another source already takes (``a.jpg`` and ``a.png``) are clashes."""
    files, _ = list_dataset(src)
    if not files:
        raise UserError(f"no images found under {display_path(src)}")
    src_abs, dst_abs = src.resolve(), dst.resolve()
    if dst_abs == src_abs or src_abs in dst_abs.parents:
        raise UserError(f"put --out outside DATA: {display_path(dst)} is inside "
                        f"{display_path(src)}")
    jobs, clashes, taken = [], [], {}
    for f in files:
        out = str(Path(f.path).with_suffix(".png"))
        if out in taken:
            clashes.append((f.path, f"same crop name as {taken[out]}"))
        else:
            taken[out] = f.path
            jobs.append((f.path, out))
    return jobs, clashes


def _previous_rows(dst: Path, jobs: list[tuple[str, str]]) -> dict[str, dict]:
    """Rows of an earlier run whose crop is still there, by source."""
    path = dst / ROWS_NAME
    if not path.is_file():
        return {}
    wanted = dict(jobs)
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        source = row.get("source")
        if wanted.get(source) == row.get("out") and (dst / row["out"]).is_file():
            rows[source] = row
    return rows


def _write_reports(dst: Path, rows: dict[str, dict], skipped: list[tuple[str, str]]) -> None:
    """The rows are the commit record of the crops: a crop without a row is made again, so
    the crops are flushed to disk (one ``sync`` instead of two fsyncs per crop) first."""
    os.sync()
    lines = [json.dumps(rows[s], separators=(", ", ": ")) + "\n" for s in sorted(rows)]
    atomic_write(dst / ROWS_NAME, "".join(lines))
    atomic_write(dst / SKIPPED_NAME, "".join(f"{reason}\t{display_path(source)}\n"
                                             for source, reason in sorted(skipped)))


def align_folder(src: str | Path, dst: str | Path, spec: AlignSpec = AlignSpec(),
                 workers: int = 0, batch_size: int = 32,
                 progress: Callable[[int], None] | None = None,
                 total: Callable[[int], None] | None = None) -> AlignSummary:
    """Align every image under ``src`` (identity folders or a flat folder) into ``dst``.

    Args:
        workers: processes that decode, detect and write (0: this process).
        batch_size: images per detector call (images of one size run as one batch).
        progress: called with the number of images finished, after each batch.
        total: called once with the number of images, before the work starts.

    Raises:
        UserError: ``src`` missing or without images, ``dst`` inside ``src``, ``dst`` made
            with other settings or not an aligned folder.
    """
    src, dst = Path(src), Path(dst)
    jobs, skipped = _plan(src, dst)
    _check_settings(dst, spec)
    rows = _previous_rows(dst, jobs)
    todo = [job for job in jobs if job[0] not in rows]
    summary = AlignSummary(images=len(jobs) + len(skipped), aligned=0, reused=len(rows))
    if total is not None:
        total(len(todo))
    loader = torch.utils.data.DataLoader(_Chunks(src, dst, todo, spec, batch_size),
                                         batch_size=1, num_workers=workers, collate_fn=_first)
    try:
        for chunk in loader:
            for source, row, reason in chunk:
                if row is None:
                    skipped.append((source, reason))
                else:
                    rows[source] = row
                    summary.aligned += 1
            if progress is not None:
                progress(len(chunk))
    finally:  # an interrupted run keeps the rows of the crops it wrote
        _write_reports(dst, rows, skipped)
    summary.skipped = sorted(skipped)
    summary.several = sum(1 for row in rows.values() if row["faces"] > 1)
    return summary


def default_workers() -> int:
    """One aligning process per CPU core, 1 to 8 (the main process only collects rows)."""
    return min(8, max(1, os.cpu_count() or 1))


def as_rgb_tensor(image: object) -> torch.Tensor:
    """A path, PIL image, (H, W, 3) uint8 array or (3, H, W) uint8 tensor -> (3, H, W) uint8.

    Raises:
        ImageError: a path that is not a usable image.
        ValueError: an array of another shape or dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        return decode_rgb(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.shape} "
                             f"{image.dtype}")
        return torch.from_numpy(np.array(image, order="C")).permute(2, 0, 1)  # a copy
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 \
            and image.dtype == torch.uint8:
        return image
    raise ValueError(f"expected a path, PIL image, (H, W, 3) uint8 array or (3, H, W) uint8 "
                     f"tensor, got {type(image).__name__}")


def align(images: Sequence[object], spec: AlignSpec = AlignSpec(),
          detector: Detector | None = None) -> list[np.ndarray | None]:
    """Aligned face crops of ``images`` (paths, PIL images, (H, W, 3) uint8 arrays or
    (3, H, W) uint8 tensors): one (size, size, 3) uint8 RGB array per image, ``None`` where no
    face was found. Feed them to an export trained on aligned crops."""
    detector = detector or Detector(spec.min_face)
    tensors = [as_rgb_tensor(image) for image in images]
    return [None if r.crop is None else r.crop.permute(1, 2, 0).numpy().copy()
            for r in align_tensors(tensors, detector, spec)]
