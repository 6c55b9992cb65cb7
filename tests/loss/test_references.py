"""Reference sets (``ref_embeddings`` / ``ref_labels`` / ``ref_self_index``) against a triple loop.

Anchors come from the batch, positives and negatives from the references; the brute force
below loops over every anchor ``a``, every reference positive ``p`` (same label, ``p`` not the
anchor's own row) and every reference negative ``n``, and picks each mode's terms plainly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from facetrip.loss import mining
from facetrip.loss.distances import DISTANCES, pairwise_distances
from facetrip.loss.triplet import (
    MININGS,
    STAT_NAMES,
    TripletLoss,
    triplet_loss,
    triplet_loss_with_stats,
)
from tests.loss.references import loop_triplets


def options() -> list[tuple[str, float | None]]:
    """Every mode with a hard margin and, where allowed, the soft margin."""
    return [(m, g) for m in MININGS for g in (0.2, None) if not (m == "semihard_all" and g is None)]


# ---------------------------------------------------------------- the triple-loop reference


def plain_distances(x: torch.Tensor, y: torch.Tensor, distance: str) -> torch.Tensor:
    """``(B, R)`` distances from their definition, ``(B, 1, D)`` against ``(1, R, D)``; the
    euclidean distance has a zero gradient where it is 0, a zero vector has cosine 0."""
    u, v = x[:, None, :], y[None, :, :]
    if distance == "cosine":
        norms = u.norm(dim=-1).clamp_min(1e-12) * v.norm(dim=-1).clamp_min(1e-12)
        return (1 - (u * v).sum(-1) / norms).clamp_min(0)
    squared = ((u - v) ** 2).sum(-1)
    if distance == "squared_euclidean":
        return squared
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, 1).sqrt(), 0)


def brute_force(
    emb: torch.Tensor,
    labels: torch.Tensor,
    refs: torch.Tensor,
    ref_labels: torch.Tensor,
    self_row: list[int],
    mining_mode: str,
    margin: float | None,
    distance: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss and statistics from the loops, in float64; ``self_row[a]`` is ``-1`` or the row of
    ``refs`` that is anchor ``a``.

    The triplets are chosen on ``pairwise_distances`` (so that exact ties break as in the loss:
    the lowest index), but the loss and its gradients go through :func:`plain_distances`.
    """
    d = pairwise_distances(emb.detach(), refs.detach(), distance=distance).tolist()
    dist = plain_distances(emb.double(), refs.double(), distance)
    lab, ref_lab = labels.tolist(), ref_labels.tolist()
    m = 0.0 if margin is None else margin
    chosen, candidates = loop_triplets(d, lab, ref_lab, self_row, mining_mode, margin)
    if not chosen:
        loss, active = dist.sum() * 0, 0
    else:
        a, p, n = (torch.tensor(x) for x in zip(*chosen))
        x = dist[a, p] - dist[a, n]
        terms = F.softplus(x) if margin is None else F.relu(x + margin)
        loss, active = terms.mean(), int((terms > 0).sum())
    stats = dict.fromkeys(STAT_NAMES, 0.0)
    valid = loop_triplets(d, lab, ref_lab, self_row, "all", margin)[0]
    if not valid:
        return loss, stats
    hard = sum(d[a][n] < d[a][p] for a, p, n in valid)
    easy = sum(d[a][p] <= d[a][n] - m for a, p, n in valid)
    if mining_mode in ("batch_all", "all"):
        ap = {(a, p) for a, p, _ in valid}
        an = {(a, n) for a, _, n in valid}
        mean_ap = sum(d[a][p] for a, p in ap) / len(ap)
        mean_an = sum(d[a][n] for a, n in an) / len(an)
    elif chosen:
        mean_ap = sum(d[a][p] for a, p, _ in chosen) / len(chosen)
        mean_an = sum(d[a][n] for a, _, n in chosen) / len(chosen)
    else:
        mean_ap = mean_an = 0.0
    not_self = [d[a][j] for a in range(len(lab)) for j in range(len(ref_lab)) if j != self_row[a]]
    n_terms = len(valid) if mining_mode == "all" else len(chosen)
    active_of = {"batch_all": len(chosen), "all": sum(
        margin is None or d[a][p] > d[a][n] - m for a, p, n in valid
    )}
    stats.update(
        active_fraction=active_of.get(mining_mode, active) / candidates if candidates else 0.0,
        mean_d_ap=mean_ap,
        mean_d_an=mean_an,
        frac_hard=hard / len(valid),
        frac_semihard=(len(valid) - hard - easy) / len(valid),
        frac_easy=easy / len(valid),
        mean_pairwise_distance=sum(not_self) / len(not_self),
        n_triplets=float(n_terms),
        n_candidates=float(candidates),
    )
    return loss, stats


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """A batch and its references; ``self_row`` is what ``self_arg`` means, as a plain list."""

    emb: torch.Tensor  # (B, D) float64
    labels: torch.Tensor  # (B,)
    refs: torch.Tensor  # (R, D) float64, holding the anchors' values at their self rows
    ref_labels: torch.Tensor  # (R,)
    self_arg: torch.Tensor | int | None  # what the loss is given as ref_self_index
    self_row: list[int]  # (B,) the reference row of each anchor, -1 if none

    def build_refs(self, x: torch.Tensor, r: torch.Tensor, in_graph: bool) -> torch.Tensor:
        """The references from leaves ``x`` (batch) and ``r`` (refs): with ``in_graph`` the
        anchors' rows are ``x`` itself (the all-gather construction), else ``r`` throughout."""
        rows = [a for a, j in enumerate(self.self_row) if j >= 0]
        if not in_graph or not rows:
            return r
        at = torch.tensor([self.self_row[a] for a in rows])
        return r.index_put((at,), x[torch.tensor(rows)])


def rand(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randn(n, 4, generator=gen, dtype=torch.float64)


def grid(gen: torch.Generator, n: int) -> torch.Tensor:
    """Half-integer points: equal distances everywhere, coincident points, a zero vector."""
    return torch.randint(-2, 3, (n, 2), generator=gen).double() * 0.5


def ids(gen: torch.Generator, n: int, k: int = 3) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=gen)


def at_offset(
    gen: torch.Generator, emb: torch.Tensor, lab: torch.Tensor, before: int, after: int,
    points=rand, as_tensor: bool = False,
) -> Case:
    """A global batch: other ranks' samples, then the batch at row ``before``, then more."""
    b = len(lab)
    refs = torch.cat([points(gen, before), emb, points(gen, after)])
    ref_lab = torch.cat([ids(gen, before), lab, ids(gen, after)])
    rows = list(range(before, before + b))
    return Case(emb, lab, refs, ref_lab, torch.tensor(rows) if as_tensor else before, rows)


def make_case(kind: str, seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    if kind == "disjoint":
        return Case(rand(gen, 7), ids(gen, 7), rand(gen, 11), ids(gen, 11), None, [-1] * 7)
    if kind == "disjoint_ties":  # ties, zero distances between anchors and references
        return Case(grid(gen, 7), ids(gen, 7), grid(gen, 11), ids(gen, 11), None, [-1] * 7)
    if kind == "global":
        return at_offset(gen, rand(gen, 6), ids(gen, 6), 4, 3)
    if kind == "global_ties":  # duplicates inside the batch and of the batch elsewhere
        emb, lab = grid(gen, 6), ids(gen, 6)
        emb[2], lab[2] = emb[0], lab[0]
        case = at_offset(gen, emb, lab, 3, 4, points=grid, as_tensor=True)
        case.refs[0], case.ref_labels[0] = emb[1], lab[1]  # another image, same embedding
        case.refs[-1], case.ref_labels[-1] = emb[3], lab[3] + 1  # same embedding, other label
        return case
    if kind == "memory":  # some anchors at scattered rows of a memory, others absent
        emb, lab = rand(gen, 6), ids(gen, 6)
        refs, ref_lab = rand(gen, 12), ids(gen, 12)
        rows = [9, -1, 0, 5, -1, 11]
        for a, j in enumerate(rows):
            if j >= 0:
                refs[j], ref_lab[j] = emb[a], lab[a]
        return Case(emb, lab, refs, ref_lab, torch.tensor(rows), rows)
    if kind == "batch_without_self":  # the batch, but nothing marked as self: self pairs count
        emb, lab = rand(gen, 6), ids(gen, 6)
        return Case(emb, lab, emb.clone(), lab.clone(), None, [-1] * 6)
    if kind == "one_identity":
        case = at_offset(gen, rand(gen, 5), torch.zeros(5, dtype=torch.long), 3, 2)
        case.ref_labels.zero_()
        return case
    if kind == "singleton_identities":  # identities 1 and 3 only have their anchor itself
        lab = torch.tensor([0, 0, 1, 2, 2, 3])
        case = at_offset(gen, rand(gen, 6), lab, 0, 6)
        case.ref_labels[6:] = torch.tensor([0, 2, 4, 4, 0, 5])
        return case
    if kind == "no_positive":  # no reference shares an anchor's label: no valid triplet
        return Case(rand(gen, 5), ids(gen, 5), rand(gen, 8), ids(gen, 8) + 3, None, [-1] * 5)
    if kind == "zero_distances":  # every point at the origin
        case = at_offset(gen, torch.zeros(5, 3, dtype=torch.float64), ids(gen, 5), 2, 4,
                         points=lambda g, n: torch.zeros(n, 3, dtype=torch.float64))
        return case
    raise ValueError(kind)


KINDS = ["disjoint", "disjoint_ties", "global", "global_ties", "memory", "batch_without_self",
         "one_identity", "singleton_identities", "no_positive", "zero_distances"]
NO_TRIPLET = {"one_identity", "no_positive"}


def assert_matches_brute_force(
    case: Case, mining_mode: str, margin: float | None, distance: str, in_graph: bool
) -> None:
    where = f"{mining_mode} margin={margin} {distance} in_graph={in_graph}"
    results = []
    for ours in (True, False):
        x = case.emb.clone().requires_grad_()
        r = case.refs.clone().requires_grad_()
        refs = case.build_refs(x, r, in_graph)
        if ours:
            loss, stats = triplet_loss_with_stats(
                x, case.labels, ref_embeddings=refs, ref_labels=case.ref_labels,
                ref_self_index=case.self_arg, mining=mining_mode, margin=margin,
                distance=distance,
            )
        else:
            loss, stats = brute_force(x, case.labels, refs, case.ref_labels, case.self_row,
                                      mining_mode, margin, distance)
        results.append((loss, stats, *torch.autograd.grad(loss, (x, r))))
    (loss, stats, gx, gr), (ref_loss, ref_stats, ref_gx, ref_gr) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-9, msg=where)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-9, msg=where)
    torch.testing.assert_close(gr, ref_gr, rtol=1e-5, atol=1e-9, msg=where)
    assert set(stats) == set(STAT_NAMES)
    for name in STAT_NAMES:
        assert isinstance(stats[name], float)
        assert math.isclose(stats[name], ref_stats[name], rel_tol=1e-9, abs_tol=1e-9), (
            where, name)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_brute_force(kind: str, distance: str) -> None:
    case = make_case(kind)
    graph_options = [False, True] if any(j >= 0 for j in case.self_row) else [False]
    for in_graph in graph_options:
        for mining_mode, margin in options():
            assert_matches_brute_force(case, mining_mode, margin, distance, in_graph)


@pytest.mark.parametrize("kind", ["global_ties", "memory", "disjoint_ties"])
def test_matches_brute_force_with_searchsorted_and_tiny_blocks(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mining, "DENSE_RANKS", 0)
    monkeypatch.setattr(mining, "BLOCK_ELEMENTS", 1)
    case = make_case(kind, seed=1)
    for mining_mode, margin in options():
        assert_matches_brute_force(case, mining_mode, margin, "squared_euclidean", True)


@pytest.mark.parametrize("kind", sorted(NO_TRIPLET))
def test_no_valid_triplet_gives_zero_loss_and_zero_gradients(kind: str) -> None:
    case = make_case(kind)
    for mining_mode, margin in options():
        x, r = case.emb.clone().requires_grad_(), case.refs.clone().requires_grad_()
        loss, stats = triplet_loss_with_stats(
            x, case.labels, ref_embeddings=r, ref_labels=case.ref_labels,
            ref_self_index=case.self_arg, mining=mining_mode, margin=margin,
        )
        loss.backward()
        assert loss.item() == 0.0 and stats == dict.fromkeys(STAT_NAMES, 0.0)
        assert not x.grad.any() and not r.grad.any()


def test_anchor_alone_in_the_references_has_no_triplet() -> None:
    """The batch as its own references without marking itself would pair every anchor with
    itself at distance 0; with the offset, a lone image of an identity offers nothing."""
    emb = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    for mining_mode, margin in options():
        kwargs = dict(mining=mining_mode, margin=margin, ref_embeddings=emb, ref_labels=labels)
        assert triplet_loss(emb, labels, ref_self_index=0, **kwargs).item() == 0.0
        with_self = triplet_loss(emb, labels, **kwargs).item()
        assert with_self == pytest.approx(brute_force(
            emb, labels, emb, labels, [-1, -1], mining_mode, margin, "euclidean")[0].item())


# ---------------------------------------------------------------- the batch as references


@pytest.mark.parametrize("distance", DISTANCES)
def test_the_batch_as_references_equals_no_references(distance: str) -> None:
    gen = torch.Generator().manual_seed(4)
    emb, labels = rand(gen, 12), ids(gen, 12, k=4)
    emb[5] = emb[1]  # a zero distance off the diagonal
    for mining_mode, margin in options():
        x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        loss, stats = triplet_loss_with_stats(x1, labels, mining=mining_mode, margin=margin,
                                              distance=distance)
        for self_arg in (0, torch.arange(12)):
            same, same_stats = triplet_loss_with_stats(
                x2, labels, ref_embeddings=x2, ref_labels=labels, ref_self_index=self_arg,
                mining=mining_mode, margin=margin, distance=distance,
            )
            assert torch.equal(loss, same) and stats == same_stats, (mining_mode, margin)
            (g1,) = torch.autograd.grad(loss, x1, retain_graph=True)
            (g2,) = torch.autograd.grad(same, x2)
            if distance == "euclidean":  # the same hand-written backward: the same bits
                assert torch.equal(g1, g2)
            else:  # autograd of x x^T versus x y^T: equal up to rounding
                torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)


def test_module_passes_the_references() -> None:
    case = make_case("global")
    module = TripletLoss(mining="batch_all", margin=0.3, distance="cosine")
    loss, stats = module(case.emb, case.labels, case.refs, case.ref_labels, case.self_arg)
    expected, expected_stats = triplet_loss_with_stats(
        case.emb, case.labels, ref_embeddings=case.refs, ref_labels=case.ref_labels,
        ref_self_index=case.self_arg, mining="batch_all", margin=0.3, distance="cosine",
    )
    assert torch.equal(loss, expected) and stats == expected_stats


def test_references_in_half_precision_and_another_dtype() -> None:
    case = make_case("global")
    x = case.emb.float().half().requires_grad_()
    r = case.refs.requires_grad_()  # float64 references, cast to float32 like the embeddings
    loss = triplet_loss(x, case.labels, ref_embeddings=r, ref_labels=case.ref_labels,
                        ref_self_index=case.self_arg, mining="all")
    assert loss.dtype == torch.float32
    gx, gr = torch.autograd.grad(loss, (x, r))
    assert gx.dtype == torch.float16 and gr.dtype == torch.float64
    assert torch.isfinite(gx).all() and gr.any()


def test_rejects_inconsistent_references() -> None:
    emb, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    refs, ref_labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    bad = [
        dict(ref_labels=ref_labels),  # labels without embeddings
        dict(ref_self_index=0),  # self rows without references
        dict(ref_embeddings=refs),  # embeddings without labels
        dict(ref_embeddings=refs, ref_labels=ref_labels[:5]),
        dict(ref_embeddings=refs, ref_labels=ref_labels.float()),
        dict(ref_embeddings=torch.randn(6, 2), ref_labels=ref_labels),
        dict(ref_embeddings=refs[:0], ref_labels=ref_labels[:0]),
        dict(ref_embeddings=refs, ref_labels=ref_labels, ref_self_index=3),  # 3 + 4 > 6
        dict(ref_embeddings=refs, ref_labels=ref_labels, ref_self_index=-1),
        dict(ref_embeddings=refs, ref_labels=ref_labels, ref_self_index=1),  # labels differ
        dict(ref_embeddings=refs, ref_labels=ref_labels, ref_self_index=torch.arange(3)),
        dict(ref_embeddings=refs, ref_labels=ref_labels,
             ref_self_index=torch.tensor([0, 1, 2, 6])),
        dict(ref_embeddings=refs, ref_labels=ref_labels,
             ref_self_index=torch.tensor([0.0, 1.0, 2.0, 3.0])),
        dict(ref_embeddings=refs, ref_labels=ref_labels, ref_self_index=True),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            triplet_loss(emb, labels, **kwargs)
    ok = triplet_loss(emb, labels, ref_embeddings=refs, ref_labels=ref_labels,
                      ref_self_index=torch.tensor([0, -1, 2, 3]))
    assert torch.isfinite(ok)


# ---------------------------------------------------------------- distributed training


@pytest.mark.parametrize("distance", DISTANCES)
def test_ranks_weighted_by_their_terms_give_the_global_loss_and_gradient(distance: str) -> None:
    """Simulated all-gather over ranks of unequal local batches.

    With ``n_k`` terms on rank ``k`` and ``N = sum n_k``, ``sum_k (n_k / N) L_k`` is the global
    loss.  Its gradient is the global one when each rank's gradient with respect to the
    gathered references is summed back to the rows' owners (a differentiable all-gather); the
    detached construction (only the local rows live) keeps just each rank's own part of it.
    """
    gen = torch.Generator().manual_seed(7)
    sizes = [4, 6, 3]
    x_global, labels = rand(gen, sum(sizes)), ids(gen, sum(sizes), k=4)
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    slices = [slice(o, o + b) for o, b in zip(offsets, sizes)]
    for mining_mode, margin in options():
        where = f"{mining_mode} margin={margin} {distance}"
        kwargs = dict(mining=mining_mode, margin=margin, distance=distance)
        xg = x_global.clone().requires_grad_()
        global_loss = triplet_loss(xg, labels, **kwargs)
        (global_grad,) = torch.autograd.grad(global_loss, xg)

        local, gathered, detached, losses, counts = [], [], [], [], []
        for k, rows in enumerate(slices):
            x_k = x_global[rows].clone().requires_grad_()  # rank k's gradient-carrying batch
            refs_k = x_global.clone().requires_grad_()  # what a differentiable gather returns
            loss_k, stats_k = triplet_loss_with_stats(
                x_k, labels[rows], ref_embeddings=refs_k, ref_labels=labels,
                ref_self_index=offsets[k], **kwargs,
            )
            # pml's DistributedLossWrapper(efficient=True): other ranks detached, x_k in place.
            pml_refs = torch.cat([x_global[: rows.start], x_k, x_global[rows.stop:]])
            pml_loss = triplet_loss(x_k, labels[rows], ref_embeddings=pml_refs,
                                    ref_labels=labels, ref_self_index=offsets[k], **kwargs)
            torch.testing.assert_close(pml_loss, loss_k, rtol=1e-12, atol=0, msg=where)
            local.append(x_k)
            gathered.append(refs_k)
            detached.append((pml_loss, x_k))
            losses.append(loss_k)
            counts.append(stats_k["n_triplets"])
        total = sum(counts)
        if total == 0:
            assert global_loss.item() == 0.0
            continue
        weighted = sum(n / total * loss for n, loss in zip(counts, losses))
        torch.testing.assert_close(weighted, global_loss, rtol=1e-12, atol=1e-15, msg=where)
        weighted.backward()
        # The all-gather's backward: every rank's reference gradient, summed, to its owner.
        summed = torch.cat([local[k].grad + sum(g.grad[rows] for g in gathered)
                            for k, rows in enumerate(slices)])
        torch.testing.assert_close(summed, global_grad, rtol=1e-10, atol=1e-12, msg=where)
        # Detached: each rank keeps its anchors' terms' gradient w.r.t. its own rows only.
        for k, rows in enumerate(slices):
            pml_loss, x_k = detached[k]
            (own,) = torch.autograd.grad(counts[k] / total * pml_loss, x_k)
            expected = global_grad[rows] - sum(
                g.grad[rows] for j, g in enumerate(gathered) if j != k)
            torch.testing.assert_close(own, expected, rtol=1e-10, atol=1e-12, msg=where)
