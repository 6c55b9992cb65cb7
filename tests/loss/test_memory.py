"""Cross-batch memory: the ring it keeps, and its loss against the brute-force triple loop
over the concatenated references (batch first, then the memory)."""

import pytest
import torch

from facetrip.loss import TripletLoss
from facetrip.loss.memory import CrossBatchMemory, MemoryTripletLoss
from tests.loss.test_references import brute_force


def test_the_ring_keeps_the_newest_entries_in_order():
    memory = CrossBatchMemory(size=5, dim=2)
    for step in range(3):  # 3 batches of 2: the oldest entry is overwritten
        memory.push(torch.full((2, 2), float(step)), torch.tensor([10 * step, 10 * step + 1]))
    assert int(memory.filled) == 5 and int(memory.next) == 1 and int(memory.calls) == 3
    assert memory.labels.tolist() == [21, 1, 10, 11, 20]
    assert memory.embeddings[:, 0].tolist() == [2.0, 0.0, 1.0, 1.0, 2.0]
    refs, labels, used = memory.references(torch.ones(1, 2) * 7, torch.tensor([3]))
    assert labels.tolist() == [3, 21, 1, 10, 11, 20] and refs[0].tolist() == [7.0, 7.0]
    assert used == 5
    fresh = CrossBatchMemory(size=4, dim=2, start=2)  # before start: the batch alone
    fresh.push(torch.zeros(2, 2), torch.tensor([0, 1]))
    refs, labels, used = fresh.references(torch.ones(1, 2), torch.tensor([5]))
    assert used == 0 and labels.tolist() == [5] and refs.tolist() == [[1.0, 1.0]]
    big = CrossBatchMemory(size=2, dim=1)
    big.push(torch.arange(5.0)[:, None], torch.arange(5))  # a batch larger than the ring
    assert sorted(big.labels.tolist()) == [3, 4]


@pytest.mark.parametrize("mining, margin", [("batch_all", 0.2), ("batch_hard", None),
                                            ("semihard", 0.2), ("all", 0.2)])
def test_the_memory_loss_is_the_brute_force_loss_over_batch_and_memory(mining, margin):
    gen = torch.Generator().manual_seed(4)
    loss = MemoryTripletLoss(TripletLoss(mining=mining, margin=margin),
                             CrossBatchMemory(size=10, dim=5))
    past = torch.nn.functional.normalize(torch.randn(6, 5, generator=gen), dim=1)
    past_labels = torch.tensor([0, 1, 2, 3, 0, 5])
    loss.memory.push(past, past_labels)
    x = torch.nn.functional.normalize(torch.randn(8, 5, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 4, 4])
    x.requires_grad_()
    got, stats = loss(x.float(), labels)
    (got_grad,) = torch.autograd.grad(got, x)
    y = x.detach().clone().requires_grad_()
    refs = torch.cat([y, past.double()])
    want, want_stats = brute_force(y, labels, refs, torch.cat([labels, past_labels]),
                                   list(range(8)), mining, margin, "euclidean")
    (want_grad,) = torch.autograd.grad(want, y)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert stats["n_triplets"] == want_stats["n_triplets"] and stats["memory_size"] == 6.0
    assert int(loss.memory.filled) == 10 and loss.memory.labels[6:].tolist() == labels[:4].tolist()


def test_before_memory_start_the_loss_is_the_in_batch_loss_and_the_ring_fills():
    gen = torch.Generator().manual_seed(5)
    plain = TripletLoss(mining="batch_all")
    loss = MemoryTripletLoss(plain, CrossBatchMemory(size=16, dim=4, start=2))
    labels = torch.arange(4).repeat_interleave(2)
    for step in range(3):
        x = torch.randn(8, 4, generator=gen)
        got, stats = loss(x, labels)
        if step < 2:
            assert float(got) == float(plain(x, labels)[0]) and stats["memory_size"] == 0.0
        else:
            assert stats["memory_size"] == 16.0
    assert int(loss.memory.calls) == 3
