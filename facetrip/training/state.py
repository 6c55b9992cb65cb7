"""``TrainState``: everything a training run changes as it goes, in one object.

The loop advances it, checkpoints save it, ``--resume`` loads it back. Its position
(``epoch``, ``batch``, ``step``) says where the run is: ``batch`` batches of ``epoch`` are done,
``step`` optimiser steps in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from facetrip.model import EmbeddingNet


@dataclass
class TrainState:
    """The model, its optimiser, schedule and loss scaler, and the run's position."""

    model: EmbeddingNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None  #: fp16 only
    epoch: int = 0  #: the epoch in progress (0-based), or the next one at an epoch end
    batch: int = 0  #: batches of ``epoch`` already trained on
    step: int = 0  #: optimiser steps so far, in all epochs
    best_accuracy: float | None = None  #: best validation accuracy so far
    best_epoch: int | None = None  #: the epoch (0-based) that reached it

    def state_dict(self) -> dict:
        """Plain tensors and numbers (``torch.load(weights_only=True)`` reads them back)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved.

        Call it after the scheduler was built: building one resets the learning rate, loading
        the optimiser restores it.
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = state["epoch"], state.get("batch", 0), state["step"]
        self.best_accuracy, self.best_epoch = state.get("best_accuracy"), state.get("best_epoch")
