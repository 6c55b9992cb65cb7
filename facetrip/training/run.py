"""The run directory: what one training run leaves on disk, and the one owner of its formats.

::

    RUN/config.yaml     the resolved config
    RUN/metrics.jsonl   one JSON object per line: ``type: step`` rows (loss, lr, images/s,
                        mining statistics) and ``type: epoch`` rows (validation metrics)
    RUN/last.pt         checkpoint to resume from;  RUN/best.pt  best validation accuracy
    RUN/skipped.txt     files and identities the run did not use (only when there are some)

:class:`MetricsLog` writes ``metrics.jsonl`` and :func:`read_metrics` reads it back (the report
draws the training curves from it); no other module knows its schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from facetrip.data.index import ImageFolderIndex
from facetrip.io import atomic_write

METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class RunDir:
    """The paths of a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_NAME

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.txt"

    def holds_run(self) -> bool:
        """True when a run has already written a checkpoint here."""
        return self.last.exists()


class MetricsLog:
    """Appends rows to ``metrics.jsonl``; use as a context manager.

    Step rows are ``{"type": "step", "epoch", "step", "loss", "lr", "images_per_s", **stats}``;
    epoch rows ``{"type": "epoch", "epoch", "step", "val", "replaced_images"}``. Every row is
    flushed at an epoch end.
    """

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self._file: IO[str] = open(self.path, "a" if append else "w", encoding="utf-8")

    def step(self, epoch: int, step: int, loss: float, lr: float, images_per_s: float,
             stats: Mapping[str, float]) -> None:
        self._write({"type": "step", "epoch": epoch, "step": step, "loss": loss, "lr": lr,
                     "images_per_s": images_per_s, **stats})

    def epoch(self, epoch: int, step: int, val: dict | None, replaced_images: int) -> None:
        self._write({"type": "epoch", "epoch": epoch, "step": step, "val": val,
                     "replaced_images": replaced_images})
        self._file.flush()

    def _write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RunLog:
    """``metrics.jsonl`` split into step rows and epoch rows."""

    steps: list[dict]
    epochs: list[dict]


def read_metrics(path: str | Path) -> RunLog:
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


def write_skip_report(index: ImageFolderIndex, excluded: Mapping[str, int],
                      path: str | Path) -> Path | None:
    """Write every skipped file of ``index`` and every identity in ``excluded`` (name ->
    usable images) to ``path``, tab-separated; ``None`` (and no file) if there are none."""
    if not index.skipped and not excluded:
        return None
    lines = [f"# files not used, relative to {index.root}: reason<TAB>path"]
    lines += [f"{s.reason}\t{s.path}" for s in index.skipped]
    lines += ["# identities left out of triplet batches: images<TAB>identity/"]
    lines += [f"{n} image{'s' * (n != 1)}\t{name}/" for name, n in sorted(excluded.items())]
    return atomic_write(path, "\n".join(lines) + "\n")
