"""Pair protocols: LFW pair files (real when present, synthetic always), generated pairs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from facetrip.metrics.pairs import PairList, generate_pairs, read_pairs, resolve_pairs


def lfw_dir() -> Path:
    """Real LFW folder: $FACETRIP_LFW, else ../shared/data/lfw beside the repository."""
    env = os.environ.get("FACETRIP_LFW")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared/data/lfw"


def real_file(name: str) -> Path:
    path = lfw_dir() / name
    if not path.is_file():
        pytest.skip(f"LFW protocol file {path} not available")
    return path


def write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- real LFW files


def test_real_view2_pairs() -> None:
    pairs = read_pairs(real_file("pairs.txt"))
    assert len(pairs) == 6000
    assert np.array_equal(np.bincount(pairs.fold), [600] * 10)
    for f in range(10):
        block = pairs.issame[pairs.fold == f]
        assert block[:300].all() and not block[300:].any()
    assert pairs.path1[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pairs.path2[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    names1 = [p.split("/")[0] for p in pairs.path1]
    names2 = [p.split("/")[0] for p in pairs.path2]
    same_name = np.array([a == b for a, b in zip(names1, names2)])  # noqa: B905
    assert np.array_equal(same_name, pairs.issame)


@pytest.mark.parametrize(
    ("name", "count"), [("pairsDevTrain.txt", 2200), ("pairsDevTest.txt", 1000)]
)
def test_real_view1_pairs(name: str, count: int) -> None:
    pairs = read_pairs(real_file(name))
    assert len(pairs) == count and pairs.issame.sum() == count // 2
    assert pairs.issame[: count // 2].all() and np.all(pairs.fold == 0)


def test_real_pairs_resolve_to_images() -> None:
    pairs = read_pairs(real_file("pairs.txt"))
    paths = [str(p) for p in sorted(lfw_dir().glob("*/*.jpg"))]
    if not paths:
        pytest.skip("LFW images not available")
    idx1, idx2 = resolve_pairs(pairs, paths)
    assert Path(paths[idx1[0]]).name == "Abel_Pacheco_0001.jpg"
    assert all(paths[i].endswith(p) for i, p in zip(idx2[:50], pairs.path2[:50]))  # noqa: B905


# --------------------------------------------------------------------------- synthetic files

VIEW2 = """2\t1
Ann\t1\t2
Ann\t1\tBob\t3

Cid 2 4
Dee 1 Eve 12
"""


def test_read_synthetic_view2(tmp_path: Path) -> None:
    pairs = read_pairs(write(tmp_path, VIEW2))
    assert pairs.path1 == [
        "Ann/Ann_0001.jpg",
        "Ann/Ann_0001.jpg",
        "Cid/Cid_0002.jpg",
        "Dee/Dee_0001.jpg",
    ]
    assert pairs.path2 == [
        "Ann/Ann_0002.jpg",
        "Bob/Bob_0003.jpg",
        "Cid/Cid_0004.jpg",
        "Eve/Eve_0012.jpg",
    ]
    assert pairs.issame.tolist() == [True, False, True, False]
    assert pairs.fold.tolist() == [0, 0, 1, 1]
    assert pairs.issame.dtype == bool and pairs.fold.dtype == np.int64


def test_read_synthetic_view1(tmp_path: Path) -> None:
    pairs = read_pairs(write(tmp_path, "2\nA 1 2\nB 3 4\nA 1 B 1\nC 2 D 2\n\n"))
    assert pairs.issame.tolist() == [True, True, False, False]
    assert pairs.fold.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("ten 300\n", r"pairs\.txt:1: header"),
        ("0\n", r"pairs\.txt:1: header counts"),
        ("1\nA 1 2\nA 1 B\n", r"pairs\.txt:3: expected a different pair \(4 fields\)"),
        ("1\nA 1 B 2\nA 1 B 2\n", r"pairs\.txt:2: expected a same pair \(3 fields\)"),
        ("1\nA 1 x\nA 1 B 2\n", r"pairs\.txt:2: expected a positive image number, got 'x'"),
        ("1\nA 0 2\nA 1 B 2\n", r"pairs\.txt:2: expected a positive image number, got '0'"),
        ("1\nA 1 2\n", r"announces 1 fold\(s\) x 2 x 1 = 2 pairs, found 1"),
        ("1\nA 1 2\nA 1 B 2\nC 1 2\n", r"pairs\.txt:4: header announces"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_pairs(write(tmp_path, text))


# --------------------------------------------------------------------------- resolve_pairs


def small_pairs() -> PairList:
    return PairList(
        path1=["A/A_0001.jpg", "A/A_0001.jpg"],
        path2=["A/A_0002.jpg", "B/B_0001.jpg"],
        issame=np.array([True, False]),
        fold=np.array([0, 0]),
    )


def test_resolve_pairs_accepts_absolute_and_windows_paths() -> None:
    paths = ["/data/lfw/B/B_0001.jpg", "A\\A_0002.jpg", "A/A_0001.jpg", "C/C_0001.jpg"]
    idx1, idx2 = resolve_pairs(small_pairs(), paths)
    assert idx1.tolist() == [2, 2] and idx2.tolist() == [1, 0]
    assert idx1.dtype == np.int64


def test_resolve_pairs_reports_missing_and_ambiguous() -> None:
    many_missing = PairList(
        path1=[f"X/X_{i:04d}.jpg" for i in range(1, 8)],
        path2=["A/A_0001.jpg"] * 7,
        issame=np.zeros(7, dtype=bool),
        fold=np.zeros(7, dtype=np.int64),
    )
    with pytest.raises(ValueError, match=r"^7 pair image\(s\) not found") as err:
        resolve_pairs(many_missing, ["A/A_0001.jpg"])
    assert str(err.value).count("X/X_") == 5
    assert "1 of their identities have no folder" in str(err.value)
    assert "the items look like ['A/A_0001.jpg']" in str(err.value)
    with pytest.raises(ValueError, match="several files"):
        resolve_pairs(
            small_pairs(), ["a/A/A_0001.jpg", "b/A/A_0001.jpg", "A/A_0002.jpg", "B/B_0001.jpg"]
        )
    with pytest.raises(ValueError, match="several files"):
        resolve_pairs(small_pairs(), ["A/A_0001.png", "A/A_0001.jpg", "A/A_0002.jpg",
                                      "B/B_0001.jpg"])


def test_resolve_pairs_takes_any_image_extension() -> None:
    paths = ["faces/B/B_0001.pgm", "A/A_0002.PNG", "A/A_0001.png", "A/A_0003.jpg"]
    idx1, idx2 = resolve_pairs(small_pairs(), paths)
    assert idx1.tolist() == [2, 2] and idx2.tolist() == [1, 0]


def test_a_missing_number_in_an_existing_folder_says_so() -> None:
    with pytest.raises(ValueError, match="folders exist but hold no such file") as err:
        resolve_pairs(small_pairs(), ["A/A_0001.png", "A/A_0003.png", "B/B_0001.png"])
    assert "A/A_0002.*" in str(err.value) and "A/A_0001.png" in str(err.value)


# --------------------------------------------------------------------------- generate_pairs


def sample_labels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.concatenate([rng.integers(2, 12, 60), np.ones(40, dtype=int)])  # 40 singletons
    return np.repeat(np.arange(counts.size), counts)


def test_generate_pairs_balanced_disjoint_and_valid() -> None:
    labels = sample_labels()
    pairs = generate_pairs(labels, n_folds=5, pairs_per_fold=40, seed=3)
    assert len(pairs) == 200
    assert np.array_equal(np.bincount(pairs.fold), [40] * 5)
    for f in range(5):
        assert pairs.issame[pairs.fold == f].sum() == 20
    l1, l2 = labels[pairs.idx1], labels[pairs.idx2]
    assert np.array_equal(l1 == l2, pairs.issame)
    assert np.all(pairs.idx1 != pairs.idx2)
    unordered = {(min(a, b), max(a, b)) for a, b in zip(pairs.idx1, pairs.idx2)}  # noqa: B905
    assert len(unordered) == len(pairs)
    fold_ids = [set(l1[pairs.fold == f]) | set(l2[pairs.fold == f]) for f in range(5)]
    for a in range(5):
        for b in range(a + 1, 5):
            assert not fold_ids[a] & fold_ids[b]
    singles = set(np.flatnonzero(np.bincount(labels) == 1))
    assert not singles & set(l1[pairs.issame])


def test_generate_pairs_deterministic_for_seed() -> None:
    labels = sample_labels()
    a = generate_pairs(labels, n_folds=4, pairs_per_fold=30, seed=1)
    b = generate_pairs(labels, n_folds=4, pairs_per_fold=30, seed=1)
    c = generate_pairs(labels, n_folds=4, pairs_per_fold=30, seed=2)
    for field in ("idx1", "idx2", "issame", "fold"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.idx1, c.idx1)


def test_generate_pairs_string_labels_and_exhaustive_draw() -> None:
    labels = np.array(["x", "x", "y", "y", "z"])  # 1 fold: 2 same pairs, 8 different pairs
    pairs = generate_pairs(labels, n_folds=1, pairs_per_fold=4, seed=0)
    assert sorted(zip(pairs.idx1[:2], pairs.idx2[:2])) == [(0, 1), (2, 3)]  # noqa: B905


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.repeat(np.arange(3), 4), {"n_folds": 4}, "only 3 identities have 2\\+ items"),
        (np.repeat(np.arange(4), 2), {"n_folds": 2, "pairs_per_fold": 6}, "only 2 distinct same"),
        (np.repeat(np.arange(40), 3), {"pairs_per_fold": 7}, "even pairs_per_fold"),
    ],
)
def test_generate_pairs_errors(labels, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        generate_pairs(labels, **kwargs)
