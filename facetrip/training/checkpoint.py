"""Checkpoints: written atomically, read with ``weights_only=True``, turned back into a model.

A checkpoint is a plain dict of tensors and primitives (nothing that needs pickle's code
execution): ``config`` (the resolved run config), ``model_spec``, ``model`` (state dict),
``val`` (the last validation metrics), ``version`` (facetrip's), and, for resuming, the rest
of the :class:`~facetrip.training.state.TrainState` (optimiser, scheduler, scaler, epoch,
batch, step, best accuracy, bad steps) and every random number generator's state (torch, CUDA,
numpy, python). ``best.pt`` holds the weights only.

In a run directory, :class:`Checkpoints` keeps ``checkpoints/step-<step>.pt`` (the newest
``keep``) and ``last.pt``, a hard link to the newest; ``--resume`` takes the newest readable one.
"""

from __future__ import annotations

import errno
import logging
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from facetrip.config import Config, config_from_dict, config_to_dict
from facetrip.data.transforms import Preprocessing
from facetrip.errors import UserError
from facetrip.io import atomic_link, atomic_torch_save
from facetrip.model import EmbeddingNet, ModelSpec
from facetrip.training.state import TRAINING_PARTS, TrainState
from facetrip.version import __version__

log = logging.getLogger(__name__)

RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng", *TRAINING_PARTS)
"""Keys a weights-only checkpoint (``best.pt``) leaves out."""


def rng_state() -> dict:
    """The state of every random number generator facetrip's process uses, as plain types."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "internal": list(internal), "gauss": python_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def checkpoint_dict(state: TrainState, cfg: Config, val: dict | None,
                    rng_ranks: list[dict] | None = None) -> dict:
    """The checkpoint of ``state`` in run ``cfg`` with the last validation metrics ``val``;
    ``rng_ranks``: every rank's :func:`rng_state` in a distributed run (rank 0 writes)."""
    ckpt = {
        "version": __version__,
        "config": config_to_dict(cfg),
        "model_spec": state.net.spec.to_dict(),
        # the config implies it; spelled out as the sidecars have it (alignment: the template)
        "preprocessing": Preprocessing.from_config(cfg.data).to_fields(),
        **state.state_dict(),
        "rng": rng_ranks[0] if rng_ranks else rng_state(),
        "val": val,
    }
    if rng_ranks is not None and len(rng_ranks) > 1:
        ckpt["rng_ranks"] = rng_ranks
    return ckpt


def save_checkpoint(ckpt: dict, path: str | Path, weights_only: bool = False) -> Path:
    """Write ``ckpt`` (from :func:`checkpoint_dict`) to ``path`` atomically; with
    ``weights_only`` leave out what only resuming needs.

    Raises:
        UserError: the file cannot be written (a full disk, say); any previous ``path`` is
            intact.
    """
    if weights_only:
        ckpt = {k: v for k, v in ckpt.items() if k not in RESUME_ONLY}
    try:
        return atomic_torch_save(ckpt, path)
    except OSError as exc:
        why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        intact = "the previous checkpoint is intact" if Path(path).exists() else "nothing lost"
        raise UserError(f"cannot write checkpoint {path}: {why} ({intact}); free space and "
                        "resume with --resume") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a facetrip checkpoint safely (``weights_only=True``); UserError if it is not one
    (missing, truncated, corrupt, foreign, or holding anything but plain types)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's advice to drop weights_only is not for users
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        refused = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(exc))
        if refused:
            raise UserError(f"{path} is not a facetrip checkpoint: it holds Python objects "
                            f"other than tensors and numbers ({refused.group(1)}), which could "
                            "run code on loading; it was refused and nothing in it was "
                            "executed") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        raise UserError(f"{path} is not a facetrip checkpoint")
    return ckpt


def model_from_checkpoint(
    ckpt: dict, device: str | torch.device = "cpu"
) -> tuple[EmbeddingNet, Config]:
    """Rebuild the network (eval mode, on ``device``) and the run config from a checkpoint."""
    model = EmbeddingNet(ModelSpec(**ckpt["model_spec"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, config_from_dict(ckpt.get("config", {}))


class Checkpoints:
    """The resumable checkpoints of a run directory ``root``.

    ``root/checkpoints/step-<step>.pt`` are the newest ``keep`` checkpoints; ``root/last.pt``
    is a hard link to the newest (an atomic copy where links are impossible).
    """

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root, self.keep = Path(root), keep
        self.dir = self.root / "checkpoints"
        self.last = self.root / "last.pt"

    def path(self, step: int) -> Path:
        return self.dir / f"step-{step:09d}.pt"

    def saved(self) -> list[Path]:
        """The step checkpoints, newest first."""
        return sorted(self.dir.glob("step-*.pt"), reverse=True)

    def exist(self) -> bool:
        """True when there is any checkpoint to resume from (readable or not)."""
        return bool(self.saved()) or self.last.exists()

    def save(self, ckpt: dict) -> Path:
        """Write ``ckpt`` as the newest checkpoint, point ``last.pt`` at it, drop the oldest
        beyond ``keep``. Raises UserError when it cannot be written."""
        path = save_checkpoint(ckpt, self.path(ckpt["step"]))
        atomic_link(path, self.last)
        for old in self.saved()[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def load_newest(self) -> tuple[dict, Path, list[str]]:
        """The newest readable checkpoint: ``(ckpt, path, notes)``, ``notes`` saying which
        newer files were unreadable and skipped.

        Raises:
            UserError: there is no readable checkpoint.
        """
        candidates = self.saved() or [self.last]
        notes: list[str] = []
        for path in candidates:
            try:
                ckpt = load_checkpoint(path)
            except UserError as exc:
                notes.append(str(exc))
                continue
            for note in notes:
                log.warning("%s; resuming from the previous checkpoint %s", note, path)
            return ckpt, path, notes
        raise UserError(f"no readable checkpoint in {self.root}: " + "; ".join(notes))
