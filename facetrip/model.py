"""Embedding network: torchvision ResNet trunk + linear head, L2-normalised output."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from facetrip.errors import UserError

ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (stored in checkpoints and export sidecars)."""

    arch: str = "resnet18"
    stem: str = "imagenet"
    embedding_dim: int = 128
    head_bn: bool = True
    pool_grid: int = 1

    def to_dict(self) -> dict:
        """The fields as plain values; ``pool_grid`` only when it is not 1, so the specs (and
        fingerprints) of models without it stay as they were."""
        d = asdict(self)
        if self.pool_grid == 1:
            del d["pool_grid"]
        return d


class EmbeddingNet(nn.Module):
    """``(B, 3, H, W)`` normalised images -> ``(B, embedding_dim)`` unit-norm embeddings.

    The trunk is a torchvision ResNet trained from scratch (no weights are downloaded). The
    ``small`` stem replaces the 7x7/2 convolution and max-pool with one 3x3/1 convolution, so
    64 px inputs keep enough spatial resolution; ``imagenet`` keeps the usual /4 stem. The
    trunk's last feature map ``(B, C, h, w)`` is average-pooled to a ``pool_grid x pool_grid``
    grid and flattened (``C * pool_grid**2`` features): 1 is the usual global average pool; 2
    keeps where on the face each feature was seen, as face networks' flattening heads do.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.arch not in ARCHS:
            raise ValueError(f"unknown arch {spec.arch!r}; expected one of {ARCHS}")
        if spec.stem not in ("imagenet", "small"):
            raise ValueError(f"unknown stem {spec.stem!r}; expected 'imagenet' or 'small'")
        if spec.pool_grid < 1:
            raise ValueError(f"pool_grid must be at least 1, not {spec.pool_grid}")
        self.spec = spec
        trunk = getattr(torchvision.models, spec.arch)(weights=None)
        if spec.stem == "small":
            trunk.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            trunk.maxpool = nn.Identity()
        features = trunk.fc.in_features * spec.pool_grid**2
        trunk.avgpool = nn.AdaptiveAvgPool2d(spec.pool_grid)
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.embed = nn.Linear(features, spec.embedding_dim, bias=not spec.head_bn)
        self.bn = nn.BatchNorm1d(spec.embedding_dim) if spec.head_bn else nn.Identity()

    def forward(self, images: torch.Tensor, neck: bool = False) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, D)`` float32 embeddings of unit L2 norm.

        ``neck=True`` (training with ``loss.neck``) returns ``(B, 2D)``: the head's output
        before its BatchNorm, L2-normalised, then the embedding as above. One tensor, not a
        pair, so the module stays scriptable with one return type.
        """
        pre = self.embed(self.trunk(images))
        out = nn.functional.normalize(self.bn(pre).float(), dim=1)
        if neck:
            return torch.cat([nn.functional.normalize(pre.float(), dim=1), out], dim=1)
        return out


def load_trunk_weights(model: EmbeddingNet, path: str | Path) -> tuple[list[str], list[str]]:
    """Load a local torchvision-style ResNet state dict into the trunk (the ``fc`` is ignored).

    Returns ``(missing, unexpected)`` key lists. Raises UserError when the file is absent or
    holds no usable weights.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.trunk.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"{path} holds no weights matching a {model.spec.arch} trunk")
    missing, unexpected = model.trunk.load_state_dict(usable, strict=False)
    return list(missing), [k for k in state if k not in usable] + list(unexpected)
