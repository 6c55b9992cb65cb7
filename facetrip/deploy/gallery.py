"""``facetrip enroll`` and ``facetrip identify``: a gallery of known identities, searched exactly.

A gallery (``.npz``, uncompressed) holds every enrolled image's embedding, one mean embedding
per identity, and the fingerprint of the model that made them
(:attr:`~facetrip.deploy.embedder.Embedder.fingerprint`): it is only ever searched with that
model (a checkpoint or any export of it).

Search is exact: the gallery's embeddings are memory-mapped from the npz (never loaded
whole) and scanned in blocks of rows, each with :func:`facetrip.metrics.knn.knn` (itself
chunked over the probes), the blocks' best merged; memory stays at about ``chunk_size x
block_rows`` distances whatever the gallery's size. Ties go to the lower gallery index.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facetrip.data.index import SkippedFile, scan_identity_folder
from facetrip.deploy.calibration import optional_threshold
from facetrip.deploy.embed_folder import first_skipped, stream_rows
from facetrip.errors import UserError
from facetrip.io import atomic_write
from facetrip.metrics.knn import DEFAULT_CHUNK_SIZE, knn
from facetrip.version import __version__

GALLERY_VERSION = 1
BLOCK_ROWS = 65536
MATCH_BY = ("image", "mean")


@dataclass
class EnrollResult:
    """What :func:`enroll` wrote."""

    out: Path
    identities: int
    images: int
    skipped: list[SkippedFile] = field(default_factory=list)
    #: identity folders with no usable image (not in the gallery)
    empty: list[str] = field(default_factory=list)


def _centroids(rows: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids (n, D) float32, counts (n,))``: each identity's mean embedding,
    re-normalised to unit length, of ``rows`` ``(N, D)`` grouped by ``labels`` ``(N,)``."""
    counts = np.bincount(labels, minlength=n)
    starts = np.concatenate(([0], np.cumsum(counts)))
    if np.any(np.diff(labels) < 0):  # pragma: no cover - scan orders paths by identity
        raise AssertionError("gallery rows are not grouped by identity")
    centroids = np.empty((n, rows.shape[1]), dtype=np.float32)
    for c in range(n):  # identity rows are contiguous: one slice each
        mean = np.asarray(rows[starts[c] : starts[c + 1]], np.float64).mean(0)
        centroids[c] = mean / max(np.linalg.norm(mean), 1e-12)
    return centroids, counts


def _gallery_meta(embedder: Any, root: Path, dim: int, identities: int, images: int) -> dict:
    """The gallery's ``meta``: the model it is tied to (fingerprint), what it holds, when."""
    return {
        "gallery_version": GALLERY_VERSION,
        "facetrip_version": __version__,
        "fingerprint": embedder.fingerprint,
        "model": str(embedder.path),
        "model_format": embedder.kind,
        "distance": embedder.distance,
        "embedding_dim": dim,
        "root": str(root),
        "identities": identities,
        "images": images,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def enroll(
    embedder: Any,
    root: str | Path,
    out: str | Path,
    batch_size: int = 256,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> EnrollResult:
    """Embed the identity folders ``root/<identity>/**/<image>`` into the gallery ``out``.

    The npz holds ``embeddings`` (N, D) float32, ``labels`` (N,) int64 into ``identities``
    (C,), ``paths`` (N,) relative to ``root``, ``centroids`` (C, D) float32 (each identity's
    mean embedding, re-normalised to unit length), ``counts`` (C,) and ``meta`` (JSON: model
    fingerprint, model file, distance, dimension, root, date). Rows stream to a scratch file,
    so memory does not grow with N. ``progress(n)`` per batch of ``n`` files.

    Raises:
        UserError: ``root`` has no identity folder with a usable image (a gallery of zero
            identities).
    """
    root, out = Path(root), Path(out)
    index = scan_identity_folder(root, validate=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        rows = stream_rows(embedder, root, index.paths, Path(tmp) / "rows.f32", batch_size,
                           workers, progress)
        skipped = list(index.skipped) + rows.skipped
        if not rows.kept:
            raise UserError(f"a gallery of zero identities: no image under {root} could be "
                            "used" + first_skipped(skipped))
        present, labels = np.unique(index.labels[rows.kept], return_inverse=True)
        store = rows.array()
        centroids, counts = _centroids(store, labels, len(present))
        meta = _gallery_meta(embedder, root, rows.dim, int(len(present)), len(rows.kept))
        arrays = {
            "embeddings": store,
            "labels": labels.astype(np.int64),
            "paths": np.asarray([index.paths[i] for i in rows.kept]),
            "identities": np.asarray([index.classes[i] for i in present]),
            "centroids": centroids,
            "counts": counts.astype(np.int64),
            "meta": np.asarray(json.dumps(meta)),
        }
        atomic_write(out, lambda f, a=arrays: np.savez(f, **a))
        del store, arrays
    empty = list(index.empty_classes) + [index.classes[i] for i in
                                         sorted(set(range(len(index.classes))) - set(present))]
    return EnrollResult(out, int(len(present)), len(rows.kept), skipped, empty)


# --------------------------------------------------------------------------- reading


def _npz_member_memmap(path: Path, name: str) -> np.ndarray:
    """Memory-map the array ``name`` of an uncompressed npz (an ``.npy`` stored in the zip)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise UserError(f"{path}: {name} is compressed; write galleries with facetrip enroll")
    with open(path, "rb") as f:  # the local header's name and extra field precede the data
        f.seek(info.header_offset)
        local = f.read(30)
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") \
            + int.from_bytes(local[28:30], "little")
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran or dtype.hasobject:
        raise UserError(f"{path}: {name} is not a C-ordered array of plain values")
    if 0 in shape:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


@dataclass
class Gallery:
    """An enrolled gallery; ``embeddings`` is memory-mapped."""

    path: Path
    meta: dict
    embeddings: np.ndarray  #: (N, D) float32, memory-mapped
    labels: np.ndarray  #: (N,) int64 into identities, memory-mapped
    paths: np.ndarray  #: (N,) str, memory-mapped
    identities: np.ndarray  #: (C,) str
    centroids: np.ndarray  #: (C, D) float32
    counts: np.ndarray  #: (C,) int64

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]


def load_gallery(path: str | Path) -> Gallery:
    """Open a gallery written by :func:`enroll`.

    Raises:
        UserError: missing, not a facetrip gallery, or of zero identities.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gallery not found: {path}")
    names = ("meta", "labels", "paths", "identities", "centroids", "counts", "embeddings")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in names if k not in npz.files]
            if missing:
                raise UserError(f"{path} is not a facetrip gallery (no {', '.join(missing)})")
            meta = json.loads(str(npz["meta"]))
            small = {k: npz[k] for k in ("identities", "centroids", "counts")}  # per identity
        large = {k: _npz_member_memmap(path, k) for k in ("embeddings", "labels", "paths")}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read gallery {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(meta, dict) or "fingerprint" not in meta:
        raise UserError(f"{path} is not a facetrip gallery (no model fingerprint)")
    if len(small["identities"]) == 0:
        raise UserError(f"gallery {path} has zero identities")
    embeddings = large["embeddings"]
    if embeddings.ndim != 2 or embeddings.dtype != np.float32 or not (
            embeddings.shape[0] == len(large["labels"]) == len(large["paths"])):
        raise UserError(f"gallery {path} is inconsistent: embeddings {embeddings.shape} "
                        f"{embeddings.dtype}, {len(large['labels'])} labels, "
                        f"{len(large['paths'])} paths")
    return Gallery(path, meta, embeddings, large["labels"], large["paths"], **small)


def check_model(gallery: Gallery, embedder: Any) -> None:
    """UserError unless ``embedder`` is the model (or an export of it) that enrolled
    ``gallery``: embeddings of two models are not comparable."""
    if embedder.fingerprint != gallery.fingerprint:
        raise UserError(
            f"gallery {gallery.path} was enrolled with another model ({gallery.meta.get('model')},"
            f" fingerprint {gallery.fingerprint[7:19]}) than {embedder.path} (fingerprint "
            f"{embedder.fingerprint[7:19]}): enroll it again with this model")


# --------------------------------------------------------------------------- search


def nearest(
    queries: np.ndarray,
    rows: np.ndarray,
    k: int,
    metric: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_rows: int = BLOCK_ROWS,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest ``rows`` of each query, scanning ``rows`` in blocks.

    Args:
        queries: ``(Q, D)``; rows: ``(N, D)`` (may be memory-mapped); ``k <= N`` (``N - 1``
            with ``exclude``).
        exclude: ``(Q,)`` the row each query must not return (itself), or None.

    Returns:
        ``distances (Q, k)`` ascending and ``indices (Q, k)`` int64 into ``rows``; equal
        distances by lower index.
    """
    q = torch.from_numpy(np.array(queries, np.float32))  # a writable copy (Q x D)
    n = rows.shape[0]
    best_d = torch.full((len(q), 0), float("inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, n, block_rows):
        block = torch.from_numpy(np.array(rows[start : start + block_rows], np.float32))  # copy
        kk = min(k + (exclude is not None), len(block))
        d, i = knn(q, block, kk, metric, chunk_size, exclude_self=False)
        i = i + start
        if exclude is not None:  # push the query's own row past every other
            own = i == torch.as_tensor(exclude, dtype=torch.int64)[:, None]
            d = d.masked_fill(own, float("inf"))
        d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
        d, order = torch.sort(d, dim=1, stable=True)  # earlier blocks (lower index) first
        best_d, best_i = d[:, :k], i.gather(1, order)[:, :k]
    return best_d.numpy(), best_i.numpy()


@dataclass
class Match:
    """One identity in a probe's ranking."""

    identity: str
    distance: float
    image: str | None  #: the gallery image nearest the probe (``by="image"``)


def rank_identities(
    gallery: Gallery,
    queries: np.ndarray,
    k: int = 5,
    by: str = "image",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_rows: int = BLOCK_ROWS,
    exclude: np.ndarray | None = None,
) -> list[list[Match]]:
    """The ``k`` nearest identities of each query (``(Q, D)`` embeddings), exactly.

    ``by="image"``: an identity's distance is that of its nearest gallery image (the
    nearest-neighbour rule ``facetrip eval``'s Recall@k scores); ``by="mean"``: the distance
    to its mean embedding. ``exclude`` (``by="image"``): per query a gallery row to ignore.
    """
    if by not in MATCH_BY:
        raise UserError(f"--by must be image or mean, got {by!r}")
    metric = gallery.meta["distance"]
    k = min(k, len(gallery.identities))
    if k < 1:
        raise UserError(f"--top-k must be >= 1, got {k}")
    if by == "mean":
        d, idx = nearest(queries, gallery.centroids, k, metric, chunk_size, block_rows)
        return [[Match(str(gallery.identities[j]), float(dist), None)
                 for dist, j in zip(dr, ir, strict=True)] for dr, ir in zip(d, idx, strict=True)]
    n_rows = gallery.embeddings.shape[0] - (exclude is not None)
    want = np.full(len(queries), min(n_rows, 4 * k + 16))
    out: list[list[Match] | None] = [None] * len(queries)
    todo = np.arange(len(queries))
    while len(todo):  # widen the search until each query has k distinct identities
        kk = int(want[todo].max())
        d, idx = nearest(queries[todo], gallery.embeddings, kk, metric, chunk_size, block_rows,
                         None if exclude is None else exclude[todo])
        again = []
        for row, q in enumerate(todo):
            seen: dict[int, Match] = {}
            for dist, j in zip(d[row], idx[row], strict=True):
                label = int(gallery.labels[j])
                if label not in seen and np.isfinite(dist):
                    seen[label] = Match(str(gallery.identities[label]), float(dist),
                                        str(gallery.paths[j]))
                    if len(seen) == k:
                        break
            if len(seen) < k and kk < n_rows:
                want[q] = min(n_rows, 2 * kk)
                again.append(q)
            else:
                out[q] = list(seen.values())
        todo = np.asarray(again, dtype=np.int64)
    return out  # type: ignore[return-value]


@dataclass
class Identification:
    """The answer for one probe: its ranking, and the known/unknown verdict when there is a
    threshold (``threshold`` None: a ranking only, ``known`` and ``identity`` None)."""

    probe: str
    matches: list[Match]  #: the nearest identities, nearest first
    threshold: float | None
    threshold_source: str | None  #: "--threshold", "best accuracy on ...", "FAR 0.001 on ..."
    metric: str

    @property
    def known(self) -> bool | None:
        """Whether the nearest identity is nearer than the threshold (None: no threshold)."""
        if self.threshold is None:
            return None
        return self.matches[0].distance < self.threshold

    @property
    def identity(self) -> str | None:
        """The nearest identity when it is known, else None."""
        return self.matches[0].identity if self.known else None

    def to_dict(self) -> dict:
        return {"probe": self.probe, "identity": self.identity, "known": self.known,
                "threshold": self.threshold, "threshold_source": self.threshold_source,
                "metric": self.metric,
                "matches": [{"identity": m.identity, "distance": m.distance, "image": m.image}
                            for m in self.matches]}


def identify(
    embedder: Any,
    gallery: Gallery,
    probes: list[Path],
    k: int = 5,
    by: str = "image",
    far: float | None = None,
    threshold: float | None = None,
) -> list[Identification]:
    """Rank the ``k`` nearest identities of ``gallery`` for each probe image file, with
    ``embedder`` (the model that enrolled it, or an export of it), and decide known/unknown
    when there is a threshold: ``threshold``, else the calibrated one at ``far``, else the
    best-accuracy one; a model without calibration and neither given ranks only.

    Raises:
        UserError: another model's gallery; a probe missing or unusable; ``far`` without a
            calibration (or one that cannot resolve it); a bad ``k`` or ``by``.
    """
    check_model(gallery, embedder)
    value, source = optional_threshold(embedder.calibration, far, threshold)
    queries = embedder.embed_files(list(probes))
    ranked = rank_identities(gallery, queries, k, by)
    return [Identification(str(probe), matches, value, source, gallery.meta["distance"])
            for probe, matches in zip(probes, ranked, strict=True)]
