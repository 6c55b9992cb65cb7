"""Miners against plain-loop references on small batches (ties included)."""

from __future__ import annotations

import pytest
import torch

from facetrip.loss import mining
from facetrip.loss.distances import pairwise_distances


def grid_batch(seed: int, batch: int = 10, n_ids: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances of half-integer grid points: exact, with many ties and zeros."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randint(-2, 3, (batch, 2), generator=gen).double() * 0.5
    labels = torch.randint(0, n_ids, (batch,), generator=gen)
    return pairwise_distances(emb, distance="squared_euclidean"), labels


def random_batch(seed: int, batch: int = 10, n_ids: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, n_ids, (batch,), generator=gen)
    return pairwise_distances(emb), labels


BATCHES = [grid_batch(s) for s in range(6)] + [random_batch(s) for s in range(4)]
BATCHES += [
    grid_batch(7, batch=12, n_ids=2),  # an identity with more than a few images
    (grid_batch(8)[0], torch.arange(10)),  # singletons only: no positive pair
    (grid_batch(9)[0], torch.zeros(10, dtype=torch.long)),  # one identity: no negative
    (grid_batch(10)[0], torch.tensor([0, 0, 1, 2, 3, 3, 3, 4, 5, 5])),  # some singletons
]


@pytest.fixture(params=["dense", "searchsorted"])
def counting(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with comparison counting and again with searchsorted counting."""
    if request.param == "searchsorted":
        monkeypatch.setattr(mining, "DENSE_RANKS", 0)
    return request.param


def loop_pairs(labels: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    lab = labels.tolist()
    n = len(lab)
    pos = [[j for j in range(n) if j != i and lab[j] == lab[i]] for i in range(n)]
    neg = [[j for j in range(n) if lab[j] != lab[i]] for i in range(n)]
    return pos, neg


def test_validate_batch_rejects_bad_inputs() -> None:
    good_e, good_l = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    mining.validate_batch(good_e, good_l)
    mining.validate_batch(good_e.half(), good_l.int())
    bad = [
        (torch.zeros(3), good_l),
        (torch.zeros(3, 2, dtype=torch.long), good_l),
        (good_e, good_l.float()),
        (good_e, good_l.bool()),
        (good_e, good_l[:2]),
        (good_e, good_l[:, None]),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)),
    ]
    for emb, lab in bad:
        with pytest.raises(ValueError):
            mining.validate_batch(emb, lab)


def test_masks_and_triplet_count() -> None:
    labels = torch.tensor([3, 3, 5, 3, 7])
    pos, neg = mining.positive_negative_masks(labels)
    loop_pos, loop_neg = loop_pairs(labels)
    for i in range(5):
        assert pos[i].nonzero().flatten().tolist() == loop_pos[i]
        assert neg[i].nonzero().flatten().tolist() == loop_neg[i]
    rows_pos, rows_neg = mining.positive_negative_masks(labels, slice(1, 3))
    assert torch.equal(rows_pos, pos[1:3]) and torch.equal(rows_neg, neg[1:3])
    assert mining.count_valid_triplets(labels) == sum(
        len(p) * len(n) for p, n in zip(loop_pos, loop_neg)
    )


def test_positive_table() -> None:
    labels = torch.tensor([4, 1, 4, 4, 2, 1, 9])
    columns, counts = mining.positive_table(labels)
    loop_pos, _ = loop_pairs(labels)
    assert columns.shape == (7, 2)
    for i, expected in enumerate(loop_pos):
        assert counts[i] == len(expected)
        assert columns[i, : len(expected)].tolist() == expected


def test_count_positives_at_most(counting: str) -> None:
    pos_d = torch.tensor([[0.5, 1.0, 1.0, torch.inf], [0.0, torch.inf, torch.inf, torch.inf]])
    thresholds = torch.tensor([[0.0, 0.5, 1.0, 2.0], [0.0, -1.0, 3.0, 0.0]])
    at_most = mining.count_positives_at_most(pos_d, thresholds)
    below = mining.count_positives_at_most(pos_d, thresholds, inclusive=False)
    assert at_most.tolist() == [[0, 1, 3, 3], [1, 0, 1, 1]]
    assert below.tolist() == [[0, 0, 1, 3], [0, 0, 1, 0]]


@pytest.mark.parametrize("margin", [0.0, 0.25, 0.5])
def test_ranks_and_difficulty_match_loops(counting: str, margin: float) -> None:
    for dist, labels in BATCHES:
        pos, neg = loop_pairs(labels)
        d = dist.tolist()
        expected = [0, 0, 0]
        blocks = list(mining.rank_negatives(dist, labels, margin, block_elements=3 * len(labels)))
        assert len(blocks) == -(-len(labels) // 3)
        found = torch.stack([mining.difficulty_counts(r) for r in blocks]).sum(0).tolist()
        for ranks in blocks:
            for row, a in enumerate(range(len(labels))[ranks.anchors]):
                assert ranks.n_positives[row] == len(pos[a])
                for n in neg[a]:
                    d_ap = [d[a][p] for p in pos[a]]
                    easy = sum(x <= d[a][n] - margin for x in d_ap)
                    not_hard = sum(x <= d[a][n] for x in d_ap)
                    assert ranks.n_easy[row, n] == easy
                    assert ranks.n_not_hard[row, n] == not_hard
                    assert ranks.n_closer[row, n] == sum(x < d[a][n] for x in d_ap)
                    expected = [
                        expected[0] + len(d_ap) - not_hard,
                        expected[1] + not_hard - easy,
                        expected[2] + easy,
                    ]
        assert found == expected


def test_difficulty_depends_on_margin() -> None:
    dist, labels = grid_batch(0)
    counts = [
        sum(mining.difficulty_counts(r) for r in mining.rank_negatives(dist, labels, m)).tolist()
        for m in (0.25, 1.0)
    ]
    assert counts[0] != counts[1]
    assert sum(counts[0]) == sum(counts[1]) == mining.count_valid_triplets(labels)


def loop_batch_hard(dist: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, int, int]]:
    pos, neg = loop_pairs(labels)
    d = dist.tolist()
    out = []
    for a in range(len(labels)):
        if pos[a] and neg[a]:
            p = max(pos[a], key=lambda j: (d[a][j], -j))
            n = min(neg[a], key=lambda j: (d[a][j], j))
            out.append((a, p, n))
    return out


def loop_semihard(dist: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, int, int]]:
    pos, neg = loop_pairs(labels)
    d = dist.tolist()
    out = []
    for a in range(len(labels)):
        if not neg[a]:
            continue
        for p in pos[a]:
            farther = [n for n in neg[a] if d[a][n] > d[a][p]]
            if farther:
                n = min(farther, key=lambda j: (d[a][j], j))
            else:
                n = max(neg[a], key=lambda j: (d[a][j], -j))
            out.append((a, p, n))
    return out


def as_set(triplets: mining.Triplets) -> set[tuple[int, int, int]]:
    return set(zip(*(t.tolist() for t in triplets)))


def test_batch_hard_matches_loops(counting: str) -> None:
    for dist, labels in BATCHES:
        found = mining.batch_hard_triplets(dist, labels)
        assert all(t.dtype == torch.int64 for t in found)
        assert as_set(found) == set(loop_batch_hard(dist, labels))


def test_semihard_matches_loops(counting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mining, "BLOCK_ELEMENTS", 20)
    for dist, labels in BATCHES:
        found = mining.semihard_triplets(dist, labels)
        expected = loop_semihard(dist, labels)
        assert len(found[0]) == len(expected)
        assert as_set(found) == set(expected)


def test_semihard_falls_back_to_the_farthest_negative() -> None:
    # Anchor 0: positive 1 at distance 4; negatives 2 and 3 at distances 1 and 1 (a tie).
    dist = torch.tensor(
        [[0.0, 4.0, 1.0, 1.0], [4.0, 0.0, 5.0, 5.0], [1.0, 5.0, 0.0, 2.0], [1.0, 5.0, 2.0, 0.0]]
    )
    labels = torch.tensor([0, 0, 1, 2])
    a, p, n = mining.semihard_triplets(dist, labels)
    chosen = dict(zip(zip(a.tolist(), p.tolist()), n.tolist()))
    assert chosen[(0, 1)] == 2  # none farther than 4: the farthest, lowest index on ties
    assert chosen[(1, 0)] == 2  # 5 > 4 for both: the closer of them, lowest index on ties


# ---------------------------------------------------------------- reference sets (B, R)


def ref_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """``(B, R)`` grid distances of 7 anchors to 12 references holding 4 of them; labels."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randint(-2, 3, (7, 2), generator=gen).double() * 0.5
    refs = torch.randint(-2, 3, (12, 2), generator=gen).double() * 0.5
    labels = torch.randint(0, 3, (7,), generator=gen)
    ref_labels = torch.randint(0, 4, (12,), generator=gen)
    self_row = [-1, 8, -1, 0, 11, 3, -1]
    for a, j in enumerate(self_row):
        if j >= 0:
            refs[j], ref_labels[j] = emb[a], labels[a]
    return pairwise_distances(emb, refs, "squared_euclidean"), labels, ref_labels, self_row


REF_BATCHES = [ref_batch(s) for s in range(5)]


def loop_ref_pairs(
    labels: torch.Tensor, ref_labels: torch.Tensor, self_row: list[int]
) -> tuple[list[list[int]], list[list[int]]]:
    lab, ref = labels.tolist(), ref_labels.tolist()
    pos = [[j for j in range(len(ref)) if ref[j] == lab[i] and j != self_row[i]]
           for i in range(len(lab))]
    neg = [[j for j in range(len(ref)) if ref[j] != lab[i]] for i in range(len(lab))]
    return pos, neg


def test_resolve_references() -> None:
    labels, ref_labels = torch.tensor([1, 2, 1]), torch.tensor([0, 1, 2, 1, 5])
    same, diagonal = mining.resolve_references(labels)
    assert same is labels and diagonal.tolist() == [0, 1, 2]
    assert mining.resolve_references(labels, ref_labels)[1].tolist() == [-1, -1, -1]
    assert mining.resolve_references(labels, ref_labels, 1)[1].tolist() == [1, 2, 3]
    rows = torch.tensor([3, -1, 1], dtype=torch.int32)
    assert mining.resolve_references(labels, ref_labels, rows)[1].tolist() == [3, -1, 1]
    bad_rows = ([3, 2, 0], [0, 2, 3], [5, 2, 3], [-2, 2, 3], [1, 2])
    for bad in (0, 3, -1, 1.0, True, rows.float(), *map(torch.tensor, bad_rows)):
        with pytest.raises(ValueError):
            mining.resolve_references(labels, ref_labels, bad)
    with pytest.raises(ValueError):
        mining.resolve_references(labels, None, 0)
    with pytest.raises(ValueError):
        mining.resolve_references(labels, ref_labels.float())
    with pytest.raises(ValueError):
        mining.resolve_references(labels, ref_labels[:0])


def test_masks_table_and_count_with_references() -> None:
    for dist, labels, ref_labels, self_row in REF_BATCHES:
        refs = dict(ref_labels=ref_labels, ref_self_index=torch.tensor(self_row))
        loop_pos, loop_neg = loop_ref_pairs(labels, ref_labels, self_row)
        pos, neg = mining.positive_negative_masks(labels, **refs)
        assert pos.shape == neg.shape == dist.shape
        for i in range(len(labels)):
            assert pos[i].nonzero().flatten().tolist() == loop_pos[i]
            assert neg[i].nonzero().flatten().tolist() == loop_neg[i]
        rows_pos, _ = mining.positive_negative_masks(labels, slice(2, 5), **refs)
        assert torch.equal(rows_pos, pos[2:5])
        columns, counts = mining.positive_table(labels, **refs)
        assert columns.shape == (len(labels), max(1, max(map(len, loop_pos))))
        for i, expected in enumerate(loop_pos):
            assert counts[i] == len(expected)
            assert columns[i, : len(expected)].tolist() == expected
        assert mining.count_valid_triplets(labels, **refs) == sum(
            len(p) * len(n) for p, n in zip(loop_pos, loop_neg))


def test_positive_table_without_any_positive() -> None:
    columns, counts = mining.positive_table(torch.tensor([0, 1]), torch.tensor([2, 2, 3]))
    assert columns.tolist() == [[0], [0]] and counts.tolist() == [0, 0]
    assert mining.count_valid_triplets(torch.tensor([0, 1]), torch.tensor([2, 2, 3])) == 0


def test_ranks_with_references_match_loops(counting: str) -> None:
    margin = 0.25
    for dist, labels, ref_labels, self_row in REF_BATCHES:
        pos, neg = loop_ref_pairs(labels, ref_labels, self_row)
        d = dist.tolist()
        blocks = list(mining.rank_negatives(
            dist, labels, margin, block_elements=2 * dist.shape[1], ref_labels=ref_labels,
            ref_self_index=torch.tensor(self_row)))
        assert len(blocks) == 4
        for ranks in blocks:
            assert ranks.distances.shape[1] == dist.shape[1]
            for row, a in enumerate(range(len(labels))[ranks.anchors]):
                assert ranks.n_positives[row] == len(pos[a])
                for n in neg[a]:
                    d_ap = [d[a][p] for p in pos[a]]
                    assert ranks.n_easy[row, n] == sum(x <= d[a][n] - margin for x in d_ap)
                    assert ranks.n_not_hard[row, n] == sum(x <= d[a][n] for x in d_ap)
                    assert ranks.n_closer[row, n] == sum(x < d[a][n] for x in d_ap)
    with pytest.raises(ValueError):
        next(mining.rank_negatives(dist[:, :5], labels, ref_labels=ref_labels))


def test_miners_with_references_match_loops(counting: str) -> None:
    for dist, labels, ref_labels, self_row in REF_BATCHES:
        pos, neg = loop_ref_pairs(labels, ref_labels, self_row)
        d = dist.tolist()
        hard, semi = [], []
        for a in range(len(labels)):
            if not neg[a]:
                continue
            if pos[a]:
                hard.append((a, max(pos[a], key=lambda j: (d[a][j], -j)),
                             min(neg[a], key=lambda j: (d[a][j], j))))
            for p in pos[a]:
                farther = [n for n in neg[a] if d[a][n] > d[a][p]]
                semi.append((a, p, min(farther, key=lambda j: (d[a][j], j)) if farther
                             else max(neg[a], key=lambda j: (d[a][j], -j))))
        refs = dict(ref_labels=ref_labels, ref_self_index=torch.tensor(self_row))
        assert as_set(mining.batch_hard_triplets(dist, labels, **refs)) == set(hard)
        found = mining.semihard_triplets(dist, labels, **refs)
        assert len(found[0]) == len(semi) and as_set(found) == set(semi)
