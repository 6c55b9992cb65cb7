"""The learning-rate schedule: linear warm-up, then cosine decay, per step, in segments.

A run starts with one segment over all its steps. Extending (or shortening) a run with
``--resume --set train.epochs=N`` appends a segment from the resumed step to the new end, so
the schedule is stated once and followed from the very first step after the junction:

- a run that had finished its schedule (its learning rate down to ``optim.min_lr``) restarts
  warm: the new segment starts at ``optim.lr`` and decays to ``optim.min_lr`` at the new end;
- a run stopped part-way continues from the learning rate it had reached, decaying from there
  to ``optim.min_lr`` at the new end (no jump).

The segments are saved in every checkpoint, so a later resume rebuilds the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Segment:
    """Steps ``[start, end)``: ``warmup`` steps rising linearly to ``peak`` (a multiple of
    ``optim.lr``), then a cosine decay from ``peak`` to the schedule's minimum at ``end``."""

    start: int
    end: int
    peak: float = 1.0
    warmup: int = 0

    def factor(self, step: int, min_ratio: float) -> float:
        """The multiplier of ``optim.lr`` for the step after ``step`` steps were taken."""
        i = step - self.start
        if i < self.warmup:
            return self.peak * ((i + 1) / self.warmup)
        progress = min(1.0, (i - self.warmup) / max(1, self.end - self.start - self.warmup))
        return min_ratio + (self.peak - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """The whole run's schedule: its segments in order and the minimum (a multiple of
    ``optim.lr``). Called with a step count, it gives LambdaLR's multiplier."""

    segments: tuple[Segment, ...]
    min_ratio: float = 0.0

    @classmethod
    def cosine(cls, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> LRSchedule:
        """One segment over the whole run: warm-up to 1, then cosine decay to ``min_ratio``."""
        return cls((Segment(0, total_steps, 1.0, warmup_steps),), min_ratio)

    @property
    def end(self) -> int:
        """The step at which the schedule reaches its minimum."""
        return self.segments[-1].end

    def __call__(self, step: int) -> float:
        for segment in reversed(self.segments):
            if step >= segment.start:
                return segment.factor(step, self.min_ratio)
        return self.segments[0].factor(step, self.min_ratio)

    def extended(self, at_step: int, end: int) -> LRSchedule:
        """This schedule with a new last segment from ``at_step`` (the resumed position) to
        ``end``: a warm restart at 1 when the schedule had finished, else a decay from the
        multiplier it had reached. Unchanged when ``end`` is the current end or no step is
        left to train."""
        if end == self.end or at_step >= end:
            return self
        peak = 1.0 if at_step >= self.end else self(at_step)
        kept = tuple(s for s in self.segments if s.start < at_step)
        return LRSchedule((*kept, Segment(at_step, end, peak, 0)), self.min_ratio)

    def to_dict(self) -> dict:
        """Plain numbers, for the checkpoint."""
        return {"min_ratio": self.min_ratio, "segments": [asdict(s) for s in self.segments]}

    @classmethod
    def from_dict(cls, state: dict) -> LRSchedule:
        return cls(tuple(Segment(**s) for s in state["segments"]), state["min_ratio"])

    def describe(self, lr: float) -> str:
        """The last segment in words, e.g. for the console when a resumed run was extended."""
        s = self.segments[-1]
        restarted = len(self.segments) > 1 and self.segments[-2].end <= s.start
        start = "restarts at" if restarted else "continues from"
        return (f"the learning rate {start} {lr * s.peak:.3g} at step {s.start} and decays "
                f"(cosine) to {lr * self.min_ratio:.3g} at step {s.end}")


def set_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the optimiser's learning rates at the schedule's value for ``step`` (after a
    resume that changed the schedule: the loaded optimiser holds the old schedule's rate)."""
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                   scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
