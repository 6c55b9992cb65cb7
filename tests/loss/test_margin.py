"""The adaptive margin (``loss.margin_target``): its update against the hand computation, the
loss it wraps at the margin it holds, and the share of active triplets it settles at."""

import math

import pytest
import torch
from torch.nn import functional as F

from facetrip.loss import TripletLoss
from facetrip.loss.margin import RATE, AdaptiveMargin, AdaptiveMarginLoss


def test_the_margin_grows_below_the_target_and_shrinks_back_but_never_below_the_floor():
    margin = AdaptiveMargin(floor=0.2, target=0.1)
    assert margin.value == 0.2
    margin.update(0.0)  # nothing active: the largest step up
    assert margin.value == pytest.approx(0.2 * math.exp(RATE), rel=1e-15)
    margin.update(0.04)
    assert margin.value == pytest.approx(0.2 * math.exp(RATE) * math.exp(RATE * 0.6),
                                         rel=1e-14)
    grown = margin.value
    margin.update(0.1)  # on target: unchanged
    assert margin.value == grown
    margin.update(0.15)  # above it: back down
    assert margin.value == pytest.approx(grown * math.exp(-RATE * 0.5), rel=1e-14)
    for _ in range(100):
        margin.update(1.0)
    assert margin.value == 0.2  # the floor is loss.margin
    assert margin.margin.dtype == torch.float64  # a buffer: checkpoints hold it
    assert set(margin.state_dict()) == {"margin"}


@pytest.mark.parametrize("floor, target", [(0.0, 0.1), (0.2, 0.0), (0.2, 1.0)])
def test_bad_settings_are_refused(floor, target):
    with pytest.raises(ValueError):
        AdaptiveMargin(floor, target)


def _batch(seed: int, n: int = 24, ids: int = 6, dim: int = 8) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    return x, torch.arange(n) % ids


def test_each_step_is_the_triplet_loss_at_the_margin_held_then_the_margin_follows_it():
    triplet = TripletLoss(mining="batch_all", margin=0.2)
    adaptive = AdaptiveMargin(0.2, target=0.9)  # more than is active: it grows
    loss_fn = AdaptiveMarginLoss(triplet, triplet, adaptive)
    for seed in range(3):
        x, labels = _batch(seed)
        before = adaptive.value
        loss, stats = loss_fn(x, labels)
        want, want_stats = TripletLoss(mining="batch_all", margin=before)(x, labels)
        assert float(loss) == float(want) and stats["margin"] == before
        assert stats["active_fraction"] == want_stats["active_fraction"] < 0.9
        assert adaptive.value == pytest.approx(
            before * math.exp(RATE * (0.9 - want_stats["active_fraction"]) / 0.9), rel=1e-14)
    assert adaptive.value > 0.2


def test_a_batch_without_a_candidate_triplet_leaves_the_margin_as_it_is():
    triplet = TripletLoss(mining="batch_all", margin=0.2)
    adaptive = AdaptiveMargin(0.2, target=0.5)
    x, _ = _batch(0, n=6)
    _, stats = AdaptiveMarginLoss(triplet, triplet, adaptive)(x, torch.arange(6))  # no positive
    assert stats["n_candidates"] == 0.0 and adaptive.value == 0.2


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semihard"])
def test_on_a_fixed_batch_the_share_of_active_terms_settles_at_the_target(mining):
    gen = torch.Generator().manual_seed(3)  # 8 tight clusters: few terms active at first
    centres = F.normalize(torch.randn(8, 8, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.arange(48) % 8
    x = F.normalize(centres[labels] + 0.1 * torch.randn(48, 8, generator=gen,
                                                        dtype=torch.float64), dim=1)
    triplet = TripletLoss(mining=mining, margin=0.01)  # far too small: few terms active
    adaptive = AdaptiveMargin(0.01, target=0.3)
    loss_fn = AdaptiveMarginLoss(triplet, triplet, adaptive)
    first = loss_fn(x, labels)[1]["active_fraction"]
    for _ in range(1500):
        stats = loss_fn(x, labels)[1]
    assert first < 0.2 and abs(stats["active_fraction"] - 0.3) < 0.05, (first, stats)
    assert adaptive.value > 0.05
