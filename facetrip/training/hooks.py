"""What a training run tells its caller: :class:`TrainHooks` (one object instead of a
callback per event) and :class:`ResumeInfo`. Free of torch, so the command line can import it
without paying for torch before it needs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from facetrip.training.build import TrainData
    from facetrip.training.loop import StepLog


@dataclass
class ResumeInfo:
    """What ``--resume`` started from (for the CLI to tell the user)."""

    checkpoint: Path
    epoch: int  #: 0-based epoch it continues
    batch: int  #: batches of that epoch already done
    step: int
    changed: list[str]  #: config keys that differ from the saved run (allowed or forced)
    skipped: list[str]  #: newer checkpoints that could not be read
    schedule: str = ""  #: '' or how the learning rate continues when train.epochs changed


class TrainHooks:
    """What a caller hears of a run: override the methods you need. All but
    :meth:`should_stop` are called on rank 0 only; :meth:`should_stop` on every rank, after
    every step (a stop asked on any rank stops all after the same step)."""

    def resumed(self, info: ResumeInfo) -> None:
        """The run continues from ``info.checkpoint``."""

    def started(self, data: TrainData, device: torch.device) -> None:
        """The data is loaded and the model built; the first step comes next."""

    def step(self, log: StepLog) -> None:
        """One optimisation step was taken (or skipped)."""

    def epoch_end(self, epoch: int, val: dict | None) -> None:
        """Epoch ``epoch`` (0-based) ended, validated (``val``, or None) and checkpointed."""

    def bins_scored(self, epoch: int, bins: dict[str, dict]) -> None:
        """The ``train.val_bins`` sets were scored after epoch ``epoch``: ``{name: metrics}``."""

    def should_stop(self) -> bool:
        """True to stop after this step (a checkpoint is written first)."""
        return False
