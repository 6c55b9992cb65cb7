"""The learning-rate schedule against its closed form, and what extending a run does to it."""

import math

import numpy as np
import pytest

from facetrip.training.schedule import LRSchedule, Segment


def reference(step, total, warmup, min_ratio):
    """Warm-up then cosine, written out once per step, straight from the definition."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * progress)) / 2


def test_warmup_then_cosine():
    f = LRSchedule.cosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(5))
def test_one_segment_is_the_closed_form_exactly(seed):
    rng = np.random.default_rng(seed)
    total = int(rng.integers(1, 300))
    warmup, min_ratio = int(rng.integers(0, total + 1)), float(rng.uniform(0, 0.5))
    f = LRSchedule.cosine(total, warmup, min_ratio)
    for step in range(total + 5):  # bit for bit: a run's numbers must not move
        assert f(step) == reference(step, total, warmup, min_ratio), step


def test_a_finished_schedule_extended_restarts_warm_and_ends_at_the_minimum():
    old = LRSchedule.cosine(6, 2, 0.1)
    new = old.extended(6, 12)
    assert [new(s) for s in range(6)] == [old(s) for s in range(6)]  # the past is kept
    assert new(6) == 1.0  # the first step after the junction: optim.lr
    for s in range(6, 12):
        assert new(s) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * (s - 6) / 6)) / 2)
    assert new(12) == pytest.approx(0.1) and new(50) == pytest.approx(0.1)


def test_a_schedule_extended_part_way_continues_from_where_it_was():
    old = LRSchedule.cosine(10, 0, 0.0)
    new = old.extended(4, 20)
    assert new(4) == old(4)  # no jump at the junction
    assert [new(s) for s in range(4)] == [old(s) for s in range(4)]
    decay = [new(s) for s in range(4, 21)]
    assert all(a > b for a, b in zip(decay, decay[1:-1])) and new(20) == pytest.approx(0.0)


def test_shortening_and_unchanged_ends_and_the_checkpoint_round_trip():
    old = LRSchedule.cosine(10, 1, 0.05)
    assert old.extended(3, 10) is old and old.extended(12, 11) is old  # nothing left to train
    shorter = old.extended(3, 6)
    assert shorter.segments == (Segment(0, 10, 1.0, 1), Segment(3, 6, old(3), 0))
    assert LRSchedule.from_dict(shorter.extended(6, 9).to_dict()) == shorter.extended(6, 9)
    warm = LRSchedule.cosine(10, 4, 0.0).extended(4, 20)  # stopped as warm-up peaked
    assert warm.segments[-1].peak == 1.0
    assert warm.describe(1e-3).startswith("the learning rate continues from 0.001 at step 4")
    note = old.extended(10, 20).describe(1e-3)
    assert note == ("the learning rate restarts at 0.001 at step 10 and decays (cosine) to "
                    "5e-05 at step 20")
