"""The training and inference loops. They receive built objects (model, loss, optimiser,
loaders), never a config, and report through callbacks instead of printing."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class StepLog:
    """What one optimisation step reports (one row of ``metrics.jsonl``)."""

    epoch: int
    step: int  #: global step, counted from 1
    batch: int  #: batch index within the epoch, from 0
    batches: int  #: batches in this epoch
    loss: float
    lr: float
    images_per_s: float
    stats: dict[str, float]  #: mining diagnostics from the loss
    images: int = 0  #: images in this batch


def cosine_warmup_lambda(
    total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """LR multiplier for LambdaLR: linear warm-up to 1, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class CollapseDetector:
    """Flags embedding collapse: ``mean_pairwise_distance`` (or ``mean_d_an``) below
    ``threshold`` for ``patience`` consecutive steps. :meth:`update` is True exactly once."""

    def __init__(self, patience: int = 50, threshold: float = 1e-3) -> None:
        self.patience, self.threshold = patience, threshold
        self.run, self.fired = 0, False

    def update(self, stats: dict[str, float]) -> bool:
        if stats.get("n_triplets", 1.0) == 0:  # no valid triplet: all stats are 0, no evidence
            return False
        spread = min(stats.get("mean_pairwise_distance", 1.0), stats.get("mean_d_an", 1.0))
        self.run = self.run + 1 if spread < self.threshold else 0
        if self.run >= self.patience and not self.fired:
            self.fired = True
            return True
        return False


COLLAPSE_MESSAGE = (
    "embeddings have collapsed: pairwise distances stayed near zero for {n} steps. Likely "
    "causes: learning rate too high (lower optim.lr), hardest-negative mining from the start "
    "(try loss.mining=semihard), or a margin too large for the distance."
)


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    epoch: int,
    start_step: int = 0,
    channels_last: bool = False,
    grad_clip: float | None = None,
    collapse: CollapseDetector | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """One pass over ``loader`` (PK batches of ``(images (B,3,H,W), labels (B,))``).

    ``batch_transform`` runs on ``device`` before the model, e.g. uint8 -> augmented and
    normalised float32 (B,3,H,W). ``autocast_dtype`` (bf16/fp16) runs the forward pass under
    autocast; fp16 needs a ``scaler`` (GradScaler). ``loss_fn(embeddings, labels)`` must
    return ``(loss, stats)``. Returns the global step count after the epoch.
    """
    model.train()
    step = start_step
    batches = len(loader) if hasattr(loader, "__len__") else -1
    tic = time.perf_counter()
    for batch, (images, labels) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        if batch_transform is not None:
            images = batch_transform(images)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            embeddings = model(images)
        loss, stats = loss_fn(embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        step += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"loss became {loss_value} at step {step}; lower optim.lr or set train.grad_clip"
            )
        if collapse is not None and collapse.update(stats):
            log.warning(COLLAPSE_MESSAGE.format(n=collapse.patience))
        toc = time.perf_counter()
        ips = len(labels) / max(toc - tic, 1e-9)
        tic = toc
        if on_step is not None:
            on_step(StepLog(epoch, step, batch, batches, loss_value, lr, ips, dict(stats),
                            len(labels)))
    return step


@torch.no_grad()
def embed_batches(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, ...]],
    device: torch.device,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, tuple]]:
    """Stream ``(embeddings (B, D) float32 on CPU, rest of the batch)`` for each batch.

    The model runs in eval mode; the first element of each batch is the image tensor.
    """
    model.eval()
    for images, *rest in loader:
        yield embed_images(model, images, device, channels_last, batch_transform), tuple(rest)


@torch.no_grad()
def embed_images(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, D)`` float32 embeddings on CPU (model must be in eval mode).

    ``batch_transform`` runs on ``device`` first (e.g. uint8 -> normalised float32)."""
    images = images.to(device, non_blocking=True)
    if batch_transform is not None:
        images = batch_transform(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return model(images).float().cpu()


def embed_all(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed a whole (small) dataset: ``(embeddings (N, D) float32, labels (N,) int64)``."""
    embs, labels = [], []
    for emb, (lab,) in embed_batches(model, loader, device, channels_last, batch_transform):
        embs.append(emb.numpy())
        labels.append(np.asarray(lab))
    return np.concatenate(embs), np.concatenate(labels).astype(np.int64)
