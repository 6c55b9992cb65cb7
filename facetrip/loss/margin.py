"""A margin that grows as the share of active triplets falls (``loss.margin_target``).

Late in a run, a fixed margin leaves fewer and fewer triplets that violate it (with batch-all
mining on LFW, 54% in the first epoch, about 1% by the last): the loss then averages a handful
of terms, and the network stops learning. :class:`AdaptiveMargin` holds the share of active
triplets near a target instead: after every step the margin is multiplied by

    ``exp(RATE * (target - active) / target)``,  never going below ``floor`` (``loss.margin``),

so it grows while fewer than ``target`` of the candidate terms are active and shrinks back
towards ``floor`` while more are. With ``RATE = 0.01`` it can at most double in about 70 steps:
slow beside a step, fast beside the epochs over which the active share falls. ``active`` is the
loss's ``active_fraction`` (with several processes, of the global batch, so every rank holds
the same margin). The margin is a float64 buffer: checkpoints hold it and a resumed run
continues with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: the most the log of the margin moves in one step (with no active term at all)
RATE = 0.01


class AdaptiveMargin(nn.Module):
    """The margin of the next step (:attr:`value`) and its update from a step's active share."""

    def __init__(self, floor: float, target: float) -> None:
        super().__init__()
        if floor <= 0:
            raise ValueError(f"an adaptive margin needs a starting margin > 0, got {floor}")
        if not 0 < target < 1:
            raise ValueError(f"the target active share must be in (0, 1), got {target}")
        self.floor, self.target = float(floor), float(target)
        self.register_buffer("margin", torch.tensor(self.floor, dtype=torch.float64))

    @property
    def value(self) -> float:
        """The margin the next step uses."""
        return float(self.margin)

    @torch.no_grad()
    def update(self, active: float) -> None:
        """After a step whose candidate terms were ``active`` (a share in [0, 1]) active."""
        grown = self.value * math.exp(RATE * (self.target - active) / self.target)
        self.margin.fill_(max(self.floor, grown))

    def extra_repr(self) -> str:
        return f"floor={self.floor}, target={self.target}, margin={self.value:.4f}"


class AdaptiveMarginLoss(nn.Module):
    """``forward(embeddings (B, D), labels (B,)) -> (loss, stats)``: ``loss`` (any triplet
    loss built on ``triplet``, e.g. the memory's or the distributed one) at the margin of
    ``margin``, which then follows the step's ``active_fraction``. ``stats`` adds ``margin``
    (the one this step used)."""

    def __init__(self, loss: nn.Module, triplet: nn.Module, margin: AdaptiveMargin) -> None:
        super().__init__()
        self.loss, self.triplet, self.adaptive = loss, triplet, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        used = self.adaptive.value
        self.triplet.margin = used
        loss, stats = self.loss(embeddings, labels)
        if stats.get("n_candidates", 0.0) > 0:  # no candidate term: no evidence either way
            self.adaptive.update(float(stats["active_fraction"]))
        return loss, {**stats, "margin": used}
