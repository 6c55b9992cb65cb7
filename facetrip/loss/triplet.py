"""The triplet loss over a batch of embeddings, with five ways of choosing the triplets.

Notation: anchors are the ``B`` rows of the batch; positives and negatives are drawn from ``R``
*references*, by default the batch itself (see "Reference sets" below).  ``d_ap = dist[a, p]``
for a positive pair (same label, ``p`` not the anchor itself), ``d_an = dist[a, n]`` for a
negative pair (different labels); a *valid triplet* ``(a, p, n)`` joins the two.  ``m`` is the
margin.  The per-triplet loss is ``max(d_ap - d_an + m, 0)`` (hard margin) or
``softplus(d_ap - d_an)`` when ``margin=None`` (soft margin, Hermans et al. 2017).  Margin
comparisons are evaluated as ``d_ap`` against ``d_an - m``.

``mining`` chooses which terms are averaged:

``"semihard"``
    FaceNet, exactly TF-Addons ``TripletSemiHardLoss`` (with its L2 / squared-L2 / angular
    distance matching ``euclidean`` / ``squared_euclidean`` / ``cosine``): for every positive
    pair take the negative with the smallest ``d_an`` still ``> d_ap``, or if there is none the
    largest ``d_an``; average the loss over the positive pairs.  A pair whose anchor has no
    negative (a batch of a single identity) contributes no term; TF-Addons would count it.  The
    choice ignores the margin, so the soft margin is allowed.
``"semihard_all"``
    Every triplet with ``d_ap < d_an < d_ap + m``; the mean of their losses, all of which are
    positive.  This is pytorch-metric-learning's ``TripletMarginMiner(margin,
    type_of_triplets="semihard")`` (which keeps ``0 < d_an - d_ap <= m``) followed by
    ``TripletMarginLoss(margin)`` with its default ``AvgNonZeroReducer`` (mean of the losses
    ``> 0``, which drops the triplets with ``d_an == d_ap + m``).  Needs a margin:
    ``margin=None`` raises ``ValueError``.
``"batch_hard"``
    Per anchor, its hardest positive (largest ``d_ap``) and hardest negative (smallest
    ``d_an``); the mean over the anchors having both (pml ``BatchHardMiner`` +
    ``TripletMarginLoss(reducer=MeanReducer())``).
``"batch_all"``
    Every valid triplet; the mean over those with a non-zero loss (Hermans et al.; pml
    ``TripletMarginLoss`` with its default reducer).  With the soft margin every term is
    positive, so this equals ``"all"``.
``"all"``
    Every valid triplet; the mean over all of them.

Ties between equal distances are broken towards the lowest reference index (TF-Addons splits
the gradient between tied negatives instead; values agree).  When no term is left to average,
the loss is ``0`` with a zero gradient.

Reference sets (pytorch-metric-learning's ``ref_emb`` / ``ref_labels``).  With
``ref_embeddings`` ``(R, D)`` and ``ref_labels`` ``(R,)``, anchors still come from the batch but
positives and negatives from the references, so that a batch can mine against an all-gathered
global batch or a memory of past batches.  ``ref_self_index`` says which reference is each
anchor itself, and that pair is never formed (:func:`facetrip.loss.mining.resolve_references`):
an ``int`` offset ``o`` when the batch is the rows ``o : o + B`` of the references, a ``(B,)``
int64 tensor (``-1`` for "not in the references") in general, ``None`` when no reference is an
anchor.  Without references the batch is its own reference set minus the diagonal: the loss
and statistics are bit for bit those of ``ref_embeddings=embeddings, ref_labels=labels,
ref_self_index=0`` (the gradients agree to rounding: autograd of ``x x^T`` and of ``x y^T``
sum in different orders).  Gradients flow into both ``embeddings`` and ``ref_embeddings``.
Every term of every mode belongs to one anchor, so the terms of a global batch are the
disjoint union of its ranks' terms.

Distributed training.  Let every rank ``k`` of ``W`` hold a local batch ``x_k`` (``B_k`` rows
at offset ``o_k`` of the global batch) and compute ``L_k = triplet_loss(x_k, labels_k,
ref_embeddings=gathered, ref_labels=gathered_labels, ref_self_index=o_k)`` with ``n_k`` terms
(``stats["n_triplets"]``).  The single-process loss of the global batch is a mean over its
``N = sum_k n_k`` terms, so it equals ``sum_k (n_k / N) L_k``: each rank's loss must be weighted
by its share of the terms, not averaged with equal weights.  For the gradient to be that of the
global loss, the gradient each rank computes for ``gathered`` must reach the rank that owns each
row, summed over ranks: gather with a differentiable all-gather whose backward sums (e.g.
``torch.distributed.nn.functional.all_gather``) and backpropagate ``W * (n_k / N) * L_k`` on
every rank (``N`` from an all-reduce of ``n_k``; the factor ``W`` undoes DDP's averaging of
parameter gradients; drop it without DDP).  If instead the other ranks' rows are detached and
only the local ``x_k`` sits in its slice of ``gathered`` (pytorch-metric-learning's
``DistributedLossWrapper(efficient=True)``), the loss value is the same but the gradient drops,
for every term, the parts with respect to positives and negatives held by a rank other than the
anchor's.

Cost.  No ``B x R x R`` tensor is built and no Python loop runs over anchors.  Each anchor's
``G`` positive distances (``G`` = most positives of an anchor, largest identity size - 1 for
the batch alone) are sorted, and every negative distance is located among them
(:mod:`facetrip.loss.mining`): for every negative pair that gives how many positives form an
easy / semi-hard / hard triplet with it, in ``O(B R log G)`` time, anchors being processed in
blocks of rows.  ``semihard_all``, ``batch_all`` and ``all`` then need, per
negative, the number of positives in a rank window and, per positive, the number of negatives
whose window holds it (a difference array and a prefix sum over the ranks).  With a hard margin
the loss is linear in the distances once the triplets are chosen, so these counts are its
exact gradient with respect to the ``(B, R)`` distance matrix: memory is ``O(B R)``, gradients
included.  With the soft margin ``batch_all`` / ``all`` need ``sum_n softplus(d_ap - d_an)``
for every positive pair, which no prefix sum gives: it is evaluated one positive rank at a
time, ``O(B R G)`` time (``O(B R^2)`` for references of few identities) and still ``O(B R)``
memory.  Everything is computed in float32 at least: fp16 / bf16 embeddings are upcast first,
and the references are cast to the embeddings' compute dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from facetrip.loss.distances import DISTANCES, pairwise_distances
from facetrip.loss.mining import (
    NegativeRanks,
    References,
    batch_hard_in_block,
    concat_triplets,
    count_valid_triplets,
    difficulty_counts,
    rank_negatives,
    resolve_references,
    semihard_in_block,
    validate_batch,
)

MININGS = ("semihard", "semihard_all", "batch_hard", "batch_all", "all")

STAT_NAMES = (
    "active_fraction",
    "mean_d_ap",
    "mean_d_an",
    "frac_hard",
    "frac_semihard",
    "frac_easy",
    "mean_pairwise_distance",
    "n_triplets",
    "n_candidates",
)


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    ref_self_index: torch.Tensor | int | None = None,
    mining: str = "semihard",
    margin: float | None = 0.2,
    distance: str = "euclidean",
) -> torch.Tensor:
    """Triplet loss of a batch; see the module docstring for the ``mining`` modes.

    Args:
        embeddings: ``(B, D)`` float embeddings of the anchors (any float dtype; fp16 / bf16
            are upcast).
        labels: ``(B,)`` integer identity labels.
        ref_embeddings: ``(R, D)`` float embeddings the positives and negatives are drawn
            from, ``R >= 1``; ``None`` (default) means the batch itself, each anchor excluded
            as its own positive.  Cast to the dtype ``embeddings`` are computed in.
        ref_labels: ``(R,)`` integer labels of ``ref_embeddings``; given with them only.
        ref_self_index: which reference is each anchor itself (never paired with it); given
            with ``ref_embeddings`` only.  An ``int`` offset ``o``: the batch is the rows
            ``o : o + B`` of the references (an all-gathered global batch); a ``(B,)`` integer
            tensor: entry ``a`` is the reference row that is anchor ``a``, or ``-1`` if none
            (a memory that may hold the batch anywhere); ``None``: no reference is an anchor.
            A named reference must carry its anchor's label.
        mining: one of ``MININGS``.
        margin: ``m >= 0``, or ``None`` for the soft margin ``softplus(d_ap - d_an)``.
        distance: one of ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``.

    Returns:
        The scalar loss (float32, or float64 for float64 embeddings), differentiable with
        respect to ``embeddings`` and ``ref_embeddings``.
    """
    return _loss_and_stats(
        embeddings, labels, ref_embeddings, ref_labels, ref_self_index, mining, margin, distance,
        diagnose=False,
    )[0]


def triplet_loss_with_stats(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    ref_self_index: torch.Tensor | int | None = None,
    mining: str = "semihard",
    margin: float | None = 0.2,
    distance: str = "euclidean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`triplet_loss` and diagnostics of the batch.

    The diagnostics are python floats computed without autograd:

    * ``active_fraction``: fraction of the mode's candidate terms with a non-zero loss (positive
      pairs for ``semihard``, anchors for ``batch_hard``, valid triplets for ``batch_all`` /
      ``all``; always 1 for ``semihard_all`` and for the soft margin);
    * ``mean_d_ap``, ``mean_d_an``: mean distances over the terms the loss averages
      (``semihard``, ``batch_hard``, ``semihard_all``, weighted per triplet); for ``batch_all``
      / ``all``, over the positive pairs and the negative pairs belonging to a valid triplet;
    * ``frac_hard`` (``d_an < d_ap``), ``frac_semihard`` (``d_an - m < d_ap <= d_an``),
      ``frac_easy`` (``d_ap <= d_an - m``): fractions of all valid triplets, with ``m = 0`` for
      the soft margin (so ``frac_semihard = 0``);
    * ``mean_pairwise_distance``: mean of the ``(B, R)`` anchor-to-reference distances, leaving
      out each anchor's distance to itself (``B R`` entries minus one per anchor found among
      the references); without references, the mean off-diagonal distance of the batch;
    * ``n_triplets``: number of terms the loss averaged (with references, every term belongs to
      one anchor: see the module docstring for weighting ranks by it);
    * ``n_candidates``: number of candidate terms ``active_fraction`` is a share of.

    Every statistic is 0.0 when there is no valid triplet.

    Returns:
        ``(loss, stats)``; arguments as :func:`triplet_loss`.
    """
    return _loss_and_stats(
        embeddings, labels, ref_embeddings, ref_labels, ref_self_index, mining, margin, distance,
        diagnose=True,
    )


def _loss_and_stats(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ref_embeddings: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    ref_self_index: torch.Tensor | int | None,
    mining: str,
    margin: float | None,
    distance: str,
    diagnose: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    _check_options(mining, margin, distance)
    validate_batch(embeddings, labels)
    labels = labels.to(embeddings.device)
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    if ref_embeddings is None:
        if ref_labels is not None or ref_self_index is not None:
            raise ValueError("ref_labels and ref_self_index need ref_embeddings")
        refs = None  # the batch is its own reference set: self = the diagonal
        dist = pairwise_distances(embeddings, distance=distance)
    else:
        if ref_labels is None:
            raise ValueError("ref_embeddings need ref_labels")
        validate_batch(ref_embeddings, ref_labels, what="reference set")
        if ref_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(f"embeddings of dimension {embeddings.shape[1]} but references of "
                             f"dimension {ref_embeddings.shape[1]}")
        refs = resolve_references(labels, ref_labels.to(labels.device), ref_self_index)
        ref_embeddings = ref_embeddings.to(embeddings.device)
        dist = pairwise_distances(embeddings, ref_embeddings, distance=distance)
    n_valid = count_valid_triplets(labels, refs)
    if n_valid == 0:
        return _zero_loss(dist), dict.fromkeys(STAT_NAMES, 0.0)
    terms, difficulty = _mode_terms(dist, labels, refs, mining, margin, diagnose)
    return terms.loss, _stats(dist, refs, terms, difficulty, n_valid) if diagnose else {}


class TripletLoss(nn.Module):
    """Module form of :func:`triplet_loss_with_stats`, holding the options.

    Args:
        mining: one of ``MININGS``.
        margin: ``m >= 0``, or ``None`` for the soft margin.
        distance: one of ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``.
    """

    def __init__(
        self, mining: str = "semihard", margin: float | None = 0.2, distance: str = "euclidean"
    ) -> None:
        super().__init__()
        _check_options(mining, margin, distance)
        self.mining = mining
        self.margin = margin
        self.distance = distance

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        ref_self_index: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(B, D)`` embeddings and ``(B,)`` labels to ``(scalar loss, stats)``, against the
        optional ``(R, D)`` / ``(R,)`` references (see :func:`triplet_loss`)."""
        return triplet_loss_with_stats(
            embeddings, labels, ref_embeddings=ref_embeddings, ref_labels=ref_labels,
            ref_self_index=ref_self_index, mining=self.mining, margin=self.margin,
            distance=self.distance,
        )

    def extra_repr(self) -> str:
        return f"mining={self.mining!r}, margin={self.margin}, distance={self.distance!r}"


def _check_options(mining: str, margin: float | None, distance: str) -> None:
    if mining not in MININGS:
        raise ValueError(f"unknown mining {mining!r}; expected one of {MININGS}")
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    if margin is None:
        if mining == "semihard_all":
            raise ValueError("semihard_all selects d_ap < d_an < d_ap + margin: needs a margin")
    elif not margin >= 0:
        raise ValueError(f"margin must be >= 0 or None, got {margin!r}")


class _Terms(NamedTuple):
    """A mode's loss and what it averaged (the counts and means feed the diagnostics)."""

    loss: torch.Tensor
    n_terms: int
    n_active: int
    n_candidates: int
    mean_d_ap: float
    mean_d_an: float


def _mode_terms(
    dist: torch.Tensor,
    labels: torch.Tensor,
    refs: References | None,
    mining: str,
    margin: float | None,
    diagnose: bool,
) -> tuple[_Terms, torch.Tensor]:
    """The mode's terms and the ``(3,)`` hard / semi-hard / easy counts (zeros unless
    ``diagnose``), from the ``(B, R)`` distances."""
    if mining in ("semihard", "batch_hard"):
        return _explicit(dist, labels, refs, mining, margin, diagnose)
    if margin is None:
        return _soft_all(dist, labels, refs, diagnose)
    return _window(dist, labels, refs, mining, margin, diagnose)


def _ranks(
    dist: torch.Tensor, labels: torch.Tensor, refs: References | None, margin: float = 0.0
) -> Iterator[NegativeRanks]:
    return rank_negatives(dist, labels, margin, ref_labels=refs)


def _zero_loss(dist: torch.Tensor) -> torch.Tensor:
    """A zero connected to the graph, so that ``backward`` gives a zero gradient."""
    return dist.sum() * 0.0


def _per_triplet(d_ap_minus_d_an: torch.Tensor, margin: float | None) -> torch.Tensor:
    if margin is None:
        return F.softplus(d_ap_minus_d_an)
    return F.relu(d_ap_minus_d_an + margin)


def _no_counts(dist: torch.Tensor) -> torch.Tensor:
    return torch.zeros(3, dtype=torch.int64, device=dist.device)


def _explicit(
    dist: torch.Tensor,
    labels: torch.Tensor,
    refs: References | None,
    mining: str,
    margin: float | None,
    diagnose: bool,
) -> tuple[_Terms, torch.Tensor]:
    """``semihard`` / ``batch_hard``: mean loss over one mined triplet per pair / anchor."""
    select = semihard_in_block if mining == "semihard" else batch_hard_in_block
    parts, difficulty = [], _no_counts(dist)
    with torch.no_grad():
        for ranks in _ranks(dist, labels, refs, margin or 0.0):
            parts.append(select(ranks))
            if diagnose:
                difficulty += difficulty_counts(ranks)
    a, p, n = concat_triplets(parts)
    if a.numel() == 0:
        return _Terms(_zero_loss(dist), 0, 0, 0, 0.0, 0.0), difficulty
    # One gather for both distances: its backward allocates one (B, R) gradient, not two.
    d_ap, d_an = dist[torch.cat([a, a]), torch.cat([p, n])].split(a.numel())
    losses = _per_triplet(d_ap - d_an, margin)
    with torch.no_grad():
        n_active = int((losses > 0).sum())
        means = float(d_ap.mean()), float(d_an.mean())
    return _Terms(losses.mean(), a.numel(), n_active, a.numel(), *means), difficulty


class _Running:
    """Float64 running sums of a few per-block scalars, updated in place on the device.

    (Keeping a list of per-block scalars instead would pin small allocations between the
    blocks' temporaries and make the CPU heap grow.)
    """

    def __init__(self, width: int, device: torch.device) -> None:
        self.sums = torch.zeros(width, dtype=torch.float64, device=device)

    def add(self, *values: torch.Tensor) -> None:
        self.sums += torch.stack([v.double() for v in values])

    def values(self) -> list[float]:
        return self.sums.tolist()


def _pair_sums(ranks: NegativeRanks) -> list[torch.Tensor]:
    """Sum and count of ``d_ap`` and of ``d_an`` over the pairs that belong to a valid triplet."""
    neg = ranks.negatives
    n_neg = neg.sum(dim=1)
    pos_d = ranks.positive_distances
    pos_sum = torch.where(pos_d.isfinite(), pos_d, 0).sum(dim=1, dtype=torch.float64)
    neg_sum = (ranks.distances * neg.to(ranks.distances.dtype)).sum(dim=1, dtype=torch.float64)
    has_pos, has_neg = ranks.n_positives > 0, n_neg > 0
    return [
        (pos_sum * has_neg).sum(),
        (ranks.n_positives * has_neg).sum(),
        (neg_sum * has_pos).sum(),
        (n_neg * has_pos).sum(),
    ]


def _pair_means(pairs: _Running) -> tuple[float, float]:
    sum_ap, n_ap, sum_an, n_an = pairs.values()
    return (sum_ap / n_ap, sum_an / n_an) if n_ap and n_an else (0.0, 0.0)


def _window_block(
    ranks: NegativeRanks, upper: torch.Tensor, weights: torch.Tensor
) -> list[torch.Tensor]:
    """The triplets whose positive has, for their negative, a rank in ``[n_easy, upper)``.

    Those positives have ``d_ap > d_an - m``: the triplet's hinge is positive, and the loss
    is linear in the distances.  ``upper`` is ``(r, R)`` or ``(r, 1)``.  A difference array over
    the positive ranks (``+1`` at ``n_easy``, ``-1`` at ``upper``, then a prefix sum) counts,
    for every positive, the negatives it forms such a triplet with.

    Writes ``d(sum of the block's hinges) / d(distances)`` into the ``(r, R)`` ``weights`` and
    returns the number of triplets, the sum of their ``d_ap`` and of their ``d_an``.
    """
    d = ranks.distances
    lower = ranks.masked(ranks.n_easy)
    upper = ranks.masked(torch.maximum(upper.to(lower.dtype), ranks.n_easy))
    shape = (d.shape[0], ranks.positive_distances.shape[1] + 1)
    steps = torch.zeros(shape, dtype=torch.long, device=d.device)
    steps.scatter_add_(1, lower.long(), _constant(1, d))
    steps.scatter_add_(1, upper.long(), _constant(-1, d))
    per_positive = steps.cumsum(dim=1)[:, :-1].to(d.dtype)
    pos_d = torch.where(per_positive > 0, ranks.positive_distances, 0)
    weights.copy_(upper - lower).neg_()  # minus the number of triplets of each negative
    sums = [
        -weights.sum(dtype=torch.float64),
        (per_positive * pos_d).sum(dtype=torch.float64),
        -(weights * d).sum(dtype=torch.float64),
    ]
    weights.scatter_add_(1, ranks.positive_columns, per_positive)
    return sums


def _constant(value: int, like: torch.Tensor) -> torch.Tensor:
    """``value`` as an int64 tensor broadcast to the shape of ``like`` (no memory)."""
    return torch.full((), value, dtype=torch.long, device=like.device).expand(like.shape)


def _window(
    dist: torch.Tensor,
    labels: torch.Tensor,
    refs: References | None,
    mining: str,
    margin: float,
    diagnose: bool,
) -> tuple[_Terms, torch.Tensor]:
    """``semihard_all``, ``batch_all`` and ``all`` with a hard margin."""
    semihard = mining == "semihard_all"
    weights = torch.empty_like(dist, requires_grad=False)  # every row is written below
    window, pairs = _Running(3, dist.device), _Running(4, dist.device)
    difficulty = _no_counts(dist)
    with torch.no_grad():
        for ranks in _ranks(dist, labels, refs, margin):
            upper = ranks.n_closer if semihard else ranks.n_positives[:, None]
            window.add(*_window_block(ranks, upper, weights[ranks.anchors]))
            if diagnose:
                difficulty += difficulty_counts(ranks)
                pairs.add(*_pair_sums(ranks))
    n_window, sum_ap, sum_an = window.values()
    n_window = round(n_window)
    n_valid = count_valid_triplets(labels, refs)
    n_terms = n_valid if mining == "all" else n_window
    if n_terms == 0:
        loss = _zero_loss(dist)
    else:
        value = (sum_ap - sum_an + margin * n_window) / n_terms
        loss = _WithGradient.apply(dist, dist.new_tensor(value), weights.div_(n_terms))
    if not semihard:
        means = _pair_means(pairs)
    elif n_window:
        means = (sum_ap / n_window, sum_an / n_window)
    else:
        means = (0.0, 0.0)
    n_candidates = n_window if semihard else n_valid
    return _Terms(loss, n_terms, n_window, n_candidates, *means), difficulty


def _softplus_block(ranks: NegativeRanks, weights: torch.Tensor) -> torch.Tensor:
    """Soft-margin loss sum of a block, one positive rank at a time; its gradient w.r.t. the
    block's distances goes to the ``(r, R)`` ``weights``."""
    d = ranks.distances
    neg = ranks.negatives.to(d.dtype)
    pos_d = ranks.positive_distances
    pos_d = torch.where(pos_d.isfinite(), pos_d, 0)
    weights.zero_()
    per_positive = torch.zeros_like(pos_d)
    loss_sum = d.new_zeros((), dtype=torch.float64)
    for k in range(int(ranks.n_positives.max())):
        valid = neg * (ranks.n_positives > k).to(d.dtype)[:, None]
        x = pos_d[:, k, None] - d
        loss_sum += (F.softplus(x) * valid).sum(dtype=torch.float64)
        slope = torch.sigmoid(x) * valid
        weights -= slope
        per_positive[:, k] = slope.sum(dim=1)
    weights.scatter_add_(1, ranks.positive_columns, per_positive)
    return loss_sum


def _soft_all(
    dist: torch.Tensor, labels: torch.Tensor, refs: References | None, diagnose: bool
) -> tuple[_Terms, torch.Tensor]:
    """``batch_all`` / ``all`` with the soft margin: every term is positive, so both agree."""
    weights = torch.empty_like(dist, requires_grad=False)  # every row is written below
    total, pairs, difficulty = _Running(1, dist.device), _Running(4, dist.device), _no_counts(dist)
    with torch.no_grad():
        for ranks in _ranks(dist, labels, refs):
            total.add(_softplus_block(ranks, weights[ranks.anchors]))
            if diagnose:
                difficulty += difficulty_counts(ranks)
                pairs.add(*_pair_sums(ranks))
    n_valid = count_valid_triplets(labels, refs)
    value = dist.new_tensor(total.values()[0] / n_valid)
    loss = _WithGradient.apply(dist, value, weights.div_(n_valid))
    return _Terms(loss, n_valid, n_valid, n_valid, *_pair_means(pairs)), difficulty


class _WithGradient(torch.autograd.Function):
    """A scalar of ``dist`` whose value and ``(B, R)`` gradient were computed without autograd."""

    @staticmethod
    def forward(ctx, dist: torch.Tensor, value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def _mean_distance(dist: torch.Tensor, refs: References | None) -> float:
    """Mean of the ``(B, R)`` distances that do not pair an anchor with itself."""
    batch, n_refs = dist.shape
    with torch.no_grad():
        if refs is None:
            return float(dist.sum(dtype=torch.float64)) / (batch * (n_refs - 1))
        rows = torch.nonzero(refs.self_index >= 0).squeeze(1)
        keep = torch.ones(dist.shape, dtype=torch.bool, device=dist.device)
        keep[rows, refs.self_index[rows]] = False
        kept = batch * n_refs - rows.numel()
        return float((dist * keep).sum(dtype=torch.float64)) / kept if kept else 0.0


def _stats(
    dist: torch.Tensor, refs: References | None, terms: _Terms, difficulty: torch.Tensor,
    n_valid: int,
) -> dict[str, float]:
    mean_distance = _mean_distance(dist, refs)
    hard, semihard, easy = (int(c) / n_valid for c in difficulty)
    return {
        "active_fraction": terms.n_active / terms.n_candidates if terms.n_candidates else 0.0,
        "mean_d_ap": terms.mean_d_ap,
        "mean_d_an": terms.mean_d_an,
        "frac_hard": hard,
        "frac_semihard": semihard,
        "frac_easy": easy,
        "mean_pairwise_distance": mean_distance,
        "n_triplets": float(terms.n_terms),
        "n_candidates": float(terms.n_candidates),
    }
