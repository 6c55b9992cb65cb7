"""Verification pair protocols: LFW pair files, seeded identity-disjoint pairs, path lookup.

* :func:`read_pairs` parses LFW ``pairs.txt`` (View 2, 10 folds) and ``pairsDevTrain.txt`` /
  ``pairsDevTest.txt`` (View 1, a single fold) into a :class:`PairList` of relative paths.
* :func:`generate_pairs` draws a balanced, seeded pair protocol for any labelled item list,
  with identity-disjoint folds, as a :class:`PairIndexList` of item indices.
* :func:`resolve_pairs` maps a :class:`PairList`'s relative paths to item indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class PairList:
    """Image pairs given by relative path (``name/name_0001.jpg``).

    Attributes:
        path1, path2: ``P`` relative POSIX paths each.
        issame: ``(P,)`` bool, True for same-identity pairs.
        fold: ``(P,)`` int64 fold id of each pair.
    """

    path1: list[str]
    path2: list[str]
    issame: np.ndarray
    fold: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.path1)
        if not (len(self.path2) == self.issame.shape[0] == self.fold.shape[0] == n):
            raise ValueError("PairList fields must all have the same length")

    def __len__(self) -> int:
        return len(self.path1)


@dataclass(frozen=True, eq=False)
class PairIndexList:
    """Pairs given by item index.

    Attributes:
        idx1, idx2: ``(P,)`` int64 indices into the item list.
        issame: ``(P,)`` bool, True for same-identity pairs.
        fold: ``(P,)`` int64 fold id of each pair.
    """

    idx1: np.ndarray
    idx2: np.ndarray
    issame: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return int(self.idx1.shape[0])


# --------------------------------------------------------------------------- LFW pair files


def lfw_image_path(name: str, number: int) -> str:
    """Relative path of LFW image ``number`` (1-based) of ``name``: ``name/name_0001.jpg``."""
    return f"{name}/{name}_{number:04d}.jpg"


def _parse_number(token: str, path: Path, line_no: int) -> int:
    """A positive integer field, or a ValueError naming file and line."""
    if not token.isdigit() or int(token) < 1:
        raise ValueError(f"{path}:{line_no}: expected a positive image number, got {token!r}")
    return int(token)


def _parse_header(tokens: list[str], path: Path, line_no: int) -> tuple[int, int]:
    """``(n_folds, n_per_class)`` from ``"10 300"`` (View 2) or ``"1100"`` (View 1)."""
    if len(tokens) not in (1, 2) or not all(t.isdigit() for t in tokens):
        raise ValueError(
            f"{path}:{line_no}: header must be 'n_folds n_per_fold' or 'n_pairs', got {tokens}"
        )
    numbers = [int(t) for t in tokens]
    if min(numbers) < 1:
        raise ValueError(f"{path}:{line_no}: header counts must be positive, got {tokens}")
    return (1, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])


def _check_name(name: str, path: Path, line_no: int) -> None:
    """An identity name must be one folder inside the data root: no separator, no ``..``."""
    if (name in (".", "..") or "/" in name or "\\" in name or PurePosixPath(name).is_absolute()
            or (len(name) > 1 and name[1] == ":")):
        raise ValueError(f"{path}:{line_no}: identity {name!r} is not a folder name inside the "
                         "data root (no '/', '\\', '..' or absolute paths)")


def _parse_pair(tokens: list[str], want_same: bool, path: Path, line_no: int) -> tuple[str, str]:
    """``(path1, path2)`` from ``name i j`` (same) or ``name1 i name2 j`` (different)."""
    kind, n_fields = ("same", 3) if want_same else ("different", 4)
    if len(tokens) != n_fields:
        raise ValueError(
            f"{path}:{line_no}: expected a {kind} pair ({n_fields} fields), "
            f"got {len(tokens)} fields: {' '.join(tokens)!r}"
        )
    for name in tokens[:: 3 if want_same else 2]:
        _check_name(name, path, line_no)
    if want_same:
        name, i, j = tokens
        return (
            lfw_image_path(name, _parse_number(i, path, line_no)),
            lfw_image_path(name, _parse_number(j, path, line_no)),
        )
    name1, i, name2, j = tokens
    return (
        lfw_image_path(name1, _parse_number(i, path, line_no)),
        lfw_image_path(name2, _parse_number(j, path, line_no)),
    )


def read_pairs(path: str | Path) -> PairList:
    """Read an LFW pair file.

    Formats (fields separated by whitespace, blank lines ignored):

    * View 2 ``pairs.txt``: header ``n_folds n`` (``10 300``), then per fold ``n`` same pairs
      ``name i j`` followed by ``n`` different pairs ``name1 i name2 j``.
    * View 1 ``pairsDevTrain.txt`` / ``pairsDevTest.txt``: header ``n``, then ``n`` same pairs
      and ``n`` different pairs, all in fold 0.

    Image numbers are 1-based; pairs become relative paths ``name/name_%04d.jpg``.

    Returns:
        A :class:`PairList` in file order, ``fold`` from the file layout.

    Raises:
        ValueError: naming the file and line for a malformed header or pair line, a pair of
            the wrong kind for its position, too few / too many pair lines, an identity name
            that is not a plain folder name (``../x``, ``/abs``), or a repeated pair.
    """
    path = Path(path)
    lines = [
        (no, line.split())
        for no, line in enumerate(path.read_text().splitlines(), start=1)
        if line.strip()
    ]
    if not lines:
        raise ValueError(f"{path}: empty pair file")
    n_folds, n = _parse_header(lines[0][1], path, lines[0][0])
    body = lines[1:]
    expected = n_folds * 2 * n
    if len(body) != expected:
        where = f"{path}:{body[expected][0]}" if len(body) > expected else f"{path}"
        raise ValueError(
            f"{where}: header announces {n_folds} fold(s) x 2 x {n} = {expected} pairs, "
            f"found {len(body)} pair lines"
        )
    path1, path2 = [], []
    seen: dict[tuple[str, str], int] = {}
    for position, (line_no, tokens) in enumerate(body):
        p1, p2 = _parse_pair(tokens, position % (2 * n) < n, path, line_no)
        key = (min(p1, p2), max(p1, p2))
        if key in seen:
            raise ValueError(f"{path}:{line_no}: the pair {p1} / {p2} repeats line "
                             f"{seen[key]} (a repeated pair would be scored twice)")
        seen[key] = line_no
        path1.append(p1)
        path2.append(p2)
    position = np.arange(expected)
    return PairList(
        path1=path1,
        path2=path2,
        issame=position % (2 * n) < n,
        fold=(position // (2 * n)).astype(np.int64),
    )


# --------------------------------------------------------------------------- generated pairs


def _partition_identities(counts: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """``(C,)`` fold of each identity: shuffled, identities with 2+ items dealt round-robin
    first (so every fold can form same pairs), then the single-item ones."""
    fold_of = np.empty(counts.size, dtype=np.int64)
    order = rng.permutation(counts.size)
    order = np.concatenate([order[counts[order] >= 2], order[counts[order] < 2]])
    fold_of[order] = np.arange(order.size) % n_folds
    return fold_of


def _decode_pairs(weights: np.ndarray, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map pair numbers to ``(first item, offset among its partners)``.

    Item ``a`` owns pair numbers ``[W[a-1], W[a])`` where ``W = cumsum(weights)``.
    """
    bounds = np.cumsum(weights)
    first = np.searchsorted(bounds, picks, side="right")
    return first, picks - (bounds[first] - weights[first])


def _sample_fold_pairs(
    items: np.ndarray, codes: np.ndarray, n_each: int, rng: np.random.Generator, fold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_each`` same and ``n_each`` different distinct unordered pairs of one fold.

    Pairs of each kind are drawn uniformly without replacement among all possible ones.

    Args:
        items: ``(n,)`` item indices of the fold, sorted by identity (identity blocks).
        codes: ``(n,)`` identity code of each item.

    Returns:
        ``idx1 (2 n_each,)``, ``idx2``, ``issame``: the same pairs first.
    """
    n = items.size
    block_end = np.searchsorted(codes, codes, side="right")
    same_weights = block_end - np.arange(n) - 1  # later items of the same identity
    diff_weights = n - block_end  # items of later identities
    firsts, seconds = [], []
    for kind, weights in (("same", same_weights), ("different", diff_weights)):
        total = int(weights.sum())
        if total < n_each:
            raise ValueError(
                f"fold {fold} can form only {total} distinct {kind} pairs but {n_each} are "
                "requested; lower pairs_per_fold or n_folds"
            )
        first, offset = _decode_pairs(weights, rng.choice(total, size=n_each, replace=False))
        start = first + 1 if kind == "same" else block_end[first]
        firsts.append(items[first])
        seconds.append(items[start + offset])
    issame = np.repeat([True, False], n_each)
    return np.concatenate(firsts), np.concatenate(seconds), issame


def generate_pairs(
    labels: Sequence[Any] | np.ndarray,
    n_folds: int = 10,
    pairs_per_fold: int = 600,
    seed: int = 0,
) -> PairIndexList:
    """Draw a balanced verification protocol with identity-disjoint folds.

    Identities are shuffled (with ``seed``) and dealt round-robin to the folds, identities
    with two or more items first so that each fold can form same pairs; single-item
    identities then only serve in different pairs. Within a fold, ``pairs_per_fold / 2``
    same pairs and as many different pairs are drawn uniformly without replacement among all
    distinct unordered pairs of items of that fold's identities. Output order: fold by fold,
    same pairs first (as LFW).

    Args:
        labels: ``(N,)`` identity label of each item.
        n_folds: number of folds.
        pairs_per_fold: pairs per fold (same + different), even; LFW uses 600.
        seed: random seed; the same inputs and seed give the same pairs.

    Returns:
        :class:`PairIndexList` with ``n_folds * pairs_per_fold`` pairs.

    Raises:
        ValueError: fewer identities with 2+ items than ``n_folds`` (lower ``n_folds``), or a
            fold that cannot form enough distinct pairs (lower ``pairs_per_fold``). Nothing is
            silently reduced.
    """
    if n_folds < 1 or pairs_per_fold < 2 or pairs_per_fold % 2:
        raise ValueError(
            f"need n_folds >= 1 and an even pairs_per_fold >= 2, got {n_folds}, {pairs_per_fold}"
        )
    _, codes, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    n_multi = int((counts >= 2).sum())
    if n_multi < n_folds:
        raise ValueError(
            f"only {n_multi} identities have 2+ items; each of the {n_folds} folds needs one "
            "to form same pairs: lower n_folds"
        )
    rng = np.random.default_rng(seed)
    item_fold = _partition_identities(counts, n_folds, rng)[codes]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for fold in range(n_folds):
        items = np.flatnonzero(item_fold == fold)
        items = items[np.argsort(codes[items], kind="stable")]
        parts.append(_sample_fold_pairs(items, codes[items], pairs_per_fold // 2, rng, fold))
    return PairIndexList(
        idx1=np.concatenate([p[0] for p in parts]).astype(np.int64),
        idx2=np.concatenate([p[1] for p in parts]).astype(np.int64),
        issame=np.concatenate([p[2] for p in parts]),
        fold=np.repeat(np.arange(n_folds, dtype=np.int64), pairs_per_fold),
    )


# --------------------------------------------------------------------------- path resolution


def _path_key(path: str) -> str:
    """Identity folder and file name without its extension:
    ``.../name/name_0001.jpg`` -> ``name/name_0001``."""
    folder_and_file = PurePosixPath(*PurePosixPath(path.replace("\\", "/")).parts[-2:])
    return str(folder_and_file.with_suffix("")) if folder_and_file.suffix else str(folder_and_file)


def resolve_pairs(pairs: PairList, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Item indices of both sides of every pair.

    A pair path ``name/name_0001.jpg`` matches an item path ending in that folder and file
    name, whatever the image's extension (``/data/lfw/name/name_0001.jpg``,
    ``name\\name_0001.png`` or ``name/name_0001.pgm``).

    Args:
        pairs: pairs by relative path.
        paths: ``N`` item paths (relative or absolute).

    Returns:
        ``idx1 (P,)`` and ``idx2 (P,)`` int64 indices into ``paths``.

    Raises:
        ValueError: listing up to 5 pair images with no matching item (and their count) and
            what the items look like, or pair images matching several items (the same name
            with two extensions).
    """
    index: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, p in enumerate(paths):
        key = _path_key(str(p))
        if key in index:
            ambiguous.add(key)
        index.setdefault(key, i)
    wanted = [_path_key(p) for p in pairs.path1 + pairs.path2]
    missing = sorted({k for k in wanted if k not in index})
    if missing:
        folders = {k.split("/")[0] for k in index}
        absent = sorted({k.split("/")[0] for k in missing} - folders)
        why = (f"{len(absent)} of their identities have no folder (e.g. {absent[:3]})"
               if absent else "their identity folders exist but hold no such file")
        raise ValueError(
            f"{len(missing)} pair image(s) not found among the {len(paths)} items: {why}; "
            f"wanted e.g. {[m + '.*' for m in missing[:5]]}, the items look like "
            f"{[_path_key(str(p)) + PurePosixPath(str(p)).suffix for p in list(paths)[:3]]} "
            "(a pair 'name i' means the file name/name_%04d.<any extension>)"
        )
    clashes = sorted(ambiguous.intersection(wanted))
    if clashes:
        raise ValueError(f"{len(clashes)} pair image(s) match several files (one name, several "
                         f"extensions), e.g. {[c + '.*' for c in clashes[:5]]}")
    found = np.array([index[k] for k in wanted], dtype=np.int64)
    return found[: len(pairs)], found[len(pairs) :]


def pair_distances(emb: np.ndarray, pairs: PairIndexList, metric: str) -> np.ndarray:
    """``(P,)`` distances between the two items of each pair; ``emb`` is ``(N, D)``."""
    a = torch.from_numpy(emb[pairs.idx1])
    b = torch.from_numpy(emb[pairs.idx2])
    if metric == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)).numpy()
    return (a - b).norm(dim=1).numpy()
