"""``metrics.jsonl``, the one writer and reader of its rows: :class:`MetricsLog` appends them
(and mirrors them to TensorBoard), :func:`truncate_metrics` cuts them back to a checkpoint on
resume, :func:`read_run_log` reads them back (the report draws the training curves from it).
No other module knows the schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from facetrip.errors import UserError
from facetrip.io import atomic_write


class TensorBoardScalars:
    """The rows of ``metrics.jsonl`` mirrored as TensorBoard scalars (``train.tensorboard``):
    ``train/{loss, lr, images_per_s, active_fraction, mean_d_ap, mean_d_an, margin}`` per
    step and ``val/{accuracy, auc, eer}`` per epoch, against the global step. A resumed run
    passes its ``purge_step``: events the killed run logged after its checkpoint are dropped, as the
    metrics rows are.

    Raises:
        UserError: the ``tensorboard`` package is not installed.
    """

    STEP_KEYS = ("loss", "lr", "images_per_s", "active_fraction", "mean_d_ap", "mean_d_an",
                 "margin")
    VAL_KEYS = ("accuracy", "auc", "eer")

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.tensorboard needs the tensorboard package: "
                            "pip install 'facetrip[tensorboard]'") from None
        self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, row: Mapping[str, Any]) -> None:
        """Log the numbers of one metrics row."""
        source, keys, prefix = ((row, self.STEP_KEYS, "train") if row.get("type") == "step"
                                else (row.get("val") or {}, self.VAL_KEYS, "val"))
        for key in keys:
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{key}", value, row["step"])
        for name, scores in (row.get("bins") or {}).items():
            for key in self.VAL_KEYS:
                if isinstance(scores.get(key), float):
                    self._writer.add_scalar(f"bins/{name}/{key}", scores[key], row["step"])

    def close(self) -> None:
        self._writer.close()


class MetricsLog:
    """Appends rows to ``metrics.jsonl``; use as a context manager.

    Step rows are ``{"type": "step", "epoch", "step", "loss", "lr", "images_per_s", **stats}``;
    epoch rows ``{"type": "epoch", "epoch", "step", "val", "replaced_images", "skipped_steps"}``
    (``skipped_steps``: in the run so far).
    A skipped step (non-finite loss or gradient) has ``loss: null`` and ``skipped: 1``. Each row
    is flushed as it is written (so ``tail -f`` follows the run), and before a checkpoint.
    """

    def __init__(self, path: str | Path, append: bool = False, enabled: bool = True,
                 tensorboard: TensorBoardScalars | None = None) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._tensorboard = tensorboard
        if not enabled:  # another rank's: it writes nothing
            return
        torn = append and _ends_mid_line(self.path)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")
        if torn:  # a run killed mid-row: the reader skips that line, not the next row too
            self._file.write("\n")

    def step(self, epoch: int, step: int, loss: float | None, lr: float, images_per_s: float,
             stats: Mapping[str, float]) -> None:
        self._write({"type": "step", "epoch": epoch, "step": step, "loss": loss, "lr": lr,
                     "images_per_s": images_per_s, **stats})
        self.flush()  # a row a step is cheap beside the step; `tail -f` sees each at once

    def epoch(self, epoch: int, step: int, val: dict | None, replaced_images: int,
              skipped_steps: int = 0, bins: dict[str, dict] | None = None) -> None:
        row = {"type": "epoch", "epoch": epoch, "step": step, "val": val,
               "replaced_images": replaced_images, "skipped_steps": skipped_steps}
        if bins is not None:
            row["bins"] = bins
        self._write(row)
        self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _write(self, row: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            if self._tensorboard is not None:
                self._tensorboard.write(row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_mid_line(path: Path) -> bool:
    """True when ``path`` exists, is not empty and its last byte is not a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def truncate_metrics(path: str | Path, step: int, epochs_done: int) -> int:
    """Cut ``metrics.jsonl`` back to what a checkpoint at global ``step``, with
    ``epochs_done`` epochs finished, had seen: the rows before the first step row past
    ``step`` or epoch row of an unfinished epoch (and no torn line). Rewritten atomically;
    returns the number of rows removed. A missing file is left missing."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, total = [], 0
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    for line in lines:
        total += 1
        try:
            row = json.loads(line)
        except ValueError:
            break  # a torn row: the run died writing it
        if not isinstance(row, dict):
            break
        if (row.get("type") == "step" and row.get("step", 0) > step) or (
                row.get("type") == "epoch" and row.get("epoch", 0) >= epochs_done):
            break
        kept.append(line)
    if len(kept) < total:
        atomic_write(path, "".join(line + "\n" for line in kept))
    return total - len(kept)


@dataclass
class RunLog:
    """``metrics.jsonl`` split into step rows and epoch rows."""

    steps: list[dict]
    epochs: list[dict]


def read_run_log(path: str | Path) -> RunLog:
    """Parse ``metrics.jsonl``, skipping unreadable lines (a run may still be writing it).

    Raises:
        OSError: the file cannot be read.
    """
    steps, epochs = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            if row.get("type") == "step":
                steps.append(row)
            elif row.get("type") == "epoch":
                epochs.append(row)
    return RunLog(steps, epochs)


