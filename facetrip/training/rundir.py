"""The run directory: what one training run leaves on disk, by name.

::

    RUN/config.yaml     the resolved config
    RUN/metrics.jsonl   the step and epoch rows (:mod:`facetrip.training.metrics_log`)
    RUN/checkpoints/    step-<step>.pt, the newest train.keep_checkpoints checkpoints
    RUN/last.pt         the newest of them (a hard link);  RUN/best.pt  best validation accuracy
    RUN/skipped.txt     files and identities the run did not use (only when there are some)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.txt"

    def holds_run(self) -> bool:
        """True when a run has already written something here."""
        return any(p.exists() for p in (self.last, self.checkpoints, self.metrics, self.best))

    def clear(self) -> None:
        """Remove what a run wrote here (``--overwrite``); other files are left alone."""
        for path in (self.last, self.best, self.metrics, self.config, self.skipped):
            path.unlink(missing_ok=True)
        for path in self.checkpoints.glob("step-*.pt"):
            path.unlink()


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
