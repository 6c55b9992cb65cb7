"""Triplet losses against a triple-loop reference (values, gradients, statistics) and pml."""

from __future__ import annotations

import math

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
from tests.loss.references import loop_triplets as loop_references

MARGINS = [0.2, 0.5, None]


def options() -> list[tuple[str, float | None]]:
    return [(m, g) for m in MININGS for g in MARGINS if not (m == "semihard_all" and g is None)]


# ---------------------------------------------------------------- the triple-loop reference


def loop_triplets(
    dist: list[list[float]], lab: list[int], mining_mode: str, margin: float | None
) -> tuple[list[tuple[int, int, int]], int]:
    """The triplets a mode averages over in the batch itself, and how many candidates it
    considered: the reference-set loop with the batch as references."""
    return loop_references(dist, lab, lab, list(range(len(lab))), mining_mode, margin)


def reference(
    emb: torch.Tensor, labels: torch.Tensor, mining_mode: str, margin: float | None, distance: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """Brute force: Python loops over (a, p, n) pick the terms, in float64."""
    dist = pairwise_distances(emb.double(), distance=distance)
    d, lab, m = dist.tolist(), labels.tolist(), 0.0 if margin is None else margin
    chosen, candidates = loop_triplets(d, lab, mining_mode, margin)
    if not chosen:
        loss, active = dist.sum() * 0, 0
    else:
        a, p, n = (torch.tensor(x) for x in zip(*chosen))
        x = dist[a, p] - dist[a, n]
        terms = F.softplus(x) if margin is None else F.relu(x + margin)
        loss, active = terms.mean(), int((terms > 0).sum())
    stats = dict.fromkeys(STAT_NAMES, 0.0)
    valid = [(a, p, n) for a, p, n in loop_triplets(d, lab, "all", margin)[0]]
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
    b = len(lab)
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
        mean_pairwise_distance=sum(map(sum, d)) / (b * (b - 1)),
        n_triplets=float(n_terms),
        n_candidates=float(candidates),
    )
    return loss, stats


# ---------------------------------------------------------------- batches


def batch(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (9,), generator=gen)
    if kind == "random":
        return torch.randn(9, 4, generator=gen, dtype=torch.float64), labels
    grid = torch.randint(-2, 3, (9, 2), generator=gen).double() * 0.5
    if kind == "grid":  # ties everywhere, zero distances, a zero vector now and then
        return grid, labels
    if kind == "duplicates":
        emb = torch.randn(9, 4, generator=gen, dtype=torch.float64)
        emb[3] = emb[0]
        emb[5] = emb[1]
        emb[6] = emb[0]
        return emb, torch.tensor([0, 0, 1, 0, 2, 1, 2, 1, 2])
    if kind == "singletons":  # identities of one image next to larger ones
        return grid, torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])
    if kind == "big_identity":  # 8 positives per anchor: more than a couple of ranks
        return grid, torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1])
    raise ValueError(kind)


KINDS = ["random", "grid", "duplicates", "singletons", "big_identity"]


def assert_matches_reference(
    emb: torch.Tensor, labels: torch.Tensor, mining_mode: str, margin: float | None, distance: str
) -> None:
    x1 = emb.clone().requires_grad_()
    x2 = emb.clone().requires_grad_()
    loss, stats = triplet_loss_with_stats(
        x1, labels, mining=mining_mode, margin=margin, distance=distance
    )
    ref_loss, ref_stats = reference(x2, labels, mining_mode, margin, distance)
    (g1,) = torch.autograd.grad(loss, x1)
    (g2,) = torch.autograd.grad(ref_loss, x2)
    where = f"{mining_mode} margin={margin} {distance}"
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-9, msg=where)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-9, msg=where)
    assert set(stats) == set(STAT_NAMES)
    for name in STAT_NAMES:
        assert isinstance(stats[name], float)
        assert math.isclose(stats[name], ref_stats[name], rel_tol=1e-9, abs_tol=1e-9), (
            where,
            name,
        )


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(kind: str, distance: str) -> None:
    for seed in range(2):
        emb, labels = batch(kind, seed)
        for mining_mode, margin in options():
            assert_matches_reference(emb, labels, mining_mode, margin, distance)


@pytest.mark.parametrize("kind", ["grid", "big_identity"])
def test_matches_reference_with_searchsorted_and_tiny_blocks(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mining, "DENSE_RANKS", 0)
    monkeypatch.setattr(mining, "BLOCK_ELEMENTS", 1)
    emb, labels = batch(kind, 3)
    for mining_mode, margin in options():
        assert_matches_reference(emb, labels, mining_mode, margin, "squared_euclidean")


@pytest.mark.parametrize("labels", [torch.zeros(6, dtype=torch.long), torch.arange(6)])
def test_no_valid_triplet_gives_zero_loss_zero_grad_zero_stats(labels: torch.Tensor) -> None:
    for mining_mode, margin in options():
        emb = torch.randn(6, 3, requires_grad=True)
        loss, stats = triplet_loss_with_stats(emb, labels, mining=mining_mode, margin=margin)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.equal(emb.grad, torch.zeros_like(emb))
        assert stats == dict.fromkeys(STAT_NAMES, 0.0)


def test_single_sample_and_nothing_to_average() -> None:
    emb = torch.randn(1, 3, requires_grad=True)
    loss = triplet_loss(emb, torch.tensor([4]), mining="batch_all")
    loss.backward()
    assert loss.item() == 0.0 and emb.grad.abs().sum() == 0
    # Valid triplets, all easy: batch_all and semihard_all average nothing.
    emb = torch.tensor([[0.0], [0.0], [5.0], [5.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for mining_mode in ("batch_all", "semihard_all"):
        loss, stats = triplet_loss_with_stats(emb, labels, mining=mining_mode)
        (grad,) = torch.autograd.grad(loss, emb)
        assert loss.item() == 0.0 and not grad.any() and not torch.isnan(grad).any()
        assert stats["n_triplets"] == 0.0 and stats["frac_easy"] == 1.0


def test_margin_matters() -> None:
    emb, labels = batch("random", 0)
    for mining_mode in MININGS:
        values = {
            triplet_loss(emb, labels, mining=mining_mode, margin=m).item() for m in (0.3, 0.6)
        }
        assert len(values) == 2, mining_mode


def test_soft_margin_batch_all_equals_all() -> None:
    emb, labels = batch("random", 1)
    a = triplet_loss(emb, labels, mining="batch_all", margin=None)
    b = triplet_loss(emb, labels, mining="all", margin=None)
    assert torch.equal(a, b)


def test_rejects_bad_options() -> None:
    emb, labels = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError):
        triplet_loss(emb, labels, mining="semihard_all", margin=None)
    with pytest.raises(ValueError):
        triplet_loss(emb, labels, mining="hardest")
    with pytest.raises(ValueError):
        triplet_loss(emb, labels, distance="manhattan")
    with pytest.raises(ValueError):
        triplet_loss(emb, labels, margin=-0.1)
    with pytest.raises(ValueError):
        TripletLoss(margin=float("nan"))
    with pytest.raises(ValueError):
        triplet_loss(emb, labels.float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    emb, labels = batch("random", 2)
    low = emb.to(dtype).requires_grad_()
    for mining_mode in MININGS:
        loss = triplet_loss(low, labels, mining=mining_mode)
        assert loss.dtype == torch.float32
        expected = triplet_loss(low.detach().float(), labels, mining=mining_mode)
        torch.testing.assert_close(loss, expected)
        (grad,) = torch.autograd.grad(loss, low)
        assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_module_holds_options() -> None:
    emb, labels = batch("random", 0)
    module = TripletLoss(mining="batch_all", margin=0.3, distance="cosine")
    loss, stats = module(emb, labels)
    expected, expected_stats = triplet_loss_with_stats(
        emb, labels, mining="batch_all", margin=0.3, distance="cosine"
    )
    assert torch.equal(loss, expected) and stats == expected_stats
    assert "batch_all" in repr(module)


def test_larger_batch_agrees_across_code_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    emb = F.normalize(torch.randn(96, 8, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.arange(96) // 8
    fast = {m: triplet_loss_with_stats(emb, labels, mining=m) for m in MININGS}
    monkeypatch.setattr(mining, "DENSE_RANKS", 0)
    monkeypatch.setattr(mining, "BLOCK_ELEMENTS", 500)
    for m in MININGS:
        loss, stats = triplet_loss_with_stats(emb, labels, mining=m)
        torch.testing.assert_close(loss, fast[m][0], rtol=1e-12, atol=1e-12)
        assert stats == pytest.approx(fast[m][1], rel=1e-12)


# ---------------------------------------------------------------- pytorch-metric-learning


def pml_loss(
    emb: torch.Tensor, labels: torch.Tensor, mining_mode: str, margin: float, normalize: bool
) -> torch.Tensor:
    """pytorch-metric-learning's equivalent; ``normalize`` is pml's default L2 distance."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners, reducers

    dist = distances.LpDistance(normalize_embeddings=normalize)
    if mining_mode == "semihard_all":
        miner = miners.TripletMarginMiner(margin, type_of_triplets="semihard", distance=dist)
        loss = losses.TripletMarginLoss(margin, distance=dist)
        return loss(emb, labels, miner(emb, labels))
    if mining_mode == "batch_hard":
        loss = losses.TripletMarginLoss(margin, distance=dist, reducer=reducers.MeanReducer())
        return loss(emb, labels, miners.BatchHardMiner(distance=dist)(emb, labels))
    return losses.TripletMarginLoss(margin, distance=dist)(emb, labels)


@pytest.mark.parametrize("mining_mode", ["semihard_all", "batch_hard", "batch_all"])
@pytest.mark.parametrize("margin", [0.1, 0.2, 0.5])
def test_agrees_with_pytorch_metric_learning(mining_mode: str, margin: float) -> None:
    pytest.importorskip("pytorch_metric_learning")
    gen = torch.Generator().manual_seed(int(margin * 10))
    emb = F.normalize(torch.randn(64, 16, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 12, (64,), generator=gen)
    ours = triplet_loss(emb, labels, mining=mining_mode, margin=margin)
    assert ours.item() > 0
    # pml's default distance normalises (a no-op here): same value.
    default = pml_loss(emb, labels, mining_mode, margin, normalize=True)
    torch.testing.assert_close(ours, default, rtol=1e-7, atol=1e-10)
    # Without the normalisation the gradients must agree too.
    x1, x2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    ours = triplet_loss(x1, labels, mining=mining_mode, margin=margin)
    theirs = pml_loss(x2, labels, mining_mode, margin, normalize=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10)
    (g1,) = torch.autograd.grad(ours, x1)
    (g2,) = torch.autograd.grad(theirs, x2)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mining_mode", ["semihard_all", "batch_hard", "batch_all"])
def test_agrees_with_pytorch_metric_learning_in_float32(mining_mode: str) -> None:
    pytest.importorskip("pytorch_metric_learning")
    gen = torch.Generator().manual_seed(11)
    emb = F.normalize(torch.randn(256, 32, generator=gen), dim=1)
    labels = torch.arange(256) // 4
    ours = triplet_loss(emb, labels, mining=mining_mode, margin=0.2)
    theirs = pml_loss(emb, labels, mining_mode, 0.2, normalize=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
