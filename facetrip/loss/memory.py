"""Cross-batch memory (XBM, Wang et al. 2020; ``loss.memory``): mine each batch's anchors
against the batch *and* the last ``size`` embeddings of earlier batches, so mining stays
informative once a batch runs out of hard triplets.

The memory is a ring of detached embeddings ``(size, D)`` and their labels, filled after each
step with the step's batch (with several processes: the all-gathered global batch, so every
rank holds the same memory). The loss is the reference-set triplet loss
(:mod:`facetrip.loss.triplet`) with references ``cat(batch, memory)`` and the batch at rows
``0..B-1`` (each anchor is never paired with itself): gradients flow into the batch's
embeddings, wherever they appear, and never into the memory. Until ``start`` steps have
passed, the loss is the plain in-batch loss. The ring, its position and the step count are
buffers, so checkpoints hold them and a resumed run continues with the same memory.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossBatchMemory(nn.Module):
    """The ring of past embeddings: :meth:`references` for a batch, :meth:`push` after it."""

    def __init__(self, size: int, dim: int, start: int = 0) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"memory size must be >= 1, got {size}")
        self.start = int(start)
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("next", torch.zeros((), dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    @property
    def active(self) -> bool:
        """True once ``start`` steps have passed (and something is stored)."""
        return int(self.calls) >= self.start and int(self.filled) > 0

    def references(self, embeddings: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(cat(embeddings, memory) (B + M, D), their labels (B + M,), M)``: the batch
        first, then the M stored entries; just the batch (M = 0) until :attr:`active`."""
        n = int(self.filled) if self.active else 0
        memory = self.embeddings[:n].to(embeddings.dtype)
        return (torch.cat([embeddings, memory]),
                torch.cat([labels.to(self.labels.device), self.labels[:n]]), n)

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Store a batch ``(B, D)`` (detached), overwriting the oldest entries; count a step."""
        size = self.embeddings.shape[0]
        emb, lab = embeddings.detach()[-size:], labels.detach()[-size:]
        rows = (int(self.next) + torch.arange(len(emb), device=emb.device)) % size
        self.embeddings[rows.to(self.embeddings.device)] = emb.to(self.embeddings)
        self.labels[rows.to(self.labels.device)] = lab.to(self.labels)
        self.next.fill_((int(self.next) + len(emb)) % size)
        self.filled.fill_(min(size, int(self.filled) + len(emb)))
        self.calls.add_(1)


class MemoryTripletLoss(nn.Module):
    """``forward(embeddings (B, D), labels (B,)) -> (loss, stats)``: ``loss`` (a
    :class:`~facetrip.loss.triplet.TripletLoss`) with the memory's references once it is
    active, the plain in-batch loss before; then the batch joins the memory. ``stats`` adds
    ``memory_size`` (the stored entries used)."""

    def __init__(self, loss: nn.Module, memory: CrossBatchMemory) -> None:
        super().__init__()
        self.loss, self.memory = loss, memory

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        refs, ref_labels, used = self.memory.references(embeddings, labels)
        if used:
            loss, stats = self.loss(embeddings, labels, ref_embeddings=refs,
                                    ref_labels=ref_labels, ref_self_index=0)
        else:
            loss, stats = self.loss(embeddings, labels)
        self.memory.push(embeddings, labels.to(embeddings.device))
        return loss, {**stats, "memory_size": float(used)}
