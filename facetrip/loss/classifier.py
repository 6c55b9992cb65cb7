"""An identity-classification head beside the triplet loss (``loss.classifier``).

A normalised linear layer over the training identities: ``cos = normalize(x) normalize(W)^T``
``(B, C)``, logits ``s * cos`` with a margin on each row's own identity:

- ``softmax`` (NormFace): no margin, ``s cos``;
- ``cosface`` (CosFace / AM-softmax): ``s (cos - m)`` for the target;
- ``arcface``: ``s cos(theta + m)`` for the target, ``theta = acos(cos)`` (``theta + m``
  capped at pi, so the target logit never rises again past it).

The loss is the mean cross-entropy. Used in training only: checkpoints keep the head for an
exact resume, while ``best.pt``, exports and every deploy command see the network alone. It
is the identity loss of person re-identification's strong baseline (Luo et al. 2019) and of
insightface, beside the triplet loss instead of replacing it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

CLASSIFIERS = ("softmax", "cosface", "arcface")
DEFAULT_MARGINS = {"softmax": 0.0, "cosface": 0.35, "arcface": 0.5}
_EPS = 1e-7  # keeps acos's gradient finite at cos = +-1


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, kind: str, scale: float,
                  margin: float) -> torch.Tensor:
    """``(B, C)`` cosines and ``(B,)`` labels -> ``(B, C)`` logits with the margin of ``kind``
    on each row's label."""
    target = cos.gather(1, labels[:, None])
    if kind == "cosface":
        target = target - margin
    elif kind == "arcface":
        theta = torch.acos(target.clamp(-1 + _EPS, 1 - _EPS))
        target = torch.cos(torch.clamp(theta + margin, max=math.pi))
    elif kind != "softmax":
        raise ValueError(f"unknown classifier {kind!r}; expected one of {CLASSIFIERS}")
    return scale * cos.scatter(1, labels[:, None], target)


class IdentityClassifier(nn.Module):
    """``forward(embeddings (B, D), labels (B,)) -> (loss, stats)``: the cross-entropy of
    :func:`margin_logits` over ``classes`` identities; ``stats``: ``cls_loss`` and
    ``cls_accuracy`` (the share of rows whose nearest class centre is their own)."""

    def __init__(self, dim: int, classes: int, kind: str = "softmax", scale: float = 30.0,
                 margin: float | None = None) -> None:
        super().__init__()
        if kind not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {kind!r}; expected one of {CLASSIFIERS}")
        self.kind, self.scale = kind, float(scale)
        self.margin = DEFAULT_MARGINS[kind] if margin is None else float(margin)
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B, C)`` cosine of each embedding with each class centre."""
        x = F.normalize(embeddings.to(self.weight.dtype), dim=1)
        return F.linear(x, F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        labels = labels.to(embeddings.device)
        cos = self.cosines(embeddings)
        loss = F.cross_entropy(margin_logits(cos, labels, self.kind, self.scale, self.margin),
                               labels)
        accuracy = float((cos.detach().argmax(1) == labels).float().mean())
        return loss, {"cls_loss": float(loss.detach()), "cls_accuracy": accuracy}

    def extra_repr(self) -> str:
        return (f"classes={self.weight.shape[0]}, dim={self.weight.shape[1]}, kind={self.kind}, "
                f"scale={self.scale}, margin={self.margin}")


class JointLoss(nn.Module):
    """``triplet(embeddings, labels) + weight * classifier(embeddings, labels)``, with both
    losses' statistics in one dict (``loss`` stays the triplet loss's own stats plus the
    classifier's ``cls_loss`` / ``cls_accuracy``).

    ``neck=True`` (``loss.neck``): ``embeddings`` is the ``(B, 2D)`` of
    ``EmbeddingNet(images, neck=True)``; the triplet loss gets its first half (before the
    head's BatchNorm), the classifier its second (the deployed embedding)."""

    def __init__(self, triplet: nn.Module, classifier: nn.Module, weight: float,
                 neck: bool = False) -> None:
        super().__init__()
        self.triplet, self.classifier, self.weight = triplet, classifier, float(weight)
        self.neck = neck

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        before, after = embeddings.chunk(2, dim=1) if self.neck else (embeddings, embeddings)
        triplet, stats = self.triplet(before, labels)
        identity, cls_stats = self.classifier(after, labels)
        return triplet + self.weight * identity, {**stats, **cls_stats}
