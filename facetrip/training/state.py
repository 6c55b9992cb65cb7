"""``TrainState``: everything a training run changes as it goes, in one object.

The loop advances it, checkpoints save it, ``--resume`` loads it back. Its position
(``epoch``, ``batch``, ``step``) says where the run is: ``batch`` batches of ``epoch`` are done,
``step`` optimiser steps in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from facetrip.model import EmbeddingNet
from facetrip.training.schedule import LRSchedule

#: the training-only parts of a state beside the network, saved for a resume but never in
#: ``best.pt``: the identity head, the cross-batch memory, the adaptive margin, the EMA
TRAINING_PARTS = ("classifier", "memory", "margin", "ema")


@dataclass
class TrainState:
    """The model, its optimiser, schedule and loss scaler, and the run's position."""

    model: nn.Module  #: the network, or the DistributedDataParallel wrapping it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None  #: fp16 only
    epoch: int = 0  #: the epoch in progress (0-based), or the next one at an epoch end
    batch: int = 0  #: batches of ``epoch`` already trained on
    step: int = 0  #: optimiser steps so far, in all epochs
    best_accuracy: float | None = None  #: best validation accuracy so far
    best_epoch: int | None = None  #: the epoch (0-based) that reached it
    bad_steps: int = 0  #: steps in a row skipped for a non-finite loss or gradient
    skipped_steps: int = 0  #: steps skipped so far in the run, for any reason above
    schedule: LRSchedule | None = None  #: what ``scheduler`` follows (saved for a resume)
    #: the identity-classification head (``loss.classifier``; training only, not the network)
    classifier: nn.Module | None = None
    memory: nn.Module | None = None  #: the cross-batch memory (``loss.memory``; training only)
    margin: nn.Module | None = None  #: the adaptive margin (``loss.margin_target``)
    #: the moving average of the weights (``train.ema``; a torch AveragedModel of the network)
    ema: nn.Module | None = None

    @property
    def evaluated(self) -> EmbeddingNet:
        """The network that validation, ``best.pt`` and exports use: the weights' moving
        average when ``train.ema`` is on, else the network itself."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def net(self) -> EmbeddingNet:
        """The network itself (``model`` may be wrapped in DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    def state_dict(self) -> dict:
        """Plain tensors and numbers (``torch.load(weights_only=True)`` reads them back)."""
        state = {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "bad_steps": self.bad_steps,
            "skipped_steps": self.skipped_steps,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.schedule is not None:
            state["schedule"] = self.schedule.to_dict()
        for name in TRAINING_PARTS:
            if getattr(self, name) is not None:
                state[name] = getattr(self, name).state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved.

        Call it after the scheduler was built: building one resets the learning rate, loading
        the optimiser restores it.
        """
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        for name in TRAINING_PARTS:
            if getattr(self, name) is not None and name in state:
                getattr(self, name).load_state_dict(state[name])
        self.epoch, self.batch, self.step = state["epoch"], state.get("batch", 0), state["step"]
        self.best_accuracy, self.best_epoch = state.get("best_accuracy"), state.get("best_epoch")
        self.bad_steps = state.get("bad_steps", 0)
        self.skipped_steps = state.get("skipped_steps", 0)
