"""Identity-folder datasets: ``root/<identity>/<image>`` -> paths, integer labels, skip report."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facetrip.data.decode import ImageError, display_path, probe_image
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
    #: identity folders without a single usable image
    empty_classes: list[str] = field(default_factory=list)

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
            empty_classes=list(self.empty_classes),
        )

    def skip_summary(self) -> str:
        """One line such as ``skipped 3 files: 2 unreadable, 1 too large`` ('' if none);
        "records" for a RecordIO set."""
        return skip_summary(self.skipped, "record" if Path(self.root).suffix == ".rec"
                            else "file")


def skip_summary(skipped: list[SkippedFile], what: str = "file") -> str:
    """One line such as ``skipped 3 files: 2 unreadable, 1 too large`` ('' if none): the
    count of each reason category (the text before the first colon)."""
    if not skipped:
        return ""
    counts = Counter(s.reason.split(":")[0] for s in skipped)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    parts = ", ".join(f"{n} {reason}" for reason, n in ordered)
    return f"skipped {len(skipped)} {what}{'s' * (len(skipped) != 1)}: {parts}"


def check_image(path: Path) -> str | None:
    """``None`` if ``path`` looks usable (header and JPEG end marker only: fast), else the
    reason it is not, e.g. ``"too large: 20000x20000 pixels"``."""
    try:
        probe_image(path)
    except ImageError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class SourceFile:
    """A candidate image file as listed: what the decoded cache checks for staleness."""

    path: str  #: relative to the dataset root
    identity: str | None  #: the identity folder (first path component); None at the root
    size: int  #: bytes, -1 if ``stat`` failed (e.g. broken link)
    mtime_ns: int  #: modification time, -1 if ``stat`` failed


def list_dataset(root: str | Path) -> tuple[list[SourceFile], list[str]]:
    """Every file with an image extension under ``root`` (sorted) and the identity folders.

    Raises:
        UserError: ``root`` is missing or not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset directory not found: {display_path(root)}")
    files: list[SourceFile] = []

    def add(full: str, identity: str | None) -> None:
        try:
            st = os.stat(full)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        files.append(SourceFile(os.path.relpath(full, root), identity, size, mtime))

    def is_image(name: str) -> bool:
        return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS

    entries = sorted(os.scandir(root), key=lambda e: e.name)
    identity_dirs = [e.name for e in entries if e.is_dir()]
    for entry in entries:
        if not entry.is_dir() and is_image(entry.name):
            add(entry.path, None)
    for name in identity_dirs:
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if is_image(filename):
                    add(os.path.join(dirpath, filename), name)
    return files, identity_dirs


def build_index(
    root: str | Path,
    files: list[SourceFile],
    identity_dirs: list[str],
    reasons: list[str | None],
) -> ImageFolderIndex:
    """The index of the ``files`` whose reason is ``None``; the others are recorded as skipped.

    Files at the root are skipped ("outside identity folders", unless their reason says
    otherwise); identity folders without a usable image end up in ``empty_classes``.

    Raises:
        UserError: no identity has a usable image.
    """
    root = Path(root)
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[SkippedFile] = []
    position = {name: i for i, name in enumerate(identity_dirs)}
    found: list[list[str]] = [[] for _ in identity_dirs]
    for f, reason in zip(files, reasons, strict=True):
        if f.identity is None:
            skipped.append(SkippedFile(f.path, reason or "outside identity folders"))
        elif reason is not None:
            skipped.append(SkippedFile(f.path, reason))
        else:
            found[position[f.identity]].append(f.path)
    classes: list[str] = []
    empty: list[str] = []
    for name, usable in zip(identity_dirs, found, strict=True):
        if usable:
            paths.extend(usable)
            labels.extend([len(classes)] * len(usable))
            classes.append(name)
        else:
            empty.append(name)
    if not paths:
        raise UserError(
            f"no identities found in {display_path(root)}: expected "
            f"{display_path(root)}/<identity>/<image> with images of type "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
            + (f" ({len(skipped)} files skipped)" if skipped else "")
        )
    return ImageFolderIndex(root, paths, np.asarray(labels, dtype=np.int64), classes, skipped,
                            empty)


def scan_identity_folder(root: str | Path, validate: bool = True) -> ImageFolderIndex:
    """List ``root/<identity>/**/<image>`` files; each sub-folder of ``root`` is one identity.

    Files without an image extension are ignored; image files directly in ``root`` are skipped
    and counted. With ``validate``, every image header is read once (and a JPEG's end marker
    checked) and unusable files are recorded in ``skipped`` with their reason instead of
    failing later. Identities with no usable image are listed in ``empty_classes``.

    Raises:
        UserError: ``root`` is missing, not a directory, or holds no identity with an image.
    """
    files, identity_dirs = list_dataset(root)
    reasons = [
        check_image(Path(root) / f.path) if validate and f.identity is not None else None
        for f in files
    ]
    return build_index(root, files, identity_dirs, reasons)


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


def read_identity_list(path: str | Path) -> list[str]:
    """Identity names from ``path``: one per line, or LFW's ``people*.txt`` format (a count
    line, then ``name count`` lines, in one or several sets). Blank lines are ignored.

    Raises:
        UserError: the file is missing or lists no identity.
    """
    path = Path(path)
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise UserError(f"cannot read identity list {path}: {exc.strerror or exc}") from None
    lines = [tokens for tokens in lines if tokens]
    people = bool(lines) and len(lines[0]) == 1 and lines[0][0].isdigit() and all(
        len(tokens) == 1 and tokens[0].isdigit() or (len(tokens) == 2 and tokens[1].isdigit())
        for tokens in lines)
    if people:  # LFW: count lines (one token, a number) and "name count" lines
        names = [tokens[0] for tokens in lines if len(tokens) == 2]
    else:
        names = [" ".join(tokens) for tokens in lines]
    if not names:
        raise UserError(f"identity list {path} names no identity")
    return list(dict.fromkeys(names))


def restrict_identities(index: ImageFolderIndex, names: list[str], source: str
                        ) -> ImageFolderIndex:
    """The identities of ``index`` named in ``names`` (an identity list from ``source``).

    Raises:
        UserError: a name is not an identity folder of the dataset (the first few are named).
    """
    position = {name: i for i, name in enumerate(index.classes)}
    unknown = [name for name in names if name not in position]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(f"{source}: {len(unknown)} identities are not folders of "
                        f"{index.root}: {shown}{more}")
    return index.select_classes(np.asarray(sorted(position[n] for n in names)))
