import numpy as np
import pytest

from facetrip.data.sampler import PKSampler


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("p, k", [(4, 2), (5, 4), (10, 3)])
def test_every_batch_is_p_identities_by_k(p, k):
    labels = _labels([1, 2, 3, 5, 8, 13, 2, 4, 6, 9, 3, 7])
    sampler = PKSampler(labels, p, k, batches_per_epoch=30, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 30
    for batch in batches:
        ids = labels[batch].reshape(p, k)
        assert (ids == ids[:, :1]).all(), "identity-major layout, k images per identity"
        assert len(set(ids[:, 0])) == p, "p distinct identities"
        for row, idx in zip(ids[:, 0], np.asarray(batch).reshape(p, k), strict=False):
            n = (labels == row).sum()
            assert len(set(idx)) == min(n, k), "distinct images while the identity has them"


def test_deterministic_per_seed_and_epoch():
    labels = _labels([4] * 20)
    a, b = PKSampler(labels, 4, 4, seed=1), PKSampler(labels, 4, 4, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(PKSampler(labels, 4, 4, seed=2)) != list(a)


def test_identities_are_used_evenly_across_an_epoch():
    labels = _labels([10] * 12)
    sampler = PKSampler(labels, 4, 2, batches_per_epoch=9, seed=0)  # 36 slots = 3 cycles
    counts = np.bincount(np.concatenate([labels[b][::2] for b in sampler]), minlength=12)
    assert counts.min() == counts.max() == 3


def test_default_epoch_is_one_pass_and_too_few_identities_is_an_error():
    labels = _labels([8] * 10)
    assert len(PKSampler(labels, 4, 2)) == 80 // 8
    with pytest.raises(ValueError, match="at least p=11"):
        PKSampler(labels, 11, 2)


def test_an_epoch_resumed_at_a_batch_yields_the_same_remaining_batches_and_seeds():
    from facetrip.data.sampler import SeededBatchSampler

    labels = _labels([3, 5, 4, 6, 2, 7, 4])
    full = SeededBatchSampler(PKSampler(labels, 3, 2, batches_per_epoch=9, seed=4), seed=4)
    full.set_epoch(2)
    expected = list(full)
    for start in (0, 1, 5, 9):
        resumed = SeededBatchSampler(PKSampler(labels, 3, 2, batches_per_epoch=9, seed=4), seed=4)
        resumed.set_epoch(2, start_batch=start)
        assert list(resumed) == expected[start:] and len(resumed) == 9
    with pytest.raises(ValueError, match="start_batch"):
        resumed.set_epoch(2, start_batch=10)
