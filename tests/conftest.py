"""Shared fixtures: the smallest configs that still train, and running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from facetrip.config import Config, load_config

#: A library run that takes a second: 16 px, 2 x 2 batches, no validation, CPU, no workers.
TINY_RUN = ["data.image_size=16", "data.val_fraction=0", "sampler.p=2", "sampler.k=2",
            "model.embedding_dim=4", "train.device=cpu", "train.epochs=1"]

#: An end-to-end CLI run with validation (16 identities x 5 images of 32 px).
TINY_CLI = ["data.image_size=32", "data.val_fraction=0.25", "sampler.p=4", "sampler.k=4",
            "model.embedding_dim=16", "eval.pairs_per_fold=10", "eval.folds=2",
            "train.epochs=2", "optim.lr=0.001"]


def as_sets(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [a for item in overrides for a in ("--set", item)]


@pytest.fixture
def tiny_config() -> Callable[..., Config]:
    """``tiny_config(root, *overrides)``: :data:`TINY_RUN` on the dataset ``root``."""

    def make(root, *overrides: str) -> Config:
        return load_config(None, [f"data.root={root}", *TINY_RUN, *overrides])

    return make


def run_cli(*args, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m facetrip ARGS`` in a fresh process (as a user runs it); with ``ok``, assert
    exit code 0."""
    proc = subprocess.run([sys.executable, "-m", "facetrip", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


LFW = Path(os.environ.get("FACETRIP_LFW",
                          Path(__file__).resolve().parents[2] / "shared/data/lfw"))
#: LFW identity folders with a few clear images each (the alignment tests)
PEOPLE = ("AJ_Cook", "Aaron_Peirsol", "Abdullah_Gul")


@pytest.fixture(scope="session")
def lfw() -> Path:
    """The LFW folder (skips where it is absent; CI has it)."""
    if not (LFW / "AJ_Cook").is_dir():
        pytest.skip(f"LFW not found at {LFW} (set FACETRIP_LFW)")
    return LFW


@pytest.fixture
def lfw_photos(lfw: Path, tmp_path: Path) -> Path:
    """An identity-folder tree of 5 LFW photos (links, not copies): 1 + 2 + 2 images."""
    root = tmp_path / "photos"
    for person, n in zip(PEOPLE, (1, 2, 2)):
        (root / person).mkdir(parents=True)
        for path in sorted((lfw / person).glob("*.jpg"))[:n]:
            (root / person / path.name).symlink_to(path)
    return root
