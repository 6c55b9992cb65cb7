"""PK batch sampler: every batch holds ``p`` identities x ``k`` images each."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from facetrip.data.transforms import batch_seed


class PKSampler(torch.utils.data.Sampler[list[int]]):
    """Yields batches of ``p * k`` dataset indices: ``k`` images of each of ``p`` identities.

    Identities are drawn without replacement from a shuffled cycle over all identities, so
    every identity appears equally often (to within one batch) across an epoch. An identity
    with fewer than ``k`` images contributes each of its images once and the remaining slots are
    drawn again with replacement; otherwise its ``k`` images are distinct. Within a batch the
    layout is identity-major: ``[id0 x k, id1 x k, ...]``.

    An **epoch** is ``batches_per_epoch`` batches; by default ``len(labels) // (p * k)``
    (at least 1), i.e. about one pass over the images. The batches depend only on
    ``(seed, epoch)``: call :meth:`set_epoch` before iterating, as with DistributedSampler.
    ``set_epoch(epoch, start_batch)`` resumes an epoch: iteration yields the same batches from
    number ``start_batch`` on (``len`` stays the epoch's length).
    """

    def __init__(
        self,
        labels: np.ndarray,
        p: int,
        k: int,
        batches_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        labels = np.asarray(labels)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if len(self.classes) < p:
            raise ValueError(f"PK sampler needs at least p={p} identities, got {len(self.classes)}")
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse)
        self._members = np.split(order, np.cumsum(counts)[:-1])
        self.p, self.k, self.seed, self.epoch, self.start_batch = p, k, seed, 0, 0
        self.batches_per_epoch = batches_per_epoch or max(1, len(labels) // (p * k))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the random stream of ``epoch`` (makes resumed runs draw the same batches) and
        the first batch to yield."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}]")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self.classes)
        cycle = rng.permutation(n_classes)
        pos = 0
        for b in range(self.batches_per_epoch):
            if pos + self.p > n_classes:  # start a new cycle, never repeating an id in a batch
                rest = cycle[pos:]
                fresh = rng.permutation(np.setdiff1d(np.arange(n_classes), rest))
                cycle, pos = np.concatenate([rest, fresh]), 0
            chosen = cycle[pos : pos + self.p]
            pos += self.p
            batch = []
            for c in chosen:
                members = self._members[c]
                if len(members) >= self.k:
                    picks = rng.choice(members, size=self.k, replace=False)
                else:  # every image once, the rest drawn again
                    extra = rng.choice(members, size=self.k - len(members), replace=True)
                    picks = np.concatenate([rng.permutation(members), extra])
                batch.extend(picks.tolist())
            if b >= self.start_batch:  # earlier batches are drawn all the same: same stream
                yield batch


class SeededBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Tags each batch of ``batch_sampler`` with its augmentation seed: yields
    ``[(index, seed), ...]`` where ``seed = batch_seed(seed, epoch, batch number)``.

    The seed travels with the indices to whichever DataLoader worker builds the batch, so
    augmentation depends only on ``(seed, epoch, batch)``, also with workers and on resume.
    ``set_epoch`` is forwarded to ``batch_sampler``.

    Distributed training: with ``world_size`` ranks, rank ``rank`` gets its share of each
    global PK batch, ``p / world_size`` whole identities (the batch is identity-major, so a
    contiguous slice): no identity is on two ranks in a step, and the union over the ranks is
    the single-process batch. Each rank's share is augmented with its own seed
    ``batch_seed(seed, epoch, batch, rank)``.
    """

    def __init__(self, batch_sampler: PKSampler, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size or batch_sampler.p % world_size:
            raise ValueError(f"sampler.p={batch_sampler.p} identities per batch cannot be split "
                             f"evenly over {world_size} ranks (rank {rank})")
        self.batch_sampler, self.seed, self.epoch = batch_sampler, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.batch_sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_sampler.p // self.world_size * self.batch_sampler.k
        for b, batch in enumerate(self.batch_sampler, start=self.batch_sampler.start_batch):
            if self.world_size == 1:
                yield [(i, batch_seed(self.seed, self.epoch, b)) for i in batch]
                continue
            seed = batch_seed(self.seed, self.epoch, b, self.rank)
            yield [(i, seed) for i in batch[self.rank * share : (self.rank + 1) * share]]
