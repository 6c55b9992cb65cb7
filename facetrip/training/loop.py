"""The training loop and per-epoch validation. They receive built objects (a
:class:`~facetrip.training.state.TrainState`, the loss, loaders), never a config, and report
through callbacks instead of printing."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from facetrip.metrics.embedding import embed_all
from facetrip.metrics.pairs import PairIndexList, pair_distances
from facetrip.metrics.verification import verification_metrics
from facetrip.training.state import TrainState

log = logging.getLogger(__name__)


@dataclass
class StepLog:
    """What one optimisation step reports (one row of ``metrics.jsonl``)."""

    epoch: int
    step: int  #: global step, counted from 1
    batch: int  #: batch index within the epoch, from 0
    batches: int  #: batches in this epoch
    loss: float | None  #: None for a skipped step (non-finite loss or gradient)
    lr: float
    images_per_s: float
    stats: dict[str, float]  #: mining diagnostics from the loss
    images: int = 0  #: images in this batch



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



@dataclass(frozen=True)
class StepOptions:
    """How every step of a run is executed (fixed for the run)."""

    device: torch.device
    channels_last: bool = False
    grad_clip: float | None = None  #: max gradient norm
    autocast_dtype: torch.dtype | None = None  #: bf16 / fp16 autocast of the forward pass
    #: runs on ``device`` before the model, e.g. uint8 -> normalised float32 ``(B, 3, H, W)``
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: ``loss.neck``: the model returns ``(B, 2D)``, before and after its head's BatchNorm
    neck: bool = False


class TrainingDiverged(Exception):
    """More than ``max_bad_steps`` steps in a row had a non-finite loss or gradient."""


def _all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """True when every given tensor is finite (one fused norm over all of them)."""
    present = [t for t in tensors if t is not None]
    if not present:
        return True
    norms = torch._foreach_norm(present)
    return bool(torch.isfinite(torch.stack(norms)).all())


def train_one_epoch(
    state: TrainState,
    loss_fn: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    options: StepOptions,
    collapse: CollapseDetector | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_bad_steps: int | None = None,
) -> bool:
    """Train ``state`` on the rest of epoch ``state.epoch``: one step per batch of ``loader``.

    ``loader`` yields the epoch's PK batches ``(images (B, 3, H, W), labels (B,))`` from batch
    ``state.batch`` on (a resumed epoch's loader starts there); ``len(loader)`` is the
    epoch's whole length. ``loss_fn(embeddings, labels)`` returns ``(loss, stats)``. With an
    fp16 ``state.scaler`` the loss is scaled (and the scaler skips steps whose scaled
    gradients overflow, as it always does).

    A step whose loss or (unscaled) gradient is not finite is skipped *before* the update: no
    parameter or optimiser state changes, the schedule still advances, and its row says
    ``skipped``. Each step advances ``state.batch`` and ``state.step``. ``should_stop()`` is
    asked after every step; when it is true the epoch ends early. Returns True when the
    epoch was finished, False when it was stopped.

    Raises:
        TrainingDiverged: more than ``max_bad_steps`` skipped steps in a row (``None``: never),
            or weights that are not finite after an update (nothing is saved after it).
    """
    state.model.train()
    batches = len(loader) if hasattr(loader, "__len__") else -1
    tic = time.perf_counter()
    for images, labels in loader:
        lr = state.optimizer.param_groups[0]["lr"]
        loss_value, stats = train_step(state, loss_fn, images, labels, options)
        finite = loss_value is not None
        batch = state.batch
        state.batch += 1
        state.step += 1
        if collapse is not None and finite and collapse.update(stats):
            log.warning(COLLAPSE_MESSAGE.format(n=collapse.patience))
        toc = time.perf_counter()
        ips = len(labels) / max(toc - tic, 1e-9)
        tic = toc
        if on_step is not None:
            on_step(StepLog(state.epoch, state.step, batch, batches, loss_value, lr, ips,
                            dict(stats) if finite else {"skipped": 1.0}, len(labels)))
        if max_bad_steps is not None and state.bad_steps > max_bad_steps:
            raise TrainingDiverged(
                f"the loss or its gradient was not finite in {state.bad_steps} steps in a row "
                f"(last at step {state.step}); lower optim.lr or set train.grad_clip"
            )
        if should_stop is not None and should_stop():
            return state.batch >= batches
    return True


def train_step(
    state: TrainState, loss_fn: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    options: StepOptions,
) -> tuple[float | None, dict[str, float]]:
    """One optimisation step on ``images (B, 3, H, W)``, ``labels (B,)``: forward, loss,
    backward, update, schedule. Returns ``(loss, mining stats)``, the loss ``None`` for a
    step skipped before the update (non-finite loss or gradient; ``state.bad_steps`` and
    ``state.skipped_steps`` count it).

    Raises:
        TrainingDiverged: the update made a weight non-finite.
    """
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    device, dtype = options.device, options.autocast_dtype
    images = images.to(device, non_blocking=True)
    if options.batch_transform is not None:
        images = options.batch_transform(images)
    if options.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = labels.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        embeddings = model(images, neck=True) if options.neck else model(images)
    loss, stats = loss_fn(embeddings.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss_value = float(loss.detach())
    finite = math.isfinite(loss_value)
    if finite:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        # with a scaler, overflowing fp16 gradients are the scaler's to skip and re-scale
        finite = scaler is not None or _all_finite(p.grad for p in model.parameters())
    if finite:
        _update(state, options.grad_clip)
        state.bad_steps = 0
    else:
        optimizer.zero_grad(set_to_none=True)
        state.bad_steps += 1
        state.skipped_steps += 1
    state.scheduler.step()
    return (loss_value if finite else None), stats


def _update(state: TrainState, grad_clip: float | None) -> None:
    """Clip, step the optimiser (through the scaler with fp16), and check the weights."""
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if state.ema is not None:
        state.ema.update_parameters(state.net)
    if not _all_finite(model.parameters()):
        raise TrainingDiverged(
            f"the weights are not finite after the update of step {state.step + 1} (learning "
            f"rate {optimizer.param_groups[0]['lr']:.3g}): the run diverged; lower optim.lr or "
            "set train.grad_clip")


def validate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    pairs: PairIndexList,
    metric: str,
    options: StepOptions,
) -> dict:
    """Verification metrics of ``model`` on ``pairs`` of the validation images (no ROC curve).

    ``loader`` yields ``(uint8 images (B, 3, S, S), labels (B,))``; ``options`` says where and
    how the model runs (device, channels-last, the uint8 -> float transform).
    """
    emb, _ = embed_all(model, loader, options.device, options.channels_last,
                       options.batch_transform)
    result = verification_metrics(pair_distances(emb, pairs, metric), pairs.issame,
                                  folds=pairs.fold)
    return {k: v for k, v in result.items() if k != "roc"}
