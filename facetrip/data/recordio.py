"""MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``), read and written without MXNet.

The format, as dmlc-core's ``recordio.cc`` and MXNet's ``recordio.py`` write it:

* A record is a ``uint32`` magic ``0xced7230a``, a ``uint32`` whose upper 3 bits are a
  continuation flag and lower 29 bits the length, the payload, then zeros up to a multiple
  of 4 bytes. A payload holding the magic at an offset that is a multiple of 4 is split there
  into parts (flag 1 for the first, 2 for the middle ones, 3 for the last; 0 for a whole
  record); the magic itself is left out and put back between the parts on reading.
* An image record's payload is an ``IRHeader`` (``<IfQQ``: ``flag`` uint32, ``label``
  float32, ``id`` uint64, ``id2`` uint64), then ``flag`` float32 labels when ``flag > 0``,
  then the encoded image, stored as the file was.
* ``train.idx`` is text, ``key<TAB>byte offset`` per record.
* The insightface layout (MS1M, Glint360K, CASIA-WebFace...): record 0 is a header whose
  labels are the range ``[first identity record, end)``; identity record ``k`` has the labels
  ``[first image key, end)``; the images are records ``1 .. first identity record - 1``.
  A set without the header record takes each image's identity from its (first) label.
* ``property`` holds ``num_classes,height,width``.

:func:`scan_record_file` indexes a set as :class:`~facetrip.data.index.ImageFolderIndex`
(``root`` is the ``.rec``, ``paths`` the record keys as text, ``classes`` the identity
numbers, or the names ``facetrip pack`` kept), checking every indexed record's framing at once
through a memory map; a corrupt or truncated record is a skipped, counted item with its
reason. :class:`RecordFile` reads one record by key (``DataLoader`` workers each open their own
file). :func:`pack_identity_folder` writes a set from an identity folder.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from facetrip.data.decode import ImageError, display_path, header_size, read_bytes
from facetrip.data.index import (
    ImageFolderIndex,
    SkippedFile,
    scan_identity_folder,
    skip_summary,
)
from facetrip.errors import UserError
from facetrip.io import atomic_write

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_FRAME = struct.Struct("<II")  # magic, continuation flag << 29 | length
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
_HEADER_WORDS = IR_HEADER.size // 4
NAMES_SUFFIX = ".identities.txt"  #: identity names ``facetrip pack`` keeps beside the .rec


class RecordError(ImageError):
    """A record that cannot be read (``reason``: ``corrupt record`` or ``truncated``)."""


@dataclass(frozen=True)
class IRHeader:
    """The header of a record's payload. ``labels``: the ``flag`` float labels, or
    ``(label,)`` when ``flag`` is 0."""

    flag: int
    label: float
    id: int
    id2: int
    labels: tuple[float, ...]


def pack_payload(labels: float | Sequence[float], image: bytes = b"", key: int = 0,
                 id2: int = 0) -> bytes:
    """An ``IRHeader`` (``id = key``) and ``image``: one label as ``label`` (``flag`` 0), or
    several as ``flag`` float32 labels after the header, as MXNet's ``recordio.pack``."""
    if isinstance(labels, (int, float)):
        return IR_HEADER.pack(0, float(labels), key, id2) + image
    values = np.asarray(labels, dtype="<f4")
    return IR_HEADER.pack(values.size, 0.0, key, id2) + values.tobytes() + image


def unpack_payload(payload: bytes) -> tuple[IRHeader, bytes]:
    """``(header, image bytes)`` of a record's payload.

    Raises:
        RecordError: the payload is shorter than its header and labels.
    """
    if len(payload) < IR_HEADER.size:
        raise RecordError("corrupt record", f"{len(payload)} bytes, shorter than its header")
    flag, label, key, id2 = IR_HEADER.unpack_from(payload)
    end = IR_HEADER.size + 4 * flag
    if flag and len(payload) < end:
        raise RecordError("corrupt record", f"{flag} labels do not fit in {len(payload)} bytes")
    labels = (tuple(np.frombuffer(payload, "<f4", flag, IR_HEADER.size).tolist()) if flag
              else (label,))
    return IRHeader(flag, label, key, id2, labels), payload[end if flag else IR_HEADER.size:]


def frame_record(payload: bytes) -> bytes:
    """The bytes of one record holding ``payload`` (split at the magic as dmlc-core does)."""
    if len(payload) > _LENGTH_MASK:
        raise ValueError(f"a record holds at most {_LENGTH_MASK} bytes, got {len(payload)}")
    words = np.frombuffer(payload, "<u4", len(payload) // 4)
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    parts, start = [], 0
    for cut in cuts:
        parts.append(payload[start:cut])
        start = cut + 4
    parts.append(payload[start:])
    out = bytearray()
    for i, part in enumerate(parts):
        flag = 0 if len(parts) == 1 else 1 if i == 0 else 3 if i == len(parts) - 1 else 2
        out += _FRAME.pack(MAGIC, flag << _LENGTH_BITS | len(part)) + part
    out += b"\0" * (-len(out) % 4)
    return bytes(out)


def parse_record(read: Callable[[int, int], bytes], offset: int, limit: int | None = None
                 ) -> bytes:
    """The payload of the record at ``offset``, joining split parts; ``read(offset, n)``
    returns up to ``n`` bytes of the file; ``limit``: where the next record starts.

    Raises:
        RecordError: no magic there, a part that is not where it should be, or a record that
            runs past the end of the file or into the next record.
    """
    payload = bytearray()
    position, first = offset, True
    while True:
        frame = read(position, _FRAME.size)
        if len(frame) < _FRAME.size:
            raise RecordError("truncated", f"record at byte {offset} is cut short")
        magic, lrec = _FRAME.unpack(frame)
        flag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
        if magic != MAGIC:
            raise RecordError("corrupt record", f"no RecordIO magic at byte {position}")
        if flag not in ((0, 1) if first else (2, 3)):
            raise RecordError("corrupt record", f"continuation flag {flag} at byte {position}")
        data = read(position + _FRAME.size, length)
        if len(data) < length:
            raise RecordError("truncated", f"the record at byte {offset} runs past the end "
                                           "of the file")
        if limit is not None and position + _FRAME.size + length > limit:
            raise RecordError("corrupt record", f"the record at byte {offset} overlaps the "
                                                "next one")
        payload += data
        position += _FRAME.size + length + (-length % 4)
        if flag in (0, 3):
            return bytes(payload)
        payload += _MAGIC_BYTES
        first = False


# --------------------------------------------------------------------------- the .idx file


def index_path(rec: str | Path) -> Path:
    """``train.rec`` -> ``train.idx``."""
    return Path(rec).with_suffix(".idx")


def read_index(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[SkippedFile]]:
    """``(keys (K,) int64, offsets (K,) int64, bad lines)`` of a ``.idx`` file, by key; a
    line that is not two integers (a cut last line...) is a skipped item; a key listed twice
    keeps its last offset, as MXNet does.

    Raises:
        UserError: the file cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the RecordIO index {display_path(path)}: "
                        f"{exc.strerror or exc}") from None
    lines = text.count(b"\n") + (not text.endswith(b"\n") and bool(text))
    with warnings.catch_warnings():  # fromstring stops (and warns) at the first bad token
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(text.decode("latin-1"), dtype=np.int64, sep=" ")
    bad: list[SkippedFile] = []
    if values.size != 2 * lines:  # slow path: find the bad lines
        pairs = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                key, offset = (int(f) for f in fields)
            except ValueError:
                bad.append(SkippedFile(f"{path.name} line {number}",
                                       f"corrupt index: {line[:40]!r}"))
                continue
            pairs.append((key, offset))
        values = np.asarray(pairs, dtype=np.int64).reshape(-1)
    keys, offsets = values[0::2], values[1::2]
    order = np.argsort(keys, kind="stable")
    keys, offsets = keys[order], offsets[order]
    last = np.append(keys[1:] != keys[:-1], True) if keys.size else keys.astype(bool)
    return keys[last], offsets[last], bad


def write_index(offsets: Sequence[tuple[int, int]]) -> str:
    """The ``.idx`` text of ``(key, offset)`` pairs, in the given order."""
    return "".join(f"{key}\t{offset}\n" for key, offset in offsets)


# --------------------------------------------------------------------------- reading


class RecordFile:
    """Random access to the records of a ``.rec`` through its ``.idx``.

    The file is opened lazily in each process that reads (so a pickled or forked copy in a
    ``DataLoader`` worker opens its own).

    Raises:
        UserError: the ``.rec`` or its ``.idx`` is missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"RecordIO file not found: {display_path(self.path)}")
        idx = index_path(self.path)
        if not idx.is_file():
            raise UserError(f"{display_path(self.path)} has no index {display_path(idx)} beside "
                            "it (the .idx that maps record keys to byte offsets)")
        self.keys, self.offsets, self.bad_lines = read_index(idx)
        self.size = self.path.stat().st_size
        #: per record, where the next record in file order starts (the end of the file)
        self.limits = np.full(len(self.keys), self.size, np.int64)
        order = np.argsort(self.offsets, kind="stable")
        self.limits[order[:-1]] = np.maximum(self.offsets[order[1:]],
                                             self.offsets[order[:-1]] + _FRAME.size)
        self._file: IO[bytes] | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1
        return state

    def __len__(self) -> int:
        return int(self.keys.size)

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """``(n,) int64`` position of each key in :attr:`keys` / :attr:`offsets`, -1 where the
        index does not list it."""
        keys = np.asarray(keys, dtype=np.int64)
        at = np.searchsorted(self.keys, keys).clip(0, max(len(self.keys) - 1, 0))
        found = self.keys[at] == keys if len(self.keys) else np.zeros(keys.shape, bool)
        return np.where(found, at, -1)

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` of the ``.rec``."""
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open)
            self._pid = os.getpid()
        self._file.seek(offset)
        return self._file.read(n)

    def payload(self, key: int) -> bytes:
        """The payload of record ``key``.

        Raises:
            RecordError: the key is not indexed, or its record is corrupt or truncated.
        """
        at = int(self.positions(np.asarray([key]))[0])
        if at < 0:
            raise RecordError("corrupt record", f"key {key} is not in the index")
        return parse_record(self.read, int(self.offsets[at]), int(self.limits[at]))

    def image(self, key: int | str) -> tuple[IRHeader, bytes]:
        """``(header, encoded image bytes)`` of record ``key`` (raises :class:`RecordError`)."""
        return unpack_payload(self.payload(int(key)))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class _Records:
    """Per indexed record (position ``i`` of :attr:`RecordFile.keys`): its header's ``flag``,
    first two labels and payload length; ``bad``: position -> why it is unusable."""

    flag: np.ndarray
    label0: np.ndarray
    label1: np.ndarray
    length: np.ndarray
    bad: dict[int, str]

    def usable_images(self, at: np.ndarray) -> np.ndarray:
        """Which positions ``at`` (-1: not indexed) hold a sound record with image bytes."""
        at = np.asarray(at, np.int64)
        safe = np.maximum(at, 0)
        sound = np.ones(at.shape, bool) if not self.bad else ~np.isin(safe, list(self.bad))
        return (at >= 0) & sound & (self.length[safe] > IR_HEADER.size + 4 * self.flag[safe])

    def image_reason(self, at: int) -> str:
        """Why the record at position ``at`` (-1: not indexed) is not a usable image."""
        if at < 0:
            return "not in the index"
        return self.bad.get(at, "not an image: the record holds no image bytes")


def _inspect(rec: RecordFile) -> _Records:
    """Check the framing and read the header of every indexed record at once (a memory map
    of the file); split and suspicious records one by one."""
    n = len(rec)
    offsets, size = rec.offsets, rec.size
    info = _Records(np.zeros(n, np.int64), np.full(n, np.nan), np.full(n, np.nan),
                    np.zeros(n, np.int64), {})
    if n == 0:
        return info
    words = (np.memmap(rec.path, dtype="<u4", mode="r", shape=(size // 4,)) if size >= 4
             else np.zeros(1, "<u4"))
    whole = (offsets >= 0) & (offsets % 4 == 0) & (offsets + 8 <= size)
    w = np.where(whole, offsets // 4, 0)

    def get(i: int) -> np.ndarray:
        return np.asarray(words[np.minimum(w + i, len(words) - 1)], "<u4")

    magic, lrec = get(0), get(1)
    cflag = (lrec >> _LENGTH_BITS).astype(np.int64)
    length = (lrec & _LENGTH_MASK).astype(np.int64)
    end = offsets + 8 + length
    sound = (whole & (magic == MAGIC) & (cflag == 0) & (end <= rec.limits)
             & (length >= IR_HEADER.size))
    flag = np.where(sound, get(2), 0).astype(np.int64)
    sound &= IR_HEADER.size + 4 * flag <= length
    info.flag[:], info.length[:] = np.where(sound, flag, 0), np.where(sound, length, 0)
    first = np.where(flag == 0, get(3).view("<f4"), get(_HEADER_WORDS + 2).view("<f4"))
    info.label0[:] = np.where(sound, first, np.nan)
    info.label1[:] = np.where(sound & (flag >= 2), get(_HEADER_WORDS + 3).view("<f4"), np.nan)
    for i in np.flatnonzero(~sound).tolist():
        _inspect_one(rec, info, i)
    return info


def _inspect_one(rec: RecordFile, info: _Records, i: int) -> None:
    """Fill in record ``i``, which failed the vectorised checks: a sound split record, or
    why it is unusable."""
    offset = int(rec.offsets[i])
    if offset % 4:
        info.bad[i] = f"corrupt record: offset {offset} is not a multiple of 4"
    else:
        try:
            payload = parse_record(rec.read, offset, int(rec.limits[i]))
            head, _ = unpack_payload(payload)
        except RecordError as exc:
            info.bad[i] = str(exc)
            return
        info.flag[i], info.length[i] = head.flag, len(payload)
        info.label0[i] = head.labels[0]
        info.label1[i] = head.labels[1] if len(head.labels) > 1 else np.nan


def _integral(values: np.ndarray) -> np.ndarray:
    """Which float labels are whole non-negative numbers (identity numbers, record keys)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= 0) & (values == np.round(values))


def _header_layout(rec: RecordFile, info: _Records) -> tuple[int, int] | None:
    """``(first identity record, end)`` from record 0 when the set has insightface's header
    record (two integral labels, no image), else None."""
    at = int(rec.positions(np.asarray([0]))[0])
    if at < 0 or at in info.bad or info.flag[at] < 2:
        return None
    if info.length[at] != IR_HEADER.size + 4 * info.flag[at]:
        return None  # an image with several labels, not a header
    first, end = info.label0[at], info.label1[at]
    if not (_integral(np.asarray([first, end])).all() and 1 <= first <= end):
        return None
    return int(first), int(end)


@dataclass
class _Assignment:
    """Images (positions in the index) with their class, and what was skipped."""

    positions: np.ndarray
    labels: np.ndarray
    skipped: list[SkippedFile] = field(default_factory=list)


def _by_identity_records(rec: RecordFile, info: _Records, first: int, end: int
                         ) -> tuple[_Assignment, list[str]]:
    """Images grouped by the identity records ``first .. end - 1``; class ``k`` is named
    ``"k"``, as the images' labels in insightface's sets."""
    skipped: list[SkippedFile] = []
    owner = np.full(first, -1, np.int64)  # image key -> class
    for k, at in enumerate(rec.positions(np.arange(first, end)).tolist()):
        lo, hi = (info.label0[at], info.label1[at]) if at >= 0 else (np.nan, np.nan)
        reason = ("not in the index" if at < 0 else info.bad.get(at)
                  or (None if info.flag[at] >= 2 and _integral(np.asarray([lo, hi])).all()
                      and 1 <= lo <= hi <= first else "corrupt record: not an image range"))
        if reason is None and (owner[int(lo):int(hi)] >= 0).any():
            reason = "corrupt record: its images belong to another identity too"
        if reason is not None:
            skipped.append(SkippedFile(str(first + k), f"{reason} (identity record)"))
        else:
            owner[int(lo):int(hi)] = k
    keys = np.arange(1, first)
    at = rec.positions(keys)
    usable = info.usable_images(at) & (owner[1:] >= 0)
    for i in np.flatnonzero(~usable & ((at >= 0) | (owner[1:] >= 0))).tolist():
        reason = info.image_reason(int(at[i])) if owner[1 + i] >= 0 else \
            "outside identity records"
        skipped.append(SkippedFile(str(int(keys[i])), reason))
    return (_Assignment(at[usable], owner[1:][usable], skipped),
            [str(k) for k in range(end - first)])


def _by_image_labels(rec: RecordFile, info: _Records) -> tuple[_Assignment, list[str]]:
    """Every record an image of the identity its (first) label names."""
    at = np.arange(len(rec))
    usable = info.usable_images(at)
    numbered = usable & _integral(info.label0)
    skipped = [SkippedFile(str(int(rec.keys[i])), info.image_reason(i) if not usable[i] else
                           f"corrupt record: label {info.label0[i]:g} is not an identity number")
               for i in np.flatnonzero(~numbered).tolist()]
    classes, labels = np.unique(info.label0[numbered].astype(np.int64), return_inverse=True)
    return (_Assignment(at[numbered], labels.astype(np.int64).reshape(-1), skipped),
            [str(c) for c in classes.tolist()])


def identity_names(rec: str | Path, count: int) -> list[str] | None:
    """The identity names ``facetrip pack`` kept beside ``rec`` (``train.identities.txt``,
    one per line in class order), or None when there is no such file of ``count`` lines."""
    path = Path(rec).with_suffix(NAMES_SUFFIX)
    try:
        names = path.read_bytes().decode("utf-8", "surrogateescape").split("\n")[:-1]
    except OSError:
        return None
    return names if len(names) == count and len(set(names)) == count else None


def scan_record_file(path: str | Path) -> ImageFolderIndex:
    """Index the images of a RecordIO set: ``root`` = ``path``, ``paths`` = record keys (text),
    one class per identity (insightface's identity records, else the images' labels).

    Identities are named by number (``"0"``, ``"1"``...), or by the names ``facetrip pack``
    kept. Corrupt, truncated and unindexed records are ``skipped`` with their reason;
    identities without a usable image are ``empty_classes``.

    Raises:
        UserError: the ``.rec`` or ``.idx`` is missing, or no record holds a usable image.
    """
    rec = RecordFile(path)
    info = _inspect(rec)
    layout = _header_layout(rec, info)
    if layout is not None:
        found, names = _by_identity_records(rec, info, *layout)
    else:
        found, names = _by_image_labels(rec, info)
    found.skipped[:0] = rec.bad_lines
    return _as_index(rec, found, identity_names(path, len(names)) or names)


def _as_index(rec: RecordFile, found: _Assignment, names: list[str]) -> ImageFolderIndex:
    """The :class:`ImageFolderIndex` of an assignment: images grouped by class, in key order."""
    labels = found.labels
    keys = rec.keys[found.positions]
    order = np.lexsort((keys, labels))
    counts = np.bincount(labels, minlength=len(names))
    used = np.flatnonzero(counts > 0)
    if used.size == 0:
        raise UserError(f"no usable image record in {display_path(rec.path)}"
                        + (f" ({len(found.skipped)} records skipped: "
                           f"{found.skipped[0].reason}...)" if found.skipped else ""))
    remap = np.full(len(names), -1, np.int64)
    remap[used] = np.arange(used.size)
    return ImageFolderIndex(
        root=rec.path,
        paths=[str(k) for k in keys[order].tolist()],
        labels=remap[labels[order]],
        classes=[names[i] for i in used.tolist()],
        skipped=found.skipped,
        empty_classes=[names[i] for i in np.flatnonzero(counts == 0).tolist()],
    )


# --------------------------------------------------------------------------- writing


@dataclass
class PackResult:
    """What :func:`pack_identity_folder` wrote."""

    rec: Path
    idx: Path
    property: Path
    names: Path
    images: int
    identities: int
    image_size: tuple[int, int]  #: ``(height, width)`` written to ``property`` (most common)
    bytes: int  #: size of the ``.rec``
    skipped: list[SkippedFile]

    def skip_summary(self) -> str:
        """One line such as ``skipped 2 files: 2 truncated`` ('' if none)."""
        return skip_summary(self.skipped)


def pack_identity_folder(
    root: str | Path,
    out: str | Path,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """:func:`write_record_set` of the identity folder ``root`` (scanned first: unusable
    files are skipped and listed, like everywhere in facetrip)."""
    check_pack_target(out, overwrite)
    return write_record_set(scan_identity_folder(root), out, progress)


def check_pack_target(out: str | Path, overwrite: bool) -> None:
    """UserError unless ``out`` names a ``.rec`` that does not exist yet (or ``overwrite``)."""
    out = Path(out)
    if out.suffix != ".rec":
        raise UserError(f"--out must name a .rec file, got {display_path(out)}")
    if out.exists() and not overwrite:
        raise UserError(f"{display_path(out)} exists; give --overwrite to replace it")


@dataclass
class _Written:
    """What :func:`write_record_set` wrote so far: per identity its image keys ``[first,
    end)`` and name, every record's ``(key, offset)``, the image sizes, what was skipped."""

    skipped: list[SkippedFile]
    ranges: list[tuple[int, int]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)

    @property
    def images(self) -> int:
        return self.ranges[-1][1] - 1 if self.ranges else 0


def _write_images(f: IO[bytes], index: ImageFolderIndex, done: _Written,
                  progress: Callable[[int], None] | None) -> None:
    """Image records ``1..N``, identity by identity, each file's bytes unchanged."""
    order = np.argsort(index.labels, kind="stable")
    bounds = np.searchsorted(index.labels[order], np.arange(len(index.classes) + 1))
    key = 1
    for label in range(len(index.classes)):
        start = key
        for i in order[bounds[label]:bounds[label + 1]].tolist():
            try:
                data = bytes(read_bytes(Path(index.root) / index.paths[i]))
            except ImageError as exc:  # changed since the scan
                done.skipped.append(SkippedFile(index.paths[i], str(exc)))
            else:
                size = header_size(data)
                done.sizes[size[::-1] if size else None] += 1
                done.offsets.append((key, f.tell()))
                f.write(frame_record(pack_payload(float(len(done.ranges)), data, key)))
                key += 1
            if progress is not None:
                progress(1)
        if key > start:
            done.ranges.append((start, key))
            done.names.append(index.classes[label])


def _write_identities(f: IO[bytes], done: _Written) -> None:
    """Identity records ``N+1..N+C`` (their image key ranges), then the header (record 0,
    at the start of the file, where a placeholder of the same size was written)."""
    first = done.images + 1
    for k, (lo, hi) in enumerate(done.ranges):
        done.offsets.append((first + k, f.tell()))
        f.write(frame_record(pack_payload([float(lo), float(hi)], key=first + k)))
    end = f.tell()
    header = frame_record(pack_payload([float(first), float(first + len(done.ranges))]))
    f.seek(0)
    f.write(header)
    f.seek(end)
    done.offsets.insert(0, (0, 0))


def write_record_set(
    index: ImageFolderIndex,
    out: str | Path,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Write the images of ``index`` (an identity folder's) as an insightface RecordIO set:
    ``out`` (``.rec``), its ``.idx``, ``property`` (``num_classes,height,width``, the most
    common image size) and the identity names (``<stem>.identities.txt``, which
    :func:`scan_record_file` reads back).

    Record 0 is the header, records ``1..N`` the images (each file's bytes as they are, label
    = its class number), records ``N+1..N+C`` the identities (their image key ranges). Files
    the scan found unusable, and those that fail to read now, are skipped and listed;
    ``progress(n)`` after each ``n`` files. Each file is written under a temporary name and
    renamed when complete (the ``.rec`` first, then its ``.idx``).
    """
    out = Path(out)
    done = _Written(list(index.skipped))

    def write(f: IO[bytes]) -> None:
        f.write(frame_record(pack_payload([0.0, 0.0])))  # the header's place
        _write_images(f, index, done, progress)
        _write_identities(f, done)

    atomic_write(out, write)
    idx = atomic_write(index_path(out), write_index(done.offsets))
    done.sizes.pop(None, None)
    height, width = done.sizes.most_common(1)[0][0] if done.sizes else (0, 0)
    prop = atomic_write(out.parent / "property", f"{len(done.ranges)},{height},{width}")
    names = atomic_write(out.with_suffix(NAMES_SUFFIX), "".join(f"{n}\n" for n in done.names))
    return PackResult(out, idx, prop, names, done.images, len(done.ranges), (height, width),
                      out.stat().st_size, done.skipped)
