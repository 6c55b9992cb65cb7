"""Triplet mining: which (anchor, positive, negative) triplets a batch offers.

Miners read a ``(B, R)`` distance matrix between ``B`` anchors and ``R`` references, the
anchors' ``(B,)`` integer labels and, optionally, the references' ``(R,)`` labels; they return
indices or counts and know nothing about losses (the style of pytorch-metric-learning's miners,
including its ``ref_emb`` / ``ref_labels``).

References.  Positives and negatives are drawn from the references.  By default
(``ref_labels=None``) the references are the batch itself: ``R = B`` and an anchor is never its
own positive (the diagonal is excluded).  With explicit ``ref_labels``, ``ref_self_index`` tells
which reference, if any, is each anchor itself (see :func:`resolve_references`): an all-gathered
global batch contains the local batch at some offset, a memory of past batches may contain the
current one.  References that are not the anchor itself are all candidates, even if their
embedding happens to equal the anchor's.

Vocabulary used throughout:

* a *positive pair* ``(a, p)`` has ``ref_labels[p] == labels[a]`` and ``p`` is not ``a`` itself;
* a *negative pair* ``(a, n)`` has ``ref_labels[n] != labels[a]``;
* a *valid triplet* ``(a, p, n)`` joins a positive pair and a negative pair with the same anchor;
* ``d_ap = dist[a, p]``, ``d_an = dist[a, n]``; ``G`` is the largest number of positives an
  anchor has (largest identity size minus one when the references are the batch).

Ties between equal distances are broken towards the lowest reference index.

Nothing here enumerates the ``O(B R^2)`` triplets.  Every anchor's few positive distances are
sorted, and every negative distance is located among them (:func:`count_positives_at_most`),
which tells for each negative pair how many positives make an easy, semi-hard or hard triplet
with it: ``O(B R log G)`` time.  Anchors are processed in blocks of rows
(:func:`rank_negatives`) so that temporaries stay near ``BLOCK_ELEMENTS`` elements.

CPU note: on CPU, ``masked_fill`` / ``where`` over ``(r, R)`` tensors are many times slower than
arithmetic, so the hot paths exclude entries by adding a huge value (:func:`_exclude`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import NamedTuple

import torch

BLOCK_ELEMENTS = 1 << 20
"""Target size, in elements, of the per-block temporaries of :func:`rank_negatives`."""

DENSE_RANKS = 32
"""Up to this many positives per anchor, counts are sums of comparisons, not searchsorted."""

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Anchor, positive and negative indices: three ``(T,)`` int64 tensors."""


def validate_batch(embeddings: torch.Tensor, labels: torch.Tensor, what: str = "batch") -> None:
    """Raise ``ValueError`` unless ``embeddings`` is ``(B, D)`` float and ``labels`` ``(B,)`` int.

    Args:
        embeddings: ``(B, D)`` floating-point embeddings, ``B >= 1``.
        labels: ``(B,)`` integer identity labels.
        what: what the tensors are, for the messages (``"batch"``, ``"reference set"``).
    """
    if embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError(
            f"{what} embeddings must be a (B, D) float tensor, got {tuple(embeddings.shape)} "
            f"{embeddings.dtype}"
        )
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{what} labels must be a (B,) integer tensor, got "
                         f"{tuple(labels.shape)}")
    if labels.dtype == torch.bool:
        raise ValueError(f"{what} labels must be integers, not booleans")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} {what} embeddings but {labels.shape[0]} labels")
    if labels.shape[0] < 1:
        raise ValueError(f"the {what} is empty")


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


class References(NamedTuple):
    """A checked reference set: ``labels`` ``(R,)`` and, per anchor, ``self_index`` ``(B,)``
    int64 in ``[-1, R)`` (the reference that is the anchor itself, ``-1``: none). What
    :func:`resolve_references` returns; every miner takes it back as ``ref_labels`` (with no
    ``ref_self_index``) without checking it again, so a loss resolves its references once."""

    labels: torch.Tensor
    self_index: torch.Tensor


def resolve_references(
    labels: torch.Tensor,
    ref_labels: torch.Tensor | References | None = None,
    ref_self_index: torch.Tensor | int | None = None,
) -> References:
    """The references' labels and, for every anchor, the reference that is the anchor itself.

    Args:
        labels: ``(B,)`` integer labels of the anchors.
        ref_labels: ``(R,)`` integer labels of the references (``R >= 1``), on the device of
            ``labels``; ``None`` means the references are the batch (``R = B``, reference
            ``i`` is anchor ``i``; ``ref_self_index`` must then be ``None``).
        ref_self_index: which reference is each anchor itself, so that it is never paired with
            itself; only with ``ref_labels``.  Either a ``(B,)`` integer tensor, entry ``a``
            being the row of the references that is anchor ``a``, or ``-1`` if none is; or an
            ``int`` offset ``o``, shorthand for ``arange(B) + o`` (the batch is the references'
            rows ``o : o + B``, as in an all-gathered global batch); or ``None``: no reference
            is an anchor.  A reference named here must carry its anchor's label.

    Returns:
        :class:`References` ``(ref_labels, self_index)``: ``(R,)`` labels and ``(B,)`` int64
        indices in ``[-1, R)``. A :class:`References` given as ``ref_labels`` is returned as
        it is (it was checked when it was made).

    Raises:
        ValueError: on shapes, dtypes or indices that do not fit, or a self reference whose
            label is not its anchor's.
    """
    batch, device = labels.shape[0], labels.device
    if isinstance(ref_labels, References):
        if ref_self_index is not None:
            raise ValueError("resolved References already hold the self index")
        return ref_labels
    if ref_labels is None:
        if ref_self_index is not None:
            raise ValueError("ref_self_index needs ref_labels (without references, the batch "
                             "is its own reference set and anchor i is row i)")
        return References(labels, torch.arange(batch, device=device))
    if ref_labels.dim() != 1 or not _is_integer(ref_labels):
        raise ValueError(f"ref_labels must be a (R,) integer tensor, got "
                         f"{tuple(ref_labels.shape)} {ref_labels.dtype}")
    n_refs = ref_labels.shape[0]
    if n_refs < 1:
        raise ValueError("the reference set is empty")
    if ref_self_index is None:
        return References(ref_labels, torch.full((batch,), -1, dtype=torch.long, device=device))
    if isinstance(ref_self_index, torch.Tensor):
        if ref_self_index.shape != (batch,) or not _is_integer(ref_self_index):
            raise ValueError(f"ref_self_index must be a ({batch},) integer tensor, got "
                             f"{tuple(ref_self_index.shape)} {ref_self_index.dtype}")
        self_index = ref_self_index.to(device=device, dtype=torch.long)
        if not bool(((self_index >= -1) & (self_index < n_refs)).all()):
            raise ValueError(f"ref_self_index entries must lie in [-1, {n_refs})")
    elif isinstance(ref_self_index, int) and not isinstance(ref_self_index, bool):
        if not 0 <= ref_self_index <= n_refs - batch:
            raise ValueError(f"ref_self_index offset {ref_self_index} does not place {batch} "
                             f"anchors inside {n_refs} references")
        self_index = torch.arange(batch, device=device) + ref_self_index
    else:
        raise ValueError(f"ref_self_index must be a tensor, an int or None, not "
                         f"{type(ref_self_index).__name__}")
    itself = ref_labels[self_index.clamp(min=0)]
    if bool(((self_index >= 0) & (itself != labels)).any()):
        raise ValueError("ref_self_index names a reference whose label is not its anchor's")
    return References(ref_labels, self_index)


def positive_negative_masks(
    labels: torch.Tensor,
    anchors: slice = slice(None),
    *,
    ref_labels: torch.Tensor | References | None = None,
    ref_self_index: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of the positive and negative pairs.

    Args:
        labels: ``(B,)`` integer labels of the anchors.
        anchors: the rows to return (default all): ``r`` consecutive anchors.
        ref_labels, ref_self_index: the references, as :func:`resolve_references`.

    Returns:
        ``(pos_mask, neg_mask)``, both ``(r, R)`` bool.  ``pos_mask[i, j]`` is true when
        reference ``j`` has the label of anchor ``i`` and is not the anchor itself (by default
        the diagonal is false).
    """
    ref_labels, self_index = resolve_references(labels, ref_labels, ref_self_index)
    columns = torch.arange(ref_labels.shape[0], device=labels.device)
    same = labels[anchors, None] == ref_labels[None, :]
    return same & (self_index[anchors, None] != columns[None, :]), ~same


def _same_label_counts(labels: torch.Tensor, ref_labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For every anchor: its label's first row in the label-sorted references, and how many
    references carry it (``(B,)`` int64 each), plus that sort order (``(R,)``)."""
    order = torch.argsort(ref_labels, stable=True)
    values, sizes = torch.unique(ref_labels, return_counts=True)  # values sorted
    group = torch.searchsorted(values, labels).clamp(max=values.numel() - 1)
    found = values[group] == labels
    starts = torch.cumsum(sizes, 0) - sizes
    return starts[group], torch.where(found, sizes[group], 0), order


def count_valid_triplets(
    labels: torch.Tensor,
    ref_labels: torch.Tensor | References | None = None,
    ref_self_index: torch.Tensor | int | None = None,
) -> int:
    """Number of valid triplets of anchors with ``(B,)`` ``labels`` against the references.

    ``sum_a n_pos(a) n_neg(a)``; with the batch as references, ``sum s (s-1) (B-s)`` over the
    identity sizes ``s``.  ``ref_labels`` and ``ref_self_index`` are as in
    :func:`resolve_references`.
    """
    ref_labels, self_index = resolve_references(labels, ref_labels, ref_self_index)
    _, same, _ = _same_label_counts(labels, ref_labels)
    positives = same - (self_index >= 0).long()
    return int((positives * (ref_labels.shape[0] - same)).sum())


def positive_table(
    labels: torch.Tensor,
    ref_labels: torch.Tensor | References | None = None,
    ref_self_index: torch.Tensor | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every anchor's positives as a padded table (``O(B G)`` memory).

    Args:
        labels: ``(B,)`` integer labels of the anchors.
        ref_labels, ref_self_index: the references, as :func:`resolve_references`.

    Returns:
        ``(columns, counts)``: ``(B, G')`` int64 reference indices of each anchor's positives
        in increasing order, padded with 0, and ``(B,)`` int64 numbers of positives;
        ``G' = max(G, 1)``.
    """
    ref_labels, self_index = resolve_references(labels, ref_labels, ref_self_index)
    n_refs = ref_labels.shape[0]
    starts, sizes, order = _same_label_counts(labels, ref_labels)
    slots = torch.arange(max(1, int(sizes.max())), device=labels.device)
    members = order[(starts[:, None] + slots).clamp(max=n_refs - 1)]
    is_other = (slots < sizes[:, None]) & (members != self_index[:, None])
    counts = is_other.sum(dim=1)
    # Move each row's positives to the front, in order: sort keys that put the others last.
    keys = torch.where(is_other, members, n_refs).sort(dim=1).values
    columns = keys[:, : max(1, int(counts.max()))]
    return columns.masked_fill(columns == n_refs, 0), counts


def count_positives_at_most(
    positive_distances: torch.Tensor, thresholds: torch.Tensor, inclusive: bool = True
) -> torch.Tensor:
    """How many of each row's sorted positive distances are ``<=`` (or ``<``) each threshold.

    Args:
        positive_distances: ``(r, G')`` ascending rows, ``+inf`` padded.
        thresholds: ``(r, R)``.
        inclusive: count ``<=`` if true, else ``<``.

    Returns:
        ``(r, R)`` counts: uint8 sums of comparisons up to ``DENSE_RANKS`` positives (faster on
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
    The ``(r, R)`` counts (uint8 or int32) are computed on first use; their entries at
    non-negative columns are meaningless.

    Attributes:
        anchors: the block's rows of the batch, a slice.
        distances: ``(r, R)`` distances from the block's anchors to every reference.
        negatives: ``(r, R)`` bool mask of the negative pairs.
        positive_distances: ``(r, G')`` each anchor's ``d_ap`` ascending, padded with ``+inf``.
        positive_columns: ``(r, G')`` int64 reference index of each ``positive_distances`` entry
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
        """``(r, R)`` positives with ``d_ap <= d_an``."""
        return count_positives_at_most(self.positive_distances, self.distances)

    @cached_property
    def n_easy(self) -> torch.Tensor:
        """``(r, R)`` positives with ``d_ap <= d_an - margin``."""
        if self.margin == 0:
            return self.n_not_hard
        return count_positives_at_most(self.positive_distances, self.distances - self.margin)

    @cached_property
    def n_closer(self) -> torch.Tensor:
        """``(r, R)`` positives with ``d_ap < d_an``."""
        return count_positives_at_most(self.positive_distances, self.distances, inclusive=False)

    def masked(self, counts: torch.Tensor) -> torch.Tensor:
        """``(r, R)`` ``counts`` with the entries of non-negative columns set to 0."""
        return counts * self.negatives.to(counts.dtype)


def rank_negatives(
    dist: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.0,
    *,
    block_elements: int | None = None,
    ref_labels: torch.Tensor | References | None = None,
    ref_self_index: torch.Tensor | int | None = None,
) -> Iterator[NegativeRanks]:
    """Yield :class:`NegativeRanks` for consecutive blocks of anchors covering the batch.

    Works on ``dist`` detached.  Time ``O(B R log G)``; memory ``O(block_elements + B G)``.

    Args:
        dist: ``(B, R)`` distances from the anchors to the references (``(B, B)`` by default).
        labels: ``(B,)`` integer labels of the anchors.
        margin: the ``margin >= 0`` that separates easy from semi-hard triplets.
        block_elements: approximate size ``r * R`` of a block; default ``BLOCK_ELEMENTS``.
        ref_labels, ref_self_index: the references, as :func:`resolve_references`.
    """
    dist = dist.detach()
    ref_labels, self_index = resolve_references(labels, ref_labels, ref_self_index)
    batch, n_refs = labels.shape[0], ref_labels.shape[0]
    if dist.shape != (batch, n_refs):
        raise ValueError(f"distances of shape {tuple(dist.shape)} for {batch} anchors and "
                         f"{n_refs} references")
    columns, counts = positive_table(labels, ref_labels, self_index)
    rows = max(1, (block_elements or BLOCK_ELEMENTS) // n_refs)
    for start in range(0, batch, rows):
        anchors = slice(start, min(start + rows, batch))
        yield _rank_block(
            dist, labels, ref_labels, anchors, columns[anchors], counts[anchors], margin
        )


def _rank_block(
    dist: torch.Tensor,
    labels: torch.Tensor,
    ref_labels: torch.Tensor,
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
        negatives=labels[anchors, None] != ref_labels[None, :],
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


def batch_hard_triplets(
    dist: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_labels: torch.Tensor | References | None = None,
    ref_self_index: torch.Tensor | int | None = None,
) -> Triplets:
    """Batch-hard mining (Hermans et al.): one triplet per anchor.

    Each anchor gets its hardest positive (largest ``d_ap``) and hardest negative (smallest
    ``d_an``); anchors lacking a positive or a negative are left out.

    Args:
        dist: ``(B, R)`` distances from the anchors to the references.
        labels: ``(B,)`` integer labels of the anchors.
        ref_labels, ref_self_index: the references, as :func:`resolve_references`.

    Returns:
        ``(a, p, n)``, each ``(T,)`` int64 with ``T <= B``: ``a`` indexes the batch, ``p`` and
        ``n`` the references.
    """
    ranks = rank_negatives(dist, labels, ref_labels=ref_labels, ref_self_index=ref_self_index)
    return concat_triplets(batch_hard_in_block(r) for r in ranks)


def semihard_in_block(ranks: NegativeRanks) -> Triplets:
    """FaceNet semi-hard triplets of a block's anchors (see :func:`semihard_triplets`).

    Groups each anchor's negatives by ``n_closer`` (how many positives are strictly closer).
    The groups hold disjoint, increasing ranges of distance, so for the positive of rank ``k``
    the answer is the closest negative of the first non-empty group ``j > k``.
    """
    d, neg = ranks.distances, ranks.negatives
    n_rows, n_refs = d.shape
    n_groups = ranks.positive_distances.shape[1] + 1
    # Non-negatives go to an extra group, n_groups, that is never read.
    closer = ranks.n_closer
    group = (ranks.masked(closer) + (~neg).to(closer.dtype) * n_groups).long()
    group_min = d.new_full((n_rows, n_groups + 1), torch.inf)
    group_min.scatter_reduce_(1, group, d, "amin")
    is_min = d == group_min.gather(1, group)
    # The lowest column reaching its group's minimum (float32 keys are exact below 2**24).
    keys = torch.arange(n_refs, device=d.device, dtype=d.dtype) + (~is_min).to(d.dtype) * n_refs
    group_arg = d.new_full((n_rows, n_groups + 1), 2 * n_refs)
    group_arg = group_arg.scatter_reduce_(1, group, keys, "amin")[:, :n_groups].long()
    index = torch.arange(n_groups, device=d.device).expand(n_rows, n_groups)
    first_nonempty_from = index.masked_fill(group_arg >= n_refs, n_groups)
    first_nonempty_from = first_nonempty_from.flip(1).cummin(dim=1).values.flip(1)
    next_group = first_nonempty_from[:, 1:]
    farthest = _exclude(d, neg, to_top=False).argmax(dim=1, keepdim=True)
    chosen = torch.where(
        next_group < n_groups, group_arg.gather(1, next_group.clamp(max=n_groups - 1)), farthest
    )
    has_rank = index[:, :-1] < ranks.n_positives[:, None]
    rows, k = torch.nonzero(has_rank & neg.any(dim=1, keepdim=True), as_tuple=True)
    return rows + ranks.anchors.start, ranks.positive_columns[rows, k], chosen[rows, k]


def semihard_triplets(
    dist: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_labels: torch.Tensor | References | None = None,
    ref_self_index: torch.Tensor | int | None = None,
) -> Triplets:
    """FaceNet / TF-Addons ``TripletSemiHardLoss`` mining: one triplet per positive pair.

    For each positive pair, the negative with the smallest ``d_an`` still ``> d_ap``; if there
    is none, the negative with the largest ``d_an``.  Pairs whose anchor has no negative are
    left out.  ``O(B R log G)`` time, bounded memory.

    Args:
        dist: ``(B, R)`` distances from the anchors to the references.
        labels: ``(B,)`` integer labels of the anchors.
        ref_labels, ref_self_index: the references, as :func:`resolve_references`.

    Returns:
        ``(a, p, n)``, each ``(T,)`` int64, one per positive pair whose anchor has a negative:
        ``a`` indexes the batch, ``p`` and ``n`` the references.
    """
    ranks = rank_negatives(dist, labels, ref_labels=ref_labels, ref_self_index=ref_self_index)
    return concat_triplets(semihard_in_block(r) for r in ranks)


def concat_triplets(parts: Iterable[Triplets]) -> Triplets:
    """Concatenate per-block ``(a, p, n)`` triplets (at least one block)."""
    a, p, n = zip(*parts)
    return torch.cat(a), torch.cat(p), torch.cat(n)
