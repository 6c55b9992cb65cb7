"""Triplet mining: which (anchor, positive, negative) triplets a batch offers.

Miners read a ``(B, B)`` distance matrix and ``(B,)`` integer labels and return indices or
counts; they know nothing about losses (the style of pytorch-metric-learning's miners).

Vocabulary used throughout:

* a *positive pair* ``(a, p)`` has ``labels[a] == labels[p]`` and ``a != p``;
* a *negative pair* ``(a, n)`` has ``labels[a] != labels[n]``;
* a *valid triplet* ``(a, p, n)`` joins a positive pair and a negative pair with the same anchor;
* ``d_ap = dist[a, p]``, ``d_an = dist[a, n]``; ``G`` is the largest number of positives an
  anchor has (largest identity size minus one).

Ties between equal distances are broken towards the lowest sample index.

Nothing here enumerates the ``O(B^3)`` triplets.  Every anchor's few positive distances are
sorted, and every negative distance is located among them (:func:`count_positives_at_most`),
which tells for each negative pair how many positives make an easy, semi-hard or hard triplet
with it: ``O(B^2 log G)`` time.  Anchors are processed in blocks of rows
(:func:`rank_negatives`) so that temporaries stay near ``BLOCK_ELEMENTS`` elements.

CPU note: on CPU, ``masked_fill`` / ``where`` over ``(r, B)`` tensors are many times slower than
arithmetic, so the hot paths exclude entries by adding a huge value (:func:`_exclude`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cached_property

import torch

BLOCK_ELEMENTS = 1 << 20
"""Target size, in elements, of the per-block temporaries of :func:`rank_negatives`."""

DENSE_RANKS = 32
"""Up to this many positives per anchor, counts are sums of comparisons, not searchsorted."""

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Anchor, positive and negative indices: three ``(T,)`` int64 tensors."""


def validate_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``embeddings`` is ``(B, D)`` float and ``labels`` ``(B,)`` int.

    Args:
        embeddings: ``(B, D)`` floating-point embeddings, ``B >= 1``.
        labels: ``(B,)`` integer identity labels.
    """
    if embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError(
            f"embeddings must be a (B, D) float tensor, got {tuple(embeddings.shape)} "
            f"{embeddings.dtype}"
        )
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be a (B,) integer tensor, got {tuple(labels.shape)}")
    if labels.dtype == torch.bool:
        raise ValueError("labels must be integers, not booleans")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels")
    if labels.shape[0] < 1:
        raise ValueError("the batch is empty")


def positive_negative_masks(
    labels: torch.Tensor, anchors: slice = slice(None)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of the positive and negative pairs.

    Args:
        labels: ``(B,)`` integer labels.
        anchors: the rows to return (default all): ``r`` consecutive anchors.

    Returns:
        ``(pos_mask, neg_mask)``, both ``(r, B)`` bool.  ``pos_mask[i, j]`` is true when sample
        ``j`` has the label of anchor ``i`` and is not the anchor itself (the diagonal is false).
    """
    columns = torch.arange(labels.shape[0], device=labels.device)
    same = labels[anchors, None] == labels[None, :]
    return same & (columns[anchors, None] != columns[None, :]), ~same


def count_valid_triplets(labels: torch.Tensor) -> int:
    """Number of valid triplets of a batch with ``(B,)`` ``labels``: sum of ``s (s-1) (B-s)``."""
    sizes = torch.unique(labels, return_counts=True)[1]
    return int((sizes * (sizes - 1) * (labels.shape[0] - sizes)).sum())


def positive_table(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's positives as a padded table (``O(B G)`` memory).

    Args:
        labels: ``(B,)`` integer labels.

    Returns:
        ``(columns, counts)``: ``(B, G')`` int64 indices of each row's positives in increasing
        order, padded with 0, and ``(B,)`` int64 numbers of positives; ``G' = max(G, 1)``.
    """
    batch = labels.shape[0]
    order = torch.argsort(labels, stable=True)
    _, group, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    slots = torch.arange(int(sizes.max()), device=labels.device)
    members = order[(starts[group, None] + slots).clamp(max=batch - 1)]
    itself = torch.arange(batch, device=labels.device)[:, None]
    is_other = (slots < sizes[group, None]) & (members != itself)
    # Move each row's positives to the front, in order: sort keys that put the others last.
    keys = torch.where(is_other, members, batch).sort(dim=1).values
    columns = keys[:, : max(1, slots.numel() - 1)]
    return columns.masked_fill(columns == batch, 0), sizes[group] - 1


def count_positives_at_most(
    positive_distances: torch.Tensor, thresholds: torch.Tensor, inclusive: bool = True
) -> torch.Tensor:
    """How many of each row's sorted positive distances are ``<=`` (or ``<``) each threshold.

    Args:
        positive_distances: ``(r, G')`` ascending rows, ``+inf`` padded.
        thresholds: ``(r, B)``.
        inclusive: count ``<=`` if true, else ``<``.

    Returns:
        ``(r, B)`` counts: uint8 sums of comparisons up to ``DENSE_RANKS`` positives (faster on
        CPU), int32 from ``searchsorted`` (``O(log G)`` per entry) beyond.
    """
    n_ranks = positive_distances.shape[1]
    if n_ranks > DENSE_RANKS:
        return torch.searchsorted(positive_distances, thresholds, right=inclusive, out_int32=True)
    compare = torch.le if inclusive else torch.lt
    counts = torch.zeros(thresholds.shape, dtype=torch.uint8, device=thresholds.device)
    for k in range(n_ranks):
        counts += compare(positive_distances[:, k, None], thresholds)
    return counts


class NegativeRanks:
    """Every negative of a block of ``r`` anchors, located among the anchor's sorted positives.

    For a negative pair ``(a, n)`` the anchor's positives sorted by ``d_ap`` split into three
    runs: ``[0, n_easy)`` easy (``d_ap <= d_an - margin``), ``[n_easy, n_not_hard)`` semi-hard
    (``d_an - margin < d_ap <= d_an``) and ``[n_not_hard, n_positives)`` hard (``d_an < d_ap``).
    The ``(r, B)`` counts (uint8 or int32) are computed on first use; their entries at
    non-negative columns are meaningless.

    Attributes:
        anchors: the block's rows of the batch, a slice.
        distances: ``(r, B)`` distances from the block's anchors to every sample.
        negatives: ``(r, B)`` bool mask of the negative pairs.
        positive_distances: ``(r, G')`` each anchor's ``d_ap`` ascending, padded with ``+inf``.
        positive_columns: ``(r, G')`` int64 sample index of each ``positive_distances`` entry
            (equal distances in increasing index order).
        n_positives: ``(r,)`` int64 number of positives of each anchor.
        margin: the margin separating easy from semi-hard.
    """

    def __init__(
        self,
        anchors: slice,
        distances: torch.Tensor,
        negatives: torch.Tensor,
        positive_distances: torch.Tensor,
        positive_columns: torch.Tensor,
        n_positives: torch.Tensor,
        margin: float,
    ) -> None:
        self.anchors = anchors
        self.distances = distances
        self.negatives = negatives
        self.positive_distances = positive_distances
        self.positive_columns = positive_columns
        self.n_positives = n_positives
        self.margin = margin

    @cached_property
    def n_not_hard(self) -> torch.Tensor:
        """``(r, B)`` positives with ``d_ap <= d_an``."""
        return count_positives_at_most(self.positive_distances, self.distances)

    @cached_property
    def n_easy(self) -> torch.Tensor:
        """``(r, B)`` positives with ``d_ap <= d_an - margin``."""
        if self.margin == 0:
            return self.n_not_hard
        return count_positives_at_most(self.positive_distances, self.distances - self.margin)

    @cached_property
    def n_closer(self) -> torch.Tensor:
        """``(r, B)`` positives with ``d_ap < d_an``."""
        return count_positives_at_most(self.positive_distances, self.distances, inclusive=False)

    def masked(self, counts: torch.Tensor) -> torch.Tensor:
        """``(r, B)`` ``counts`` with the entries of non-negative columns set to 0."""
        return counts * self.negatives.to(counts.dtype)


def rank_negatives(
    dist: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.0,
    *,
    block_elements: int | None = None,
) -> Iterator[NegativeRanks]:
    """Yield :class:`NegativeRanks` for consecutive blocks of anchors covering the batch.

    Works on ``dist`` detached.  Time ``O(B^2 log G)``; memory ``O(block_elements + B G)``.

    Args:
        dist: ``(B, B)`` distances.
        labels: ``(B,)`` integer labels.
        margin: the ``margin >= 0`` that separates easy from semi-hard triplets.
        block_elements: approximate size ``r * B`` of a block; default ``BLOCK_ELEMENTS``.
    """
    dist = dist.detach()
    batch = labels.shape[0]
    columns, counts = positive_table(labels)
    rows = max(1, (block_elements or BLOCK_ELEMENTS) // batch)
    for start in range(0, batch, rows):
        anchors = slice(start, min(start + rows, batch))
        yield _rank_block(dist, labels, anchors, columns[anchors], counts[anchors], margin)


def _rank_block(
    dist: torch.Tensor,
    labels: torch.Tensor,
    anchors: slice,
    columns: torch.Tensor,
    counts: torch.Tensor,
    margin: float,
) -> NegativeRanks:
    d = dist[anchors]
    padding = torch.arange(columns.shape[1], device=d.device) >= counts[:, None]
    pos_d, order = d.gather(1, columns).masked_fill(padding, torch.inf).sort(dim=1, stable=True)
    return NegativeRanks(
        anchors=anchors,
        distances=d,
        negatives=labels[anchors, None] != labels[None, :],
        positive_distances=pos_d,
        positive_columns=columns.gather(1, order),
        n_positives=counts,
        margin=margin,
    )


def _exclude(values: torch.Tensor, keep: torch.Tensor, *, to_top: bool) -> torch.Tensor:
    """``values`` where ``keep``; elsewhere (about) the largest or lowest finite float.

    Plays ``masked_fill(~keep, +-inf)`` for min / max reductions, with arithmetic only.
    """
    big = torch.finfo(values.dtype).max
    return values + (~keep).to(values.dtype) * (big if to_top else -big)


def difficulty_counts(ranks: NegativeRanks) -> torch.Tensor:
    """Count the valid triplets whose anchor is in the block, by difficulty.

    Returns:
        ``(3,)`` int64: hard (``d_an < d_ap``), semi-hard (``d_an - margin < d_ap <= d_an``)
        and easy (``d_ap <= d_an - margin``) triplets.
    """
    easy = ranks.masked(ranks.n_easy).sum()
    not_hard = ranks.masked(ranks.n_not_hard).sum()
    total = (ranks.n_positives * ranks.negatives.sum(dim=1)).sum()
    return torch.stack([total - not_hard, not_hard - easy, easy])


def batch_hard_in_block(ranks: NegativeRanks) -> Triplets:
    """Batch-hard triplets of a block's anchors (see :func:`batch_hard_triplets`)."""
    n_pos, pos_d = ranks.n_positives, ranks.positive_distances
    largest = pos_d.gather(1, (n_pos - 1).clamp(min=0)[:, None])
    first_largest = (pos_d == largest).to(torch.uint8).argmax(dim=1, keepdim=True)
    hardest_positive = ranks.positive_columns.gather(1, first_largest).squeeze(1)
    hardest_negative = _exclude(ranks.distances, ranks.negatives, to_top=True).argmin(dim=1)
    rows = torch.nonzero((n_pos > 0) & ranks.negatives.any(dim=1)).squeeze(1)
    return rows + ranks.anchors.start, hardest_positive[rows], hardest_negative[rows]


def batch_hard_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """Batch-hard mining (Hermans et al.): one triplet per anchor.

    Each anchor gets its hardest positive (largest ``d_ap``) and hardest negative (smallest
    ``d_an``); anchors lacking a positive or a negative are left out.

    Args:
        dist: ``(B, B)`` distances.
        labels: ``(B,)`` integer labels.

    Returns:
        ``(a, p, n)``, each ``(T,)`` int64 with ``T <= B``.
    """
    return concat_triplets(batch_hard_in_block(r) for r in rank_negatives(dist, labels))


def semihard_in_block(ranks: NegativeRanks) -> Triplets:
    """FaceNet semi-hard triplets of a block's anchors (see :func:`semihard_triplets`).

    Groups each anchor's negatives by ``n_closer`` (how many positives are strictly closer).
    The groups hold disjoint, increasing ranges of distance, so for the positive of rank ``k``
    the answer is the closest negative of the first non-empty group ``j > k``.
    """
    d, neg = ranks.distances, ranks.negatives
    n_rows, batch = d.shape
    n_groups = ranks.positive_distances.shape[1] + 1
    # Non-negatives go to an extra group, n_groups, that is never read.
    closer = ranks.n_closer
    group = (ranks.masked(closer) + (~neg).to(closer.dtype) * n_groups).long()
    group_min = d.new_full((n_rows, n_groups + 1), torch.inf)
    group_min.scatter_reduce_(1, group, d, "amin")
    is_min = d == group_min.gather(1, group)
    # The lowest column reaching its group's minimum (float keys are exact below 2**24).
    keys = torch.arange(batch, device=d.device, dtype=d.dtype) + (~is_min).to(d.dtype) * batch
    group_arg = d.new_full((n_rows, n_groups + 1), 2 * batch)
    group_arg = group_arg.scatter_reduce_(1, group, keys, "amin")[:, :n_groups].long()
    index = torch.arange(n_groups, device=d.device).expand(n_rows, n_groups)
    first_nonempty_from = index.masked_fill(group_arg >= batch, n_groups)
    first_nonempty_from = first_nonempty_from.flip(1).cummin(dim=1).values.flip(1)
    next_group = first_nonempty_from[:, 1:]
    farthest = _exclude(d, neg, to_top=False).argmax(dim=1, keepdim=True)
    chosen = torch.where(
        next_group < n_groups, group_arg.gather(1, next_group.clamp(max=n_groups - 1)), farthest
    )
    has_rank = index[:, :-1] < ranks.n_positives[:, None]
    rows, k = torch.nonzero(has_rank & neg.any(dim=1, keepdim=True), as_tuple=True)
    return rows + ranks.anchors.start, ranks.positive_columns[rows, k], chosen[rows, k]


def semihard_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """FaceNet / TF-Addons ``TripletSemiHardLoss`` mining: one triplet per positive pair.

    For each positive pair, the negative with the smallest ``d_an`` still ``> d_ap``; if there
    is none, the negative with the largest ``d_an``.  Pairs whose anchor has no negative are
    left out.  ``O(B^2 log G)`` time, bounded memory.

    Args:
        dist: ``(B, B)`` distances.
        labels: ``(B,)`` integer labels.

    Returns:
        ``(a, p, n)``, each ``(T,)`` int64, one per positive pair whose anchor has a negative.
    """
    return concat_triplets(semihard_in_block(r) for r in rank_negatives(dist, labels))


def concat_triplets(parts: Iterable[Triplets]) -> Triplets:
    """Concatenate per-block ``(a, p, n)`` triplets (at least one block)."""
    a, p, n = zip(*parts)
    return torch.cat(a), torch.cat(p), torch.cat(n)
